// Package boltdb opens a service's bbolt file the same way everywhere and
// holds the key conventions the stores share.
//
// Every key a store writes starts with the tenant (see TenantPrefix), so
// tenants never see each other's data and authentication can be added later
// without a migration.
package boltdb

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Open creates dataDir if needed and opens (or creates) dataDir/file. It
// fails after a second if another process holds the file, instead of hanging.
func Open(dataDir, file string) (*bolt.DB, error) {
	return OpenWith(dataDir, file, Options{})
}

// Options tune how OpenWith opens a file for a write-heavy store; the zero
// value opens it as Open does.
type Options struct {
	// InitialMmapSize is the size of the file's first memory map. bbolt
	// remaps whenever the file outgrows its map, and a remap waits for every
	// read transaction to end and then walks every node the running write
	// transaction holds: a store that grows by big batches while reads run
	// alongside should map ahead of its size. The map is address space
	// only; memory is used as pages are touched.
	InitialMmapSize int
	// HashmapFreelist picks bbolt's hashmap freelist, which allocates in
	// constant time where the array freelist scans (slow once big batches
	// have freed tens of thousands of pages).
	HashmapFreelist bool
	// NoFreelistSync stops writing the freelist at every commit (hundreds of
	// KiB once the file has many free pages); bbolt rebuilds it by walking
	// every page when it opens. Commits stay atomic and durable. On a cold
	// page cache that walk faults the file in page by page (about 12 s for
	// a 600 MiB file on the reference machine), so OpenWith first reads the
	// file once sequentially (about a second).
	NoFreelistSync bool
}

// OpenWith is Open with tuning options.
func OpenWith(dataDir, file string, o Options) (*bolt.DB, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dataDir, file)
	if o.NoFreelistSync {
		if err := readAhead(path); err != nil {
			return nil, err
		}
	}
	opts := &bolt.Options{
		Timeout:         time.Second,
		InitialMmapSize: o.InitialMmapSize,
		NoFreelistSync:  o.NoFreelistSync,
	}
	if o.HashmapFreelist {
		opts.FreelistType = bolt.FreelistMapType
	}
	db, err := bolt.Open(path, 0o600, opts)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
}

// readAhead reads the file at path (if any) once, sequentially, to bring it
// into the page cache.
func readAhead(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read ahead %s: %w", path, err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		_, err := f.Read(buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ahead %s: %w", path, err)
		}
	}
}

// TenantPrefix is the key prefix of a tenant: its id and a 0x00 separator
// (tenant ids never contain 0x00), so one tenant's keys sort together and a
// prefix scan never strays into another tenant.
func TenantPrefix(tenant string) []byte {
	b := make([]byte, 0, len(tenant)+1)
	b = append(b, tenant...)
	return append(b, 0)
}

// Key joins a tenant prefix and key parts separated by 0x00.
func Key(tenant string, parts ...string) []byte {
	n := len(tenant) + 1
	for _, p := range parts {
		n += len(p) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, tenant...)
	for _, p := range parts {
		b = append(b, 0)
		b = append(b, p...)
	}
	return b
}
