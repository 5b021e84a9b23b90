package service_test

import (
	"bytes"
	"context"
	"io"
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
	"github.com/pushmesh/pushmesh/servicekit/proctest"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

func TestRunServesUntilCancelledThenStops(t *testing.T) {
	addr := proctest.MustFreeAddr(t)
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

func TestRunHelpPrintsFlagsAndSucceeds(t *testing.T) {
	spec := service.Spec{Name: "testsvc", DefaultListen: "127.0.0.1:0",
		Start: func(context.Context, *grpc.Server, config.Common, *slog.Logger) (func() error, error) {
			t.Error("Start called for --help")
			return nil, nil
		}}
	for _, arg := range []string{"--help", "-h"} {
		var out bytes.Buffer
		if err := service.Run(context.Background(), spec, []string{arg}, &out); err != nil {
			t.Errorf("%s: got %v, want nil (asking for help is not an error)", arg, err)
		}
		if !strings.Contains(out.String(), "-data-dir") || !strings.Contains(out.String(), "Usage of testsvc") {
			t.Errorf("%s: got output %q, want the usage with every flag", arg, out.String())
		}
	}
}

func TestRunBadFlagIsOneLine(t *testing.T) {
	spec := service.Spec{Name: "testsvc", DefaultListen: "127.0.0.1:0",
		Start: func(context.Context, *grpc.Server, config.Common, *slog.Logger) (func() error, error) {
			t.Error("Start called despite a bad argument")
			return nil, nil
		}}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--shutdown-timeout", "10"}, `invalid value "10" for flag -shutdown-timeout`},
		{[]string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		// Flag parsing stops at the first argument that is not a flag: the
		// flags after it must not be silently ignored.
		{[]string{"data", "--listen", "127.0.0.1:0"}, `unexpected argument "data"`},
	} {
		var out bytes.Buffer
		err := service.Run(context.Background(), spec, tc.args, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "testsvc --help") {
			t.Errorf("%q: got %v, want an error containing %q and pointing at --help", tc.args, err, tc.want)
		}
		if out.Len() > 0 {
			t.Errorf("%q: got output %q, want none (the caller prints the error once)", tc.args, out.String())
		}
	}
}

func TestRunBusyPortNamesTheFlag(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	spec := service.Spec{Name: "testsvc", DefaultListen: busy.Addr().String(),
		Start: func(context.Context, *grpc.Server, config.Common, *slog.Logger) (func() error, error) {
			t.Error("Start called on a busy port")
			return nil, nil
		}}
	err = service.Run(context.Background(), spec, []string{"--data-dir", t.TempDir()}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), busy.Addr().String()) || !strings.Contains(err.Error(), "--listen") {
		t.Errorf("got %v, want an error naming %s and --listen", err, busy.Addr())
	}
}
