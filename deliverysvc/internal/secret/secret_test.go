package secret

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func TestSealOpen(t *testing.T) {
	box, err := NewBox(newKey(1))
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("-----BEGIN PRIVATE KEY----- secret")
	sealed := box.Seal(plain, []byte("default\x00apns\x00com.example"))
	if bytes.Contains(sealed, plain) || bytes.Contains(sealed, []byte("PRIVATE KEY")) {
		t.Fatalf("sealed value holds the plaintext: %q", sealed)
	}
	got, err := box.Open(sealed, []byte("default\x00apns\x00com.example"))
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open: got %q, %v, want %q", got, err, plain)
	}
	if again := box.Seal(plain, nil); bytes.Equal(again[1:13], sealed[1:13]) {
		t.Errorf("two seals used the same nonce %x", again[1:13])
	}

	other, _ := NewBox(newKey(2))
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for _, tc := range []struct {
		name   string
		box    *Box
		sealed []byte
		aad    string
	}{
		{"other app", box, sealed, "default\x00apns\x00com.other"},
		{"other tenant", box, sealed, "acme\x00apns\x00com.example"},
		{"other key", other, sealed, "default\x00apns\x00com.example"},
		{"tampered", box, tampered, "default\x00apns\x00com.example"},
		{"truncated", box, sealed[:10], "default\x00apns\x00com.example"},
		{"empty", box, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.box.Open(tc.sealed, []byte(tc.aad)); !errors.Is(err, ErrOpen) {
				t.Errorf("got %v, want ErrOpen", err)
			}
		})
	}
}

func TestNewBoxKeySize(t *testing.T) {
	if _, err := NewBox(make([]byte, 16)); err == nil {
		t.Error("16-byte key: got nil error, want one")
	}
}

func TestParseKey(t *testing.T) {
	key := newKey(7)
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"std", base64.StdEncoding.EncodeToString(key), true},
		{"std with newline", base64.StdEncoding.EncodeToString(key) + "\n", true},
		{"raw url", base64.RawURLEncoding.EncodeToString(key), true},
		{"too short", base64.StdEncoding.EncodeToString(key[:16]), false},
		{"not base64", "this is not a key", false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKey([]byte(tc.text))
			if (err == nil) != tc.ok {
				t.Fatalf("got err %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && !bytes.Equal(got, key) {
				t.Errorf("got %x, want %x", got, key)
			}
		})
	}
}

func TestLoadOrCreateKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "credentials.key")
	key, created, err := LoadOrCreateKeyFile(path)
	if err != nil || !created || len(key) != KeySize {
		t.Fatalf("first call: got %d bytes, created=%v, %v; want a new 32-byte key", len(key), created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Errorf("key file mode: got %o, want 600", mode)
	}
	again, created, err := LoadOrCreateKeyFile(path)
	if err != nil || created || !bytes.Equal(again, key) {
		t.Errorf("second call: got created=%v, %v, same key=%v; want the same key, not created", created, err, bytes.Equal(again, key))
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKeyFile(path); err == nil || !strings.Contains(err.Error(), "base64") {
		t.Errorf("garbage key file: got %v, want a base64 error", err)
	}
}
