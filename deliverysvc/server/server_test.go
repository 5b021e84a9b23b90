package server

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/service"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func start(t *testing.T, dir string, cfg Config) (func() error, error) {
	t.Helper()
	cfg.ProfileAddr, cfg.TrackingAddr = "127.0.0.1:1", "127.0.0.1:1" // dialled lazily
	return Start(context.Background(), grpc.NewServer(), dir, cfg, quiet())
}

func TestCredentialsKey(t *testing.T) {
	dir := t.TempDir()
	if _, err := start(t, dir, Config{}); err == nil || !strings.Contains(err.Error(), CredentialsKeyEnv) {
		t.Fatalf("no key: got %v, want a refusal naming %s", err, CredentialsKeyEnv)
	}

	// Development: a key file is generated in the data dir, 0600, and reused.
	stop, err := start(t, dir, Config{DevInsecureGenerateKey: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, DevKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("generated key file: got %v, %v; want mode 600", st, err)
	}
	keyText, _ := os.ReadFile(filepath.Join(dir, DevKeyFile))
	stop, err = start(t, dir, Config{DevInsecureGenerateKey: true})
	if err != nil {
		t.Fatalf("restart with the generated key: %v", err)
	}
	stop()

	// The same key given as a value or a file works; another key does not.
	if stop, err = start(t, dir, Config{CredentialsKey: string(keyText)}); err != nil {
		t.Fatalf("key as a value: %v", err)
	}
	stop()
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, keyText, 0o600)
	if stop, err = start(t, dir, Config{CredentialsKeyFile: keyFile}); err != nil {
		t.Fatalf("key as a file: %v", err)
	}
	stop()
	other := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32)))
	if _, err := start(t, dir, Config{CredentialsKey: other}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("another key: got %v, want a mismatch refusal", err)
	}
	if _, err := start(t, t.TempDir(), Config{CredentialsKey: "short"}); err == nil {
		t.Error("malformed key: got nil error, want one")
	}
	// A missing key file names the flag and says how to make a key.
	missing := filepath.Join(t.TempDir(), "nokey")
	if _, err := start(t, t.TempDir(), Config{CredentialsKeyFile: missing}); err == nil ||
		!strings.Contains(err.Error(), "--credentials-key-file "+missing+" does not exist") || !strings.Contains(err.Error(), "openssl rand") {
		t.Errorf("missing key file: got %v, want the flag, the path and how to make a key", err)
	}
}

// A key file others can read starts the service with a warning naming the
// file and its mode, never the key; an owner-only or group-readable one
// starts quietly. A key given where its file's path belongs is refused
// without being repeated.
func TestCredentialsKeyFileChecks(t *testing.T) {
	keyText := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("s", 32)))
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(keyText+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{
		{0o600, false},
		{0o400, false},
		{0o640, false},
		{0o644, true},
		{0o660, true},
		{0o604, true},
	} {
		if err := os.Chmod(keyFile, tc.mode); err != nil {
			t.Fatal(err)
		}
		var logs logtest.Buffer
		cfg := Config{CredentialsKeyFile: keyFile, ProfileAddr: "127.0.0.1:1", TrackingAddr: "127.0.0.1:1"}
		stop, err := Start(context.Background(), grpc.NewServer(), t.TempDir(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatalf("mode %04o: %v", tc.mode, err)
		}
		stop()
		got := strings.Contains(logs.String(), "credentials key file can be read by other users")
		if got != tc.warn {
			t.Errorf("mode %04o: warned=%v, want %v; log:\n%s", tc.mode, got, tc.warn, logs.String())
		}
		if tc.warn && !strings.Contains(logs.String(), keyFile) {
			t.Errorf("mode %04o: the warning does not name the file: %s", tc.mode, logs.String())
		}
		if strings.Contains(logs.String(), keyText) || strings.Contains(logs.String(), keyText[:16]) {
			t.Errorf("mode %04o: the log holds the key: %s", tc.mode, logs.String())
		}
	}

	// The key itself as the flag's value (e.g. --credentials-key-file
	// "$(openssl rand -base64 32)"): refused, and the error, which is printed
	// and logged, does not repeat it.
	withSlashes := base64.StdEncoding.EncodeToString([]byte("kkkkk\xff\xff\xff" + strings.Repeat("k", 24))) // a2tra2v///9r…
	for _, given := range []string{keyText, withSlashes, base64.RawURLEncoding.EncodeToString([]byte(strings.Repeat("u", 32)))} {
		_, err := start(t, t.TempDir(), Config{CredentialsKeyFile: given})
		if err == nil || !strings.Contains(err.Error(), "looks like a key") {
			t.Errorf("a key as the file's path: got %v, want a refusal saying it looks like a key", err)
		}
		if err != nil && strings.Contains(err.Error(), given[:16]) {
			t.Errorf("a key as the file's path: the error repeats the key: %v", err)
		}
	}
}

// Bad --peer-tls-* flags stop the start, naming the flag, before the data
// dir is touched.
func TestPeerTLSFlagsCheckedFirst(t *testing.T) {
	f := tlstest.New(t, "mesh")
	other := tlstest.New(t, "other")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--peer-tls-ca", f.CA.CertFile, "--peer-tls-cert", f.Client.CertFile}, "--peer-tls-cert is set but --peer-tls-key is not"},
		{"cert without CA", []string{"--peer-tls-cert", f.Client.CertFile, "--peer-tls-key", f.Client.KeyFile}, "--peer-tls-cert needs --peer-tls-ca"},
		{"key of another certificate", []string{"--peer-tls-ca", f.CA.CertFile, "--peer-tls-cert", f.Client.CertFile, "--peer-tls-key", other.Client.KeyFile}, "--peer-tls-cert/--peer-tls-key"},
		{"CA file missing", []string{"--peer-tls-ca", f.CA.CertFile + ".missing"}, "--peer-tls-ca"},
	} {
		dataDir := filepath.Join(t.TempDir(), "data")
		args := append([]string{"--listen", "127.0.0.1:0", "--data-dir", dataDir, "--dev-insecure-generate-key"}, tc.args...)
		err := service.Run(context.Background(), Spec(), args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error naming %s", tc.name, err, tc.want)
		}
		if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
			t.Errorf("%s: the data dir was created (%v), want the flags checked first", tc.name, err)
		}
	}
}
