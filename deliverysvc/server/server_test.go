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
