package service_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestRunServesUntilCancelledThenStops(t *testing.T) {
	addr := freeAddr(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	var stopped, started bool
	var gotDataDir string
	spec := service.Spec{
		Name:          "testsvc",
		DefaultListen: "127.0.0.1:1",
		Start: func(ctx context.Context, s *grpc.Server, common config.Common, log *slog.Logger) (func() error, error) {
			started = true
			gotDataDir = common.DataDir
			return func() error { stopped = true; return nil }, nil
		},
	}
	t.Setenv("TESTSVC_DATA_DIR", dataDir)

	ctx, cancel := context.WithCancel(context.Background())
	var logs logtest.Buffer
	done := make(chan error, 1)
	go func() { done <- service.Run(ctx, spec, []string{"--listen", addr, "--log-format", "json"}, &logs) }()

	conn, err := grpcclient.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var resp *healthpb.HealthCheckResponse
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: got %v, %v, want SERVING", resp, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: got %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if !started || !stopped {
		t.Errorf("got started=%v stopped=%v, want both", started, stopped)
	}
	if gotDataDir != dataDir {
		t.Errorf("data dir: got %q, want %q from TESTSVC_DATA_DIR", gotDataDir, dataDir)
	}
	if !strings.Contains(logs.String(), `"msg":"stopped"`) {
		t.Errorf("logs: want a JSON \"stopped\" line, got:\n%s", logs.String())
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	spec := service.Spec{Name: "testsvc", DefaultListen: "127.0.0.1:0",
		Start: func(context.Context, *grpc.Server, config.Common, *slog.Logger) (func() error, error) {
			t.Error("Start called despite bad flags")
			return nil, nil
		}}
	var logs bytes.Buffer
	if err := service.Run(context.Background(), spec, []string{"--log-level", "loud"}, &logs); err == nil {
		t.Error("got nil, want an error for --log-level loud")
	}
	if err := service.Run(context.Background(), spec, []string{"--no-such-flag"}, &logs); err == nil {
		t.Error("got nil, want an error for an unknown flag")
	}
}
