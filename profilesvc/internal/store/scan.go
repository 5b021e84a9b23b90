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
// visit holds the profile and the details of its tokens; it borrows the
// transaction's memory and is only valid during the call.
//
// The profiles and profile_tokens buckets are both ordered by profile id, so
// one cursor on each walks them in step: no random reads.
//
// Scans run chunk by chunk so a long audience query never holds one read
// transaction open: an open read transaction keeps the pages it sees from
// being reused and stalls writers that need to grow the file.
func (s *Store) ScanChunk(ctx context.Context, after profile.ID, first bool, max int,
	visit func(id profile.ID, v *profile.View) (bool, error)) (last profile.ID, visited int, end bool, err error) {
	keys := newKeyer(tenant.FromContext(ctx))
	prefix := keys.prefix
	done := ctx.Done()
	err = s.db.View(func(tx *bolt.Tx) error {
		pc := tx.Bucket(bucketProfiles).Cursor()
		dc := tx.Bucket(bucketProfileTokens).Cursor()
		var k, v []byte
		if first {
			k, v = pc.Seek(prefix)
		} else {
			start := keys.profile(nil, after)
			k, v = pc.Seek(start)
			if k != nil && bytes.Equal(k, start) {
				k, v = pc.Next()
			}
		}
		var dk, dv []byte
		if k != nil {
			dk, dv = dc.Seek(k)
		}
		var tokens [][]byte
		for ; ; k, v = pc.Next() {
			if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+len(last) {
				end = true
				return nil
			}
			if visited >= max {
				return nil
			}
			// Checked before every profile: one profile's condition may
			// take milliseconds, and the read transaction must not outlive
			// a cancelled query (it keeps freed pages from being reused).
			// Polling the done channel costs a few ns.
			select {
			case <-done:
				return ctx.Err()
			default:
			}
			// Details keys are tenant | owner | token id: skip to this
			// profile's, then take them all.
			tokens = tokens[:0]
			for dk != nil && bytes.Compare(dk, k) < 0 {
				dk, dv = dc.Next()
			}
			for dk != nil && bytes.HasPrefix(dk, k) {
				tokens = append(tokens, dv)
				dk, dv = dc.Next()
			}
			id, _ := idFromKey(k)
			view, err := profile.ParseView(v, tokens)
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
