package grpcserver_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// Streams that only watch never end by themselves: a load balancer's or a
// gRPC client's health watch, grpcurl's reflection stream. A graceful stop
// must end them rather than wait its whole timeout for them and then stop
// hard (cutting off the real calls still draining).
func TestShutdownEndsWatchStreams(t *testing.T) {
	const timeout = 5 * time.Second
	srv, err := grpcserver.New(grpcserver.Config{
		Name: "watch", Listen: "127.0.0.1:0",
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		ShutdownTimeout: timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	cancel, served, conn := serveAndDial(t, srv)

	ctx, stop := context.WithCancel(context.Background())
	defer stop() // only when the test fails: the server should end both
	watch, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: got %v, %v, want SERVING first", resp, err)
	}
	// A health watch of a service the server does not know gets no
	// NOT_SERVING: it must end too.
	unknown, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := unknown.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		t.Fatalf("watch of an unknown service: got %v, %v, want SERVICE_UNKNOWN first", resp, err)
	}
	refl, _ := listServices(t, ctx, conn)

	begin := time.Now()
	cancel()

	// The watch still learns NOT_SERVING, then its stream ends.
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch during shutdown: got %v, %v, want NOT_SERVING", resp, err)
	}
	if _, err := watch.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("watch after NOT_SERVING: got %v, want the stream ended with Unavailable", err)
	}
	if _, err := unknown.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("watch of an unknown service: got %v, want the stream ended with Unavailable", err)
	}
	if _, err := refl.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("reflection stream: got %v, want it ended with Unavailable", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(timeout + 5*time.Second):
		t.Fatal("Serve did not return")
	}
	if took := time.Since(begin); took >= timeout {
		t.Errorf("shutdown took %v: it waited out its timeout (%v) for streams that never end", took, timeout)
	}
}
