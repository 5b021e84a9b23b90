package cli

import (
	"net"
	"strings"
	"testing"
	"time"
)

// devArgs runs `pushctl dev` on free loopback ports, except those given in
// extra (which come last and win).
func devArgs(t *testing.T, dataDir string, extra ...string) []string {
	t.Helper()
	args := []string{"dev", "--data-dir", dataDir, "--keep-running=false", "--profiles", "20",
		"--profile-addr", "127.0.0.1:0", "--delivery-addr", "127.0.0.1:0", "--tracking-addr", "127.0.0.1:0",
		"--apns-addr", "127.0.0.1:0", "--fcm-addr", "127.0.0.1:0"}
	return append(args, extra...)
}

// A busy port is an ordinary failure (exit 1) naming the address, not a
// panic.
func TestDevWithABusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r := runCLI(t, nil, time.Now(), devArgs(t, t.TempDir(), "--tracking-addr", busy.Addr().String())...)
	if r.code != ExitFailed {
		t.Errorf("exit %d, want %d; stderr %q", r.code, ExitFailed, r.stderr)
	}
	for _, want := range []string{"pushctl: start the mesh: trackingsvc:", busy.Addr().String(), "address already in use", "--tracking-addr"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q does not say %q", r.stderr, want)
		}
	}
}
