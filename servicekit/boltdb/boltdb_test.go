package boltdb

import (
	"bytes"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
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

func TestOpenWithTuningKeepsData(t *testing.T) {
	dir := t.TempDir()
	db, err := OpenWith(dir, "svc.db", Options{InitialMmapSize: 64 << 20, HashmapFreelist: true, NoFreelistSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if !db.NoFreelistSync || db.FreelistType != bolt.FreelistMapType {
		t.Errorf("got NoFreelistSync %v, FreelistType %q; want true, %q", db.NoFreelistSync, db.FreelistType, bolt.FreelistMapType)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("b"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// A file written without a synced freelist opens with the defaults too,
	// and again with the tuning (reading the existing file ahead).
	for _, open := range []func() (*bolt.DB, error){
		func() (*bolt.DB, error) { return Open(dir, "svc.db") },
		func() (*bolt.DB, error) { return OpenWith(dir, "svc.db", Options{NoFreelistSync: true}) },
	} {
		db, err := open()
		if err != nil {
			t.Fatal(err)
		}
		err = db.View(func(tx *bolt.Tx) error {
			if got := tx.Bucket([]byte("b")).Get([]byte("k")); string(got) != "v" {
				t.Errorf("got %q, want %q", got, "v")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
