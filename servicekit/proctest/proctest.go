// Package proctest runs a service as a child process of its own test
// binary, so a crash test can kill it with SIGKILL (nothing flushed,
// nothing closed, no deferred function run) and start it again on the
// same data directory. It is the technique of deliverysvc's journeytest,
// shared so that every service's crash tests start their child the same
// way.
//
// The test binary's TestMain calls RunChildIfAsked first: in the child it
// runs the service and exits; in the parent it returns at once.
package proctest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// childEnv carries the child's Spec, as JSON.
const childEnv = "PUSHMESH_PROCTEST_CHILD"

// LogEnv, set to anything in a child's environment, sends its logs to
// stderr (discarded otherwise).
const LogEnv = "PROCTEST_LOG"

// Spec is what the child serves.
type Spec struct {
	Name    string
	Listen  string
	DataDir string
	// Config is the service's own configuration, as the test encoded it.
	Config json.RawMessage
}

// StartFunc starts the service on s (as server.Start does) and returns what
// stops it.
type StartFunc func(ctx context.Context, s *grpc.Server, spec Spec, log *slog.Logger) (stop func() error, err error)

// RunChildIfAsked runs the service with start and exits when this process
// was started by Start; otherwise it returns at once.
func RunChildIfAsked(start StartFunc) {
	raw := os.Getenv(childEnv)
	if raw == "" {
		return
	}
	if err := runChild(raw, start); err != nil {
		fmt.Fprintln(os.Stderr, "proctest child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runChild(raw string, start StartFunc) error {
	var spec Spec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv(LogEnv) != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: spec.Name, Listen: spec.Listen, Logger: log, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	stopSvc, err := start(ctx, srv.GRPC(), spec, log)
	if err != nil {
		return err
	}
	return errors.Join(srv.Serve(ctx), stopSvc())
}

// FreeAddr returns a loopback address free at the time of the call, so a
// restarted child can listen where the first one did.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// MustFreeAddr is FreeAddr for a test: it fails t if no address is free.
func MustFreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// Target picks a free loopback address for a child and returns it with a
// client connection to it, closed with the test: the connection reaches
// whichever child listens there, across kills and restarts.
func Target(t testing.TB) (addr string, conn *grpc.ClientConn) {
	t.Helper()
	addr = MustFreeAddr(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return addr, conn
}

// Process is a service running as a child process.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Options tune Start.
type Options struct {
	// Args are the child's arguments; default "-test.run=^$" (a test
	// binary that runs no test), nil for a program that is not one.
	Args []string
	// Env is added to the child's environment.
	Env []string
}

// Start starts the service described by spec as a child process (this
// binary, whose TestMain or main calls RunChildIfAsked) and waits until
// ready returns nil (the service answers), for at most 30 s.
func Start(spec Spec, opts Options, ready func(ctx context.Context) error) (*Process, error) {
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	args := opts.Args
	if args == nil {
		args = []string{"-test.run=^$"}
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), opts.Env...), childEnv+"="+string(raw))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := ready(ctx)
		cancel()
		if err == nil {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited before it answered: %v", spec.Name, err)
		default:
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("%s did not answer at %s: %w", spec.Name, spec.Listen, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Kill kills the child with SIGKILL and waits for it to die: whatever it had
// not committed is lost, as in a crash.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the child to stop (SIGTERM) and waits; it is killed after 10 s.
func (p *Process) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
}

// SendChunks calls send with items in slices of at most size, in order,
// and stops at the first error: a client stream's own error then comes
// from its CloseAndRecv.
func SendChunks[T any](items []T, size int, send func([]T) error) {
	for i := 0; i < len(items); i += size {
		if send(items[i:min(i+size, len(items))]) != nil {
			return
		}
	}
}
