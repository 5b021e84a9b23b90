package service_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/servicekit/service"
)

// signalHelperEnv makes the test binary act as a service whose shutdown is
// stuck: TestSignalHelper waits for SignalContext to end, then hangs.
const signalHelperEnv = "SERVICEKIT_SIGNAL_HELPER"

func TestSignalHelper(t *testing.T) {
	if os.Getenv(signalHelperEnv) != "1" {
		t.Skip("run by TestSecondSignalKills as a subprocess")
	}
	ctx, stop := service.SignalContext(context.Background())
	defer stop()
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("draining", context.Cause(ctx))
	time.Sleep(time.Hour) // a shutdown stuck on a dead disk
}

// The first SIGTERM ends the context; the second one, during the stuck
// shutdown, kills the process instead of being swallowed.
func TestSecondSignalKills(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestSignalHelper$", "-test.v")
	cmd.Env = append(os.Environ(), signalHelperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor := func(prefix string) string {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("helper exited before printing %q", prefix)
				}
				if strings.HasPrefix(l, prefix) {
					return l
				}
			case <-timeout:
				t.Fatalf("helper did not print %q", prefix)
			}
		}
	}
	waitFor("ready")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if l := waitFor("draining"); !strings.Contains(l, "received terminated") {
		t.Errorf("cause: got %q, want it to name SIGTERM", l)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	go func() {
		for range lines { // drain until the pipe closes
		}
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("helper: got %v, want it killed by SIGINT", err)
		}
		ws := exit.Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
			t.Errorf("helper: got %v, want it killed by SIGINT", exit)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second signal did not end the stuck helper")
	}
}

// Cancelling the parent ends the context without a signal cause.
func TestSignalContextFollowsParent(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	ctx, stop := service.SignalContext(parent)
	defer stop()
	cancel()
	<-ctx.Done()
	var se *service.SignalError
	if errors.As(context.Cause(ctx), &se) {
		t.Errorf("cause: got %v, want no signal", context.Cause(ctx))
	}
}
