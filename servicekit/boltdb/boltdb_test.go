package boltdb

import (
	"bytes"
	"path/filepath"
	"testing"
)

func TestOpenCreatesDirAndFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data")
	db, err := Open(dir, "svc.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got, want := db.Path(), filepath.Join(dir, "svc.db"); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	// A second open of the same file times out instead of hanging.
	if _, err := Open(dir, "svc.db"); err == nil {
		t.Error("second Open: got nil, want a timeout error")
	}
}

func TestKeysNeverCrossTenants(t *testing.T) {
	a := Key("acme", "p1")
	b := Key("acme-eu", "p1")
	if bytes.HasPrefix(b, TenantPrefix("acme")) {
		t.Errorf("key of tenant acme-eu %q starts with tenant acme's prefix", b)
	}
	if !bytes.HasPrefix(a, TenantPrefix("acme")) {
		t.Errorf("key %q lacks its tenant prefix", a)
	}
	if got, want := Key("t", "a", "b"), []byte("t\x00a\x00b"); !bytes.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
