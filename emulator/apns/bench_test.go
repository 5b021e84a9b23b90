package apns_test

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"

	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	"github.com/pushmesh/pushmesh/servicekit/writebatch"
)

// benchParallelism × GOMAXPROCS goroutines share one apns2 client, and so one
// HTTP/2 connection, as a pushmesh gateway does (128 on two cores).
const benchParallelism = 64

// BenchmarkAPNsPush measures the real apns2 client against the emulator in
// one process: token auth, full validation, inspection log.
func BenchmarkAPNsPush(b *testing.B) {
	srv, err := apns.Start(apns.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	_, key, err := srv.NewProviderKey(teamID, keyID)
	if err != nil {
		b.Fatal(err)
	}
	srv.RegisterTopic(teamID, bundleID)
	c := newClient(srv, key, teamID, keyID, srv.CA().HTTP2Client())
	runPushBench(b, c)
	if got := srv.Count().Accepted; got < int64(b.N) {
		b.Fatalf("emulator accepted %d pushes, want %d", got, b.N)
	}
}

// BenchmarkAPNsCeiling runs the same client and load against a bare Go
// HTTP/2 TLS handler that reads the body and answers 200: the most any
// emulator can reach on this machine. Compare pushes/s with
// BenchmarkAPNsPush.
func BenchmarkAPNsCeiling(b *testing.B) {
	ca, err := tlsca.New()
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{
		TLSConfig: ca.ServerTLSConfig(),
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 1000},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Read the body as the emulator does (it is short and has a
			// Content-Length), and answer with an apns-id.
			var buf [512]byte
			_, _ = io.ReadFull(r.Body, buf[:min(r.ContentLength, int64(len(buf)))])
			w.Header()["Apns-Id"] = []string{"00000000-0000-4000-8000-000000000000"}
			w.WriteHeader(http.StatusOK)
		}),
	}
	// Batched writes, as the emulator's own listener has.
	go hs.ServeTLS(writebatch.Listener{Listener: ln}, "", "")
	defer hs.Close()

	c := apns2.NewTokenClient(&token.Token{AuthKey: mustKey(b), KeyID: keyID, TeamID: teamID})
	c.Host = "https://" + ln.Addr().String()
	c.HTTPClient = ca.HTTP2Client()
	runPushBench(b, c)
}

func runPushBench(b *testing.B, c *apns2.Client) {
	// Warm up: connect and verify the provider token once, outside the timer.
	if res, err := c.Push(alert(deviceToken(0))); err != nil || res.StatusCode != 200 {
		b.Fatalf("warm-up push: %v %+v", err, res)
	}
	b.ReportAllocs()
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		n := alert(deviceToken(1))
		for pb.Next() {
			res, err := c.Push(n)
			if err != nil {
				b.Error(err)
				return
			}
			if res.StatusCode != 200 {
				b.Errorf("got %d %q, want 200", res.StatusCode, res.Reason)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pushes/s")
}
