package grpcserver_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// serve starts a server with cfg (name, listen address and, unless given,
// a discarding logger filled in) and stops it at the test's end.
func serve(t *testing.T, cfg grpcserver.Config, register func(*grpc.Server)) *grpcserver.Server {
	t.Helper()
	cfg.Name, cfg.Listen = t.Name(), "127.0.0.1:0"
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = time.Second
	}
	srv, err := grpcserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if register != nil {
		register(srv.GRPC())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv
}

func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcclient.Dial(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// Connect, so the server's SETTINGS (its stream limit) have arrived.
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health: %v", err)
	}
	return conn
}

// One connection cannot open more calls at once than MaxConcurrentStreams:
// the next waits for a slot (and fails at its deadline if none frees), while
// another connection has its own allowance.
func TestMaxConcurrentStreamsPerConnection(t *testing.T) {
	const limit = 3
	var running, peak atomic.Int64
	started := make(chan struct{}, 2*limit)
	release := make(chan struct{})
	srv := serve(t, grpcserver.Config{MaxConcurrentStreams: limit}, func(s *grpc.Server) {
		registerProbe(s, &probe{handle: func(ctx context.Context) error {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}})
	})
	conn := dial(t, srv.Addr().String())
	defer close(release) // whatever is still blocked ends with the test

	results := make(chan error, 2*limit)
	for range limit {
		go func() { results <- callProbe(context.Background(), conn) }()
		<-started
	}

	// The limit+1-th call on the same connection does not reach the server.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := callProbe(ctx, conn); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("call %d on one connection: got %v, want DeadlineExceeded waiting for a stream slot", limit+1, err)
	}
	if p := peak.Load(); p != limit {
		t.Fatalf("peak concurrent handlers: got %d, want %d", p, limit)
	}

	// A second connection is not held by the first one's calls.
	other := dial(t, srv.Addr().String())
	go func() { results <- callProbe(context.Background(), other) }()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("a call on a second connection did not start")
	}

	// A call waiting for a slot starts as soon as one frees.
	go func() { results <- callProbe(context.Background(), conn) }()
	select {
	case <-started:
		t.Fatal("a waiting call started while the connection was at its limit")
	case <-time.After(200 * time.Millisecond):
	}
	release <- struct{}{} // one call ends: the waiting one may start
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting call did not start once a slot freed")
	}
	if err := <-results; err != nil {
		t.Errorf("released call: %v", err)
	}
}

// The keepalive the clients send is within what the servers enforce, with
// margin for timer jitter: otherwise every idle connection would be closed
// with GOAWAY ENHANCE_YOUR_CALM.
func TestClientKeepaliveWithinServerPolicy(t *testing.T) {
	if grpcclient.KeepaliveTime < 2*grpcserver.DefaultKeepaliveMinTime {
		t.Errorf("grpcclient.KeepaliveTime %v: want at least twice grpcserver.DefaultKeepaliveMinTime %v",
			grpcclient.KeepaliveTime, grpcserver.DefaultKeepaliveMinTime)
	}
}

// A client pinging its idle connection as grpcclient does stays connected
// past several pings when the server's MinTime is below its ping interval,
// and is cut off (ENHANCE_YOUR_CALM) when it is above: the enforcement is on
// and the test would see a mismatch. grpc pings at most every 10s, so this
// takes about 35s.
func TestKeepaliveIdleClientStaysConnected(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for several 10s keepalive pings")
	}
	const pingEvery = 10 * time.Second // grpc's floor for a client's keepalive Time
	// The defaults scaled down to pingEvery: client 30s, server MinTime 10s.
	scaledMin := pingEvery / (grpcclient.KeepaliveTime / grpcserver.DefaultKeepaliveMinTime)
	tests := []struct {
		name      string
		minTime   time.Duration
		wantAlive bool
	}{
		{"server MinTime below client pings", scaledMin, true},
		{"server MinTime above client pings", 2 * pingEvery, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := serve(t, grpcserver.Config{KeepaliveMinTime: tt.minTime}, nil)
			conn := dial(t, srv.Addr().String(), grpc.WithKeepaliveParams(keepalive.ClientParameters{
				Time: pingEvery, Timeout: 5 * time.Second, PermitWithoutStream: true,
			}))
			// Idle for more pings than the strikes the server forgives
			// (grpc closes at the third ping too soon after the previous).
			ctx, cancel := context.WithTimeout(context.Background(), 3*pingEvery+5*time.Second)
			defer cancel()
			changed := conn.WaitForStateChange(ctx, connectivity.Ready)
			if alive := !changed; alive != tt.wantAlive {
				t.Errorf("server MinTime %v, client pings every %v while idle: connection alive %v (state %v), want %v",
					tt.minTime, pingEvery, alive, conn.GetState(), tt.wantAlive)
			}
		})
	}
}
