package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// TestEvictionsAcrossBatchesLeaveConsistentIndexes: a full profile taking
// new tokens in many import batches, each prepared on top of the previous
// one, evicts each dead token once, entirely (hot record, details, device
// entry), ends with exactly MaxProfileTokens tokens, and leaves every
// index agreeing with the others.
func TestEvictionsAcrossBatchesLeaveConsistentIndexes(t *testing.T) {
	ctx := context.Background()
	st, db := openStore(t, t.TempDir(), Options{ImportBatchRows: 16})
	tok := func(kind, i int) string { return fmt.Sprintf("%08x%056x", kind, i) }
	// P's tokens 0..99, each on a device of its own, seen at i; the even
	// ones under 80 are dead.
	var rows []profile.ImportRow
	for i := 0; i < profile.MaxProfileTokens; i++ {
		rows = append(rows, profile.ImportRow{CustomerID: "P", Reg: profile.Registration{
			Key: apns(tok(1, i)), Time: base + int64(i)*sec, DeviceID: fmt.Sprintf("dev-%d", i), Source: "import"}})
	}
	if c := importRows(t, ctx, st, rows); c.Created != profile.MaxProfileTokens {
		t.Fatalf("got %+v, want P filled", c)
	}
	var dead []FeedbackItem
	for i := 0; i < 80; i += 2 {
		dead = append(dead, FeedbackItem{Key: apns(tok(1, i)), Reason: profile.ReasonUnregistered, At: base + 500*sec})
	}
	if c, err := st.Feedback(ctx, dead); err != nil || c.Deactivated != len(dead) {
		t.Fatalf("got %+v, %v, want %d tokens deactivated", c, err, len(dead))
	}

	// 50 new tokens for P, one every 6 rows among 250 rows of other
	// customers, in batches of 16: the first 40 evict the 40 dead tokens,
	// the last 10 find every token active.
	rows = rows[:0]
	for idx := 0; idx < 300; idx++ {
		r := profile.ImportRow{CustomerID: fmt.Sprintf("F%d", idx), Reg: profile.Registration{Key: apns(tok(3, idx)), Time: base + 1000*sec, Source: "import"}}
		if idx%6 == 0 {
			r = profile.ImportRow{CustomerID: "P", Reg: profile.Registration{
				Key: apns(tok(2, idx/6)), Time: base + 1000*sec, DeviceID: fmt.Sprintf("new-%d", idx/6), Source: "import"}}
		}
		rows = append(rows, r)
	}
	c := importRows(t, ctx, st, rows)
	if c.Created != 290 || c.Rejected != 10 || c.RejectedRows[0].Index != 240 || c.RejectedRows[9].Index != 294 {
		t.Fatalf("got %+v, want 290 created and the last 10 rows of P rejected", c)
	}
	if n := st.importRereads.Load(); n != 0 {
		t.Errorf("got %d batches applied again, want every batch prepared on top of the previous one", n)
	}

	tokens, err := st.Tokens(ctx, cust("P"), "profile")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, tk := range tokens {
		if !tk.Active() {
			t.Errorf("token %s: inactive, want every dead token evicted", tk.Token)
		}
		have[tk.Token] = true
	}
	if len(tokens) != profile.MaxProfileTokens {
		t.Fatalf("P: got %d tokens, want %d", len(tokens), profile.MaxProfileTokens)
	}
	for i := 0; i < 100; i++ {
		if want := i >= 80 || i%2 == 1; have[tok(1, i)] != want {
			t.Errorf("old token %d: kept=%v, want %v", i, have[tok(1, i)], want)
		}
	}
	for k := 0; k < 50; k++ {
		if want := k < 40; have[tok(2, k)] != want {
			t.Errorf("new token %d: stored=%v, want %v", k, have[tok(2, k)], want)
		}
	}

	// The indexes agree: every hot record has its details under its owner
	// and the other way round, every device entry names a stored token,
	// and nothing is left of the evicted tokens.
	var needles [][]byte
	for _, d := range dead {
		id := d.Key.ID()
		needles = append(needles, id[:], []byte(d.Key.Token))
	}
	keys := newKeyer(tenant.FromContext(ctx))
	pl, idLen := len(keys.prefix), len(profile.TokenID{})
	err = db.View(func(tx *bolt.Tx) error {
		hot, details := tx.Bucket(bucketTokens), tx.Bucket(bucketProfileTokens)
		pid, found, err := newLoader(tx, tenant.FromContext(ctx)).LoadIdentityOwner(profile.Identity{Namespace: profile.CustomerIDNamespace, Value: "P"})
		if err != nil || !found {
			return fmt.Errorf("P's identity: found=%v, %v", found, err)
		}
		under := 0
		if err := details.ForEach(func(k, _ []byte) error {
			var owner profile.ID
			copy(owner[:], k[pl:])
			tid := k[pl+len(owner):]
			if owner == pid {
				under++
			}
			v := hot.Get(append(slices.Clone(keys.prefix), tid...))
			if v == nil {
				t.Errorf("details %x: no hot record", k)
				return nil
			}
			if o, err := profile.HotOwner(v); err != nil || o != owner {
				t.Errorf("details %x: hot record names %s (%v)", k, o, err)
			}
			return nil
		}); err != nil {
			return err
		}
		if under != profile.MaxProfileTokens {
			t.Errorf("P has %d details records, want %d", under, profile.MaxProfileTokens)
		}
		if n, m := hot.Stats().KeyN, details.Stats().KeyN; n != m {
			t.Errorf("%d hot records, %d details records", n, m)
		}
		if err := tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			if hot.Get(append(slices.Clone(keys.prefix), k[len(k)-idLen:]...)) == nil {
				t.Errorf("device entry %q names token %s, not stored", k, v)
			}
			return nil
		}); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				for _, n := range needles {
					if bytes.Contains(k, n) || bytes.Contains(v, n) {
						t.Errorf("bucket %s still holds %x of an evicted token in key %x", name, n, k)
					}
				}
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}
