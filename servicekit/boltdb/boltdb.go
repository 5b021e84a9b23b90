// Package boltdb opens a service's bbolt file the same way everywhere and
// holds the key conventions the stores share.
//
// Every key a store writes starts with the tenant (see TenantPrefix), so
// tenants never see each other's data and authentication can be added later
// without a migration.
package boltdb

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Open creates dataDir if needed and opens (or creates) dataDir/file. It
// fails after a second if another process holds the file, instead of hanging.
func Open(dataDir, file string) (*bolt.DB, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	path := filepath.Join(dataDir, file)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
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
