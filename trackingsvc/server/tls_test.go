package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
	"github.com/pushmesh/pushmesh/servicekit/service/servicetest"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
)

// With --tls-cert and --tls-client-ca, the gRPC listener requires client
// certificates while the HTTP endpoint serves HTTPS with the same (reloaded)
// certificate to SDKs that have none.
func TestHTTPSEndpointWithoutClientCertificates(t *testing.T) {
	f := tlstest.New(t, "mesh")
	grpcAddr, httpAddr := proctest.MustFreeAddr(t), proctest.MustFreeAddr(t)
	args := []string{"--listen", grpcAddr, "--http-listen", httpAddr, "--data-dir", t.TempDir(),
		"--tls-cert", f.Server.CertFile, "--tls-key", f.Server.KeyFile, "--tls-client-ca", f.CA.CertFile}
	ctx := servicetest.Run(t, Spec(), args, io.Discard)

	// A mesh member reaches gRPC over mutual TLS (waiting for the start).
	callCtx, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	member := trackingClient(t, grpcAddr, tlsconfig.Client{CAFile: f.CA.CertFile, CertFile: f.Client.CertFile, KeyFile: f.Client.KeyFile})
	event := &trackingv1.Event{EventId: "e1", Type: trackingv1.EventType_EVENT_TYPE_SENT, EventTime: timestamppb.Now(), ProfileId: "p", JourneyId: "j"}
	if res, err := member.Track(callCtx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{event}}, grpc.WaitForReady(true)); err != nil || res.GetAccepted() != 1 {
		t.Fatalf("Track over mutual TLS: got %v, %v, want accepted", res, err)
	}
	// Without a client certificate gRPC refuses.
	stranger := trackingClient(t, grpcAddr, tlsconfig.Client{CAFile: f.CA.CertFile})
	if _, err := stranger.Track(callCtx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{event}}); status.Code(err) != codes.Unavailable {
		t.Errorf("Track without a client certificate: got %v, want Unavailable", err)
	}

	// An SDK POSTs over HTTPS without a client certificate.
	sdk := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CA.Pool()}}}
	at := time.Now().UTC().Format(time.RFC3339)
	resp, err := sdk.Post("https://"+httpAddr+"/v1/events", "application/json",
		bytes.NewBufferString(`{"events":[{"eventId":"e2","type":"EVENT_TYPE_OPENED","eventTime":"`+at+`","profileId":"p","journeyId":"j"}]}`))
	if err != nil {
		t.Fatalf("POST over HTTPS without a client certificate: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"accepted":"1"`)) || resp.TLS == nil {
		t.Errorf("POST /v1/events: got %d %s (TLS %v), want 200 with 1 accepted over TLS", resp.StatusCode, body, resp.TLS != nil)
	}
	// Plain HTTP is answered with a 400 saying HTTPS is needed.
	if resp, err := (&http.Client{Timeout: time.Minute}).Post("http://"+httpAddr+"/v1/events", "application/json", strings.NewReader("{}")); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the HTTPS endpoint: got %d, want 400", resp.StatusCode)
		}
	}

	// The HTTPS endpoint serves a rotated certificate too.
	tlstest.Replace(t, f.Server, f.CA.Server(t, "mesh-server-2"))
	deadline := time.Now().Add(time.Minute)
	for {
		sdk.CloseIdleConnections() // a new handshake each time
		resp, err := sdk.Get("https://" + httpAddr + "/v1/events")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := resp.TLS.PeerCertificates[0].Subject.CommonName
		if got == "mesh-server-2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after rotation: HTTPS serves %q, want mesh-server-2", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func trackingClient(t *testing.T, addr string, c tlsconfig.Client) trackingv1.TrackingServiceClient {
	t.Helper()
	return trackingv1.NewTrackingServiceClient(grpctest.DialTLS(t, addr, c))
}

// The HTTPS endpoint faces the internet: connections that are not TLS at all
// make at most tlsconfig.RefusalLogBurst lines a minute, not one each.
func TestHTTPSRefusedHandshakesDoNotFloodTheLog(t *testing.T) {
	f := tlstest.New(t, "mesh")
	grpcAddr, httpAddr := proctest.MustFreeAddr(t), proctest.MustFreeAddr(t)
	logs := &logtest.Buffer{}
	args := []string{"--listen", grpcAddr, "--http-listen", httpAddr, "--data-dir", t.TempDir(),
		"--tls-cert", f.Server.CertFile, "--tls-key", f.Server.KeyFile}
	ctx := servicetest.Run(t, Spec(), args, logs)
	// gRPC serves once Start has returned, the HTTP endpoint listening.
	callCtx, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	health := healthpb.NewHealthClient(grpctest.DialTLS(t, grpcAddr, tlsconfig.Client{CAFile: f.CA.CertFile}))
	if _, err := health.Check(callCtx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}

	const n = 3 * tlsconfig.RefusalLogBurst
	for range n {
		c, err := net.Dial("tcp", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		if _, err := c.Write(make([]byte, 8)); err != nil {
			t.Fatal(err)
		}
		// The server logs its refusal, then closes the connection.
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if got := strings.Count(logs.String(), "TLS handshake error"); got < 1 || got > tlsconfig.RefusalLogBurst {
		t.Errorf("%d connections that are not TLS: got %d lines, want 1 to %d:\n%s", n, got, tlsconfig.RefusalLogBurst, logs.String())
	}
}
