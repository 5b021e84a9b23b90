package fcm_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"golang.org/x/oauth2"
	"google.golang.org/api/option"

	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/servicekit/writebatch"
)

// BenchmarkFCMSendEach measures firebase's SendEach (500 messages a call,
// 50 workers, one HTTP request per message) against the emulator in one
// process, with a real OAuth2 token exchange done once before timing.
func BenchmarkFCMSendEach(b *testing.B) {
	srv, err := fcm.Start(fcm.Options{QuotaPerMinute: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	saJSON, _, err := srv.NewServiceAccount(project)
	if err != nil {
		b.Fatal(err)
	}
	runSendEachBench(b, newMessaging(b, srv, saJSON, project))
	if got := srv.Count().Delivered; got < int64(b.N)*500 {
		b.Fatalf("emulator delivered %d messages, want %d", got, b.N*500)
	}
}

func runSendEachBench(b *testing.B, mc *messaging.Client) {
	const batch = 500
	msgs := make([]*messaging.Message, batch)
	for i := range msgs {
		msgs[i] = &messaging.Message{
			Token:        fmt.Sprintf("bench-device-%d", i),
			Data:         map[string]string{"journey": "j1", "message": "m1"},
			Notification: &messaging.Notification{Title: "Hello", Body: "A benchmark notification"},
			Android:      &messaging.AndroidConfig{Priority: "high", CollapseKey: "bench"},
		}
	}
	ctx := context.Background()
	if _, err := mc.Send(ctx, msgs[0]); err != nil { // token exchange and connection
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		br, err := mc.SendEach(ctx, msgs)
		if err != nil {
			b.Fatal(err)
		}
		if br.FailureCount != 0 {
			b.Fatalf("got %d failures, first: %v", br.FailureCount, firstError(br))
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "messages/s")
}

// BenchmarkFCMCeiling runs the same client and load against a bare Go
// HTTP/2 TLS handler that reads the body and answers a fixed name (the
// access token comes from the emulator, which then only serves the token
// endpoint): the most any FCM emulator can reach on this machine.
func BenchmarkFCMCeiling(b *testing.B) {
	srv, err := fcm.Start(fcm.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	saJSON, _, err := srv.NewServiceAccount(project)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{
		TLSConfig: srv.CA().ServerTLSConfig(),
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 1000},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header()["Content-Type"] = []string{"application/json; charset=UTF-8"}
			_, _ = io.WriteString(w, `{"name":"projects/`+project+`/messages/0:1%0"}`)
		}),
	}
	// Batched writes, as the emulator's own listener has.
	go hs.ServeTLS(writebatch.Listener{Listener: ln}, "", "")
	defer hs.Close()

	hc := &http.Client{Transport: &oauth2.Transport{
		Source: tokenSource(b, srv, saJSON),
		Base:   srv.CA().HTTPClient().Transport,
	}}
	ctx := context.Background()
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: project},
		option.WithHTTPClient(hc), option.WithEndpoint("https://"+ln.Addr().String()+"/v1"))
	if err != nil {
		b.Fatal(err)
	}
	mc, err := app.Messaging(ctx)
	if err != nil {
		b.Fatal(err)
	}
	runSendEachBench(b, mc)
}

func firstError(br *messaging.BatchResponse) error {
	for _, r := range br.Responses {
		if r.Error != nil {
			return r.Error
		}
	}
	return nil
}
