package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pushmesh/pushmesh/pushctl/internal/cli"
)

// `pushctl dev --keep-running=false` runs the demo to its end and exits 0;
// run again on its own folder, it wipes and reuses it. It stays plaintext on
// loopback, ignoring TLS settings left in the environment.
func TestPushctlDev(t *testing.T) {
	t.Setenv("PUSHCTL_TLS_CA", filepath.Join(t.TempDir(), "no-such-ca.pem"))
	dir := filepath.Join(t.TempDir(), "dev")
	args := []string{"dev", "--data-dir", dir, "--profiles", "50", "--keep-running=false",
		"--profile-addr", "127.0.0.1:0", "--delivery-addr", "127.0.0.1:0", "--tracking-addr", "127.0.0.1:0",
		"--apns-addr", "127.0.0.1:0", "--fcm-addr", "127.0.0.1:0", "--tracking-http-addr", "127.0.0.1:0"}
	for run := 1; run <= 2; run++ {
		var stdout, stderr bytes.Buffer
		err := cli.Run(context.Background(), args, &stdout, &stderr)
		if code := cli.Report(err, &stderr); code != cli.ExitOK {
			t.Fatalf("run %d: exit %d\nstdout:\n%s\nstderr:\n%s", run, code, stdout.String(), stderr.String())
		}
		for _, want := range []string{"pushmesh is up", "(POST /v1/events)", "registered 3 apps", "published journey", "completed", "the emulators received"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("run %d: stdout does not say %q:\n%s", run, want, stdout.String())
			}
		}
		if !strings.Contains(stderr.String(), "ignoring --tls-ca") {
			t.Errorf("run %d: stderr does not say the TLS settings are ignored:\n%s", run, stderr.String())
		}
		if _, err := os.Stat(filepath.Join(dir, ".pushctl-dev")); err != nil {
			t.Errorf("run %d: no marker: %v", run, err)
		}
	}
}
