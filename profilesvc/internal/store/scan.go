package store

import (
	"bytes"
	"context"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// ScanChunk visits, in id order, up to max profiles of ctx's tenant whose id
// is greater than after (all profiles when first), inside one read
// transaction; it stops early when visit returns false. The View passed to
// visit borrows the transaction's memory and is only valid during the call.
//
// Scans run chunk by chunk so a long audience query never holds one read
// transaction open: an open read transaction keeps the pages it sees from
// being reused and stalls writers that need to grow the file.
func (s *Store) ScanChunk(ctx context.Context, after profile.ID, first bool, max int,
	visit func(id profile.ID, v *profile.View) (bool, error)) (last profile.ID, visited int, end bool, err error) {
	prefix := newKeyer(tenant.FromContext(ctx)).prefix
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketProfiles).Cursor()
		var k, v []byte
		if first {
			k, v = c.Seek(prefix)
		} else {
			start := append(append(make([]byte, 0, len(prefix)+len(after)), prefix...), after[:]...)
			k, v = c.Seek(start)
			if k != nil && bytes.Equal(k, start) {
				k, v = c.Next()
			}
		}
		for ; ; k, v = c.Next() {
			if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+len(last) {
				end = true
				return nil
			}
			if visited >= max {
				return nil
			}
			if visited&1023 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			id, _ := idFromKey(k)
			view, err := profile.ParseView(v)
			if err != nil {
				return err
			}
			visited++
			last = id
			more, err := visit(id, &view)
			if err != nil || !more {
				return err
			}
		}
	})
	return last, visited, end, err
}
