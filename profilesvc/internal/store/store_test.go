package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

const sec = int64(time.Second)

var base = time.Now().Add(-48 * time.Hour).UnixNano()

func openStore(t testing.TB, dir string, opts Options) (*Store, *bolt.DB) {
	t.Helper()
	db, err := boltdb.Open(dir, "profilesvc.db")
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st.Close()
		db.Close()
	})
	return st, db
}

func apns(tok string) profile.TokenKey {
	return profile.TokenKey{Platform: profile.PlatformAPNS, AppID: "com.example", Token: tok}
}

func cust(c string) profile.Ref {
	return profile.Ref{Identity: profile.Identity{Namespace: profile.CustomerIDNamespace, Value: c}, ByIdentity: true}
}

func register(t testing.TB, ctx context.Context, st *Store, c, tok string, at int64, device string) Registered {
	t.Helper()
	res, err := st.Register(ctx, cust(c), "profile", profile.Registration{Key: apns(tok), Time: base + at*sec, DeviceID: device, Source: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// importRows runs one import of rows.
func importRows(t testing.TB, ctx context.Context, st *Store, rows []profile.ImportRow) ImportCounts {
	t.Helper()
	im := st.StartImport(ctx)
	for _, r := range rows {
		if err := im.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	c, err := im.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dump renders a tenant's state through the store's own reads, naming
// profiles by identity and leaving out what legitimately differs between
// runs (generated ids, server times, the order recorded in histories).
func dump(t testing.TB, ctx context.Context, st *Store) string {
	t.Helper()
	var lines []string
	var after profile.ID
	first := true
	for {
		var ids []profile.ID
		last, _, end, err := st.ScanChunk(ctx, after, first, 100, func(id profile.ID, v *profile.View) (bool, error) {
			ids = append(ids, id)
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			ps, err := st.Get(ctx, profile.Ref{ID: id}, "profile")
			if err != nil {
				t.Fatal(err)
			}
			name := identities(ps.Profile)
			var attrs []string
			for _, a := range ps.Profile.Attributes {
				attrs = append(attrs, fmt.Sprintf("%s=%v@%d", a.Key, a.Value, a.Time))
			}
			lines = append(lines, fmt.Sprintf("%s consent=%d active=%d attrs=%v", name, ps.Profile.Consent, ps.ActiveTokens, attrs))
			tokens, err := st.Tokens(ctx, profile.Ref{ID: id}, "profile")
			if err != nil {
				t.Fatal(err)
			}
			for _, tk := range tokens {
				lines = append(lines, fmt.Sprintf("  %s %s/%s source=%v active=%v reason=%d env=%d device=%q",
					name, tk.AppID, tk.Token, tk.SourceStamp, tk.Active(), tk.InactiveReason(), tk.Env, tk.DeviceID))
			}
		}
		if len(ids) > 0 {
			after, first = last, false
		}
		if end {
			break
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func identities(p *profile.Profile) string {
	var parts []string
	for _, idn := range p.Identities {
		parts = append(parts, idn.Namespace+"="+idn.Value)
	}
	return strings.Join(parts, ",")
}

func randomRows(seed uint64, n int) []profile.ImportRow {
	rng := rand.New(rand.NewPCG(seed, 1))
	rows := make([]profile.ImportRow, n)
	for i := range rows {
		r := profile.ImportRow{
			CustomerID: fmt.Sprintf("C%d", rng.IntN(n/4+1)),
			Reg: profile.Registration{
				Key:    apns(fmt.Sprintf("%04x", rng.IntN(n/3+1))),
				Time:   base + int64(rng.IntN(20))*sec,
				Source: "import",
			},
		}
		if rng.IntN(4) == 0 {
			r.Reg.DeviceID = fmt.Sprintf("dev%d", rng.IntN(5))
		}
		if rng.IntN(3) == 0 {
			r.Reg.Env = profile.Environment(1 + rng.IntN(2))
		}
		if rng.IntN(5) == 0 {
			r.Attributes = map[string]any{"tier": []string{"gold", "silver"}[rng.IntN(2)]}
		}
		rows[i] = r
	}
	return rows
}

func TestImportIsIdempotentAndOrderIndependent(t *testing.T) {
	ctx := context.Background()
	rows := randomRows(7, 400)

	st, _ := openStore(t, t.TempDir(), Options{ImportBatchRows: 64})
	first := importRows(t, ctx, st, rows)
	if first.Rows != int64(len(rows)) || first.Created == 0 || first.Moved == 0 || first.ProfilesCreated == 0 {
		t.Fatalf("got counts %+v, want rows %d with creations and moves", first, len(rows))
	}
	if sum := first.Created + first.Updated + first.Moved + first.Unchanged; sum != first.Rows {
		t.Fatalf("got created+updated+moved+unchanged = %d, want rows %d", sum, first.Rows)
	}
	want := dump(t, ctx, st)

	again := importRows(t, ctx, st, rows)
	if again.Unchanged != int64(len(rows)) || again.ProfilesCreated != 0 {
		t.Fatalf("same rows again: got %+v, want all %d unchanged and no profile created", again, len(rows))
	}
	if got := dump(t, ctx, st); got != want {
		t.Fatalf("state changed on re-import:\n%s", diff(got, want))
	}

	for trial, batch := range []int{5, 33, 1000} {
		shuffled := slices.Clone(rows)
		rand.New(rand.NewPCG(uint64(trial), 3)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		other, _ := openStore(t, t.TempDir(), Options{ImportBatchRows: batch})
		importRows(t, ctx, other, shuffled)
		if got := dump(t, ctx, other); got != want {
			t.Fatalf("shuffled rows in batches of %d diverged:\n%s", batch, diff(got, want))
		}
		// Alone, every batch commits the writes prepared on top of the
		// previous batch: none is applied again.
		if n := other.importRereads.Load(); n != 0 {
			t.Errorf("batches of %d: got %d batches applied again, want 0", batch, n)
		}
	}
	if n := st.importRereads.Load(); n != 0 {
		t.Errorf("got %d batches applied again, want 0", n)
	}
}

func diff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			fmt.Fprintf(&b, "line %d:\n  got  %s\n  want %s\n", i, gl, wl)
		}
	}
	return b.String()
}

// TestImportWithConcurrentWriters registers tokens while an import runs, so
// the import's read-ahead goes stale and must be read again; the result must
// be what applying everything in any order gives.
func TestImportWithConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	rows := randomRows(11, 3000)
	st, _ := openStore(t, t.TempDir(), Options{ImportBatchRows: 50})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 60; i++ {
			r := rows[i*7%len(rows)]
			if _, err := st.Register(ctx, cust(r.CustomerID), "profile", profile.Registration{Key: r.Reg.Key, Time: r.Reg.Time, DeviceID: r.Reg.DeviceID, Env: r.Reg.Env}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	importRows(t, ctx, st, rows)
	wg.Wait()
	t.Logf("batches read again after a concurrent commit: %d", st.importRereads.Load())

	// The same registrations, one import, no concurrency.
	ref, _ := openStore(t, t.TempDir(), Options{ImportBatchRows: 1000})
	importRows(t, ctx, ref, rows)
	for i := 0; i < 60; i++ {
		r := rows[i*7%len(rows)]
		if _, err := ref.Register(ctx, cust(r.CustomerID), "profile", profile.Registration{Key: r.Reg.Key, Time: r.Reg.Time, DeviceID: r.Reg.DeviceID, Env: r.Reg.Env}); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := dump(t, ctx, st), dump(t, ctx, ref); got != want {
		t.Fatalf("import with concurrent writers diverged:\n%s", diff(got, want))
	}
}

func TestEraseLeavesNoTrace(t *testing.T) {
	ctx := context.Background()
	st, db := openStore(t, t.TempDir(), Options{})
	register(t, ctx, st, "A", "aa01", 1, "d1")
	register(t, ctx, st, "A", "aa02", 2, "d2")
	register(t, ctx, st, "B", "bb01", 1, "d1") // shares device d1 with A's token
	if _, _, err := st.Upsert(ctx, profile.UpsertRequest{Identities: []profile.Identity{{Namespace: "customer_id", Value: "A"}, {Namespace: "email", Value: "a@example.com"}}}); err != nil {
		t.Fatal(err)
	}
	a, err := st.Get(ctx, cust("A"), "profile")
	if err != nil {
		t.Fatal(err)
	}
	id, n, err := st.Delete(ctx, cust("A"), "profile")
	if err != nil || id != a.Profile.ID || n != 2 {
		t.Fatalf("got %s, %d tokens, %v; want %s, 2 tokens", id, n, err, a.Profile.ID)
	}
	for _, ref := range []profile.Ref{cust("A"), {Identity: profile.Identity{Namespace: "email", Value: "a@example.com"}, ByIdentity: true}, {ID: id}} {
		if _, err := st.Get(ctx, ref, "profile"); !errors.Is(err, profile.ErrNotFound) {
			t.Errorf("Get(%s) after erasure: got %v, want ErrNotFound", ref, err)
		}
	}
	for _, tok := range []string{"aa01", "aa02"} {
		if _, _, err := st.Unregister(ctx, apns(tok), profile.ReasonUninstalled); !errors.Is(err, profile.ErrNotFound) {
			t.Errorf("token %s after erasure: got %v, want ErrNotFound", tok, err)
		}
	}
	// No key or value anywhere still names the profile or its tokens.
	needles := [][]byte{id[:], []byte("aa01"), []byte("aa02"), []byte("a@example.com")}
	for _, tok := range []string{"aa01", "aa02"} {
		tid := apns(tok).ID()
		needles = append(needles, tid[:])
	}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				for _, n := range needles {
					if bytes.Contains(k, n) || bytes.Contains(v, n) {
						t.Errorf("bucket %s still holds %x in key %q", name, n, k)
					}
				}
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	// B's token on the shared device is the device's current one again.
	toks, err := st.Tokens(ctx, cust("B"), "profile")
	if err != nil || len(toks) != 1 || !toks[0].Active() {
		t.Fatalf("B's tokens after A's erasure: got %+v, %v; want one active token", toks, err)
	}
}

func TestTenantsAreIsolated(t *testing.T) {
	st, _ := openStore(t, t.TempDir(), Options{})
	red, blue := tenant.With(context.Background(), "red"), tenant.With(context.Background(), "blue")
	register(t, red, st, "C1", "aa01", 1, "")
	register(t, blue, st, "C1", "aa01", 2, "")
	register(t, blue, st, "C2", "bb01", 2, "")
	r, err := st.Get(red, cust("C1"), "profile")
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Get(blue, cust("C1"), "profile")
	if err != nil {
		t.Fatal(err)
	}
	if r.Profile.ID == b.Profile.ID {
		t.Fatalf("got the same profile %s in two tenants, want two", r.Profile.ID)
	}
	if _, err := st.Get(red, cust("C2"), "profile"); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("red sees blue's C2: got %v, want ErrNotFound", err)
	}
	if _, err := st.Get(red, profile.Ref{ID: b.Profile.ID}, "profile"); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("red sees blue's profile by id: got %v, want ErrNotFound", err)
	}
	for _, tc := range []struct {
		ctx  context.Context
		want int
	}{{red, 1}, {blue, 2}} {
		_, n, _, err := st.ScanChunk(tc.ctx, profile.ID{}, true, 100, func(profile.ID, *profile.View) (bool, error) { return true, nil })
		if err != nil || n != tc.want {
			t.Fatalf("scan of %s: got %d profiles (%v), want %d", tenant.FromContext(tc.ctx), n, err, tc.want)
		}
	}
}

func TestIDsKeepGrowingAfterReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := tenant.With(context.Background(), "b-tenant")
	db, err := boltdb.Open(dir, "profilesvc.db")
	if err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour)
	st, err := Open(db, Options{Now: func() time.Time { return future }})
	if err != nil {
		t.Fatal(err)
	}
	before := register(t, ctx, st, "C1", "aa01", 1, "")
	st.Close()
	db.Close()

	st2, _ := openStore(t, dir, Options{}) // its clock is an hour behind
	after := register(t, tenant.With(context.Background(), "a-tenant"), st2, "C2", "bb01", 1, "")
	if bytes.Compare(after.Owner[:], before.Owner[:]) <= 0 {
		t.Fatalf("got id %s after reopening, want greater than %s", after.Owner, before.Owner)
	}
}

func TestSchemaVersion(t *testing.T) {
	for _, tt := range []struct {
		stored, want string // want "" when Open must fail
	}{
		{"", schemaVersion},
		{upgradableSchema, schemaVersion},
		{schemaVersion, schemaVersion},
		{"3", ""},
	} {
		dir := t.TempDir()
		db, err := boltdb.Open(dir, "profilesvc.db")
		if err != nil {
			t.Fatal(err)
		}
		if tt.stored != "" {
			err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket(bucketMeta)
				if err != nil {
					return err
				}
				return b.Put(schemaKey, []byte(tt.stored))
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		st, err := Open(db, Options{})
		if tt.want == "" {
			if err == nil {
				st.Close()
				t.Errorf("schema %q: opened, want an error", tt.stored)
			}
			db.Close()
			continue
		}
		if err != nil {
			t.Fatalf("schema %q: %v", tt.stored, err)
		}
		st.Close()
		var got string
		_ = db.View(func(tx *bolt.Tx) error {
			got = string(tx.Bucket(bucketMeta).Get(schemaKey))
			return nil
		})
		db.Close()
		if got != tt.want {
			t.Errorf("schema %q: stored %q after opening, want %q", tt.stored, got, tt.want)
		}
	}
}

func TestGroupCommitIsolatesFailures(t *testing.T) {
	ctx := context.Background()
	st, _ := openStore(t, t.TempDir(), Options{})
	var wg sync.WaitGroup
	errs := make([]error, 100)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ref := cust(fmt.Sprintf("C%d", i))
			if i%10 == 0 {
				ref = profile.Ref{ID: profile.ID{byte(i + 1)}} // does not exist
			}
			_, errs[i] = st.Register(ctx, ref, "profile", profile.Registration{Key: apns(fmt.Sprintf("%04x", i)), Time: base})
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if i%10 == 0 {
			if !errors.Is(err, profile.ErrNotFound) {
				t.Errorf("request %d: got %v, want ErrNotFound", i, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("request %d: got %v, want success", i, err)
			continue
		}
		toks, err := st.Tokens(ctx, cust(fmt.Sprintf("C%d", i)), "profile")
		if err != nil || len(toks) != 1 {
			t.Errorf("request %d: got tokens %v, %v; want one", i, toks, err)
		}
	}
}

func TestScanChunkResumes(t *testing.T) {
	ctx := context.Background()
	st, _ := openStore(t, t.TempDir(), Options{})
	for i := 0; i < 25; i++ {
		register(t, ctx, st, fmt.Sprintf("C%02d", i), fmt.Sprintf("%04x", i), 1, "")
	}
	var seen []profile.ID
	after, first := profile.ID{}, true
	for {
		last, n, end, err := st.ScanChunk(ctx, after, first, 4, func(id profile.ID, v *profile.View) (bool, error) {
			if v.TokenCount() != 1 {
				t.Errorf("profile %s: got %d tokens in the view, want 1", id, v.TokenCount())
			}
			seen = append(seen, id)
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			after, first = last, false
		}
		if end {
			break
		}
	}
	if len(seen) != 25 {
		t.Fatalf("got %d profiles, want 25", len(seen))
	}
	if !slices.IsSortedFunc(seen, func(a, b profile.ID) int { return bytes.Compare(a[:], b[:]) }) {
		t.Fatalf("got profiles out of id order")
	}
}

func TestFeedbackBatch(t *testing.T) {
	ctx := context.Background()
	st, _ := openStore(t, t.TempDir(), Options{})
	register(t, ctx, st, "A", "aa01", 1, "")
	register(t, ctx, st, "A", "aa02", 10, "")
	c, err := st.Feedback(ctx, []FeedbackItem{
		{Key: apns("aa01"), Reason: profile.ReasonUnregistered, At: base + 5*sec}, // after its registration
		{Key: apns("aa02"), Reason: profile.ReasonUnregistered, At: base + 5*sec}, // before its registration
		{Key: apns("ffff"), Reason: profile.ReasonBadToken, At: base},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []profile.FeedbackOutcome{profile.FeedbackDeactivated, profile.FeedbackUnchanged, profile.FeedbackUnknown}
	if c.Deactivated != 1 || c.Unchanged != 1 || c.Unknown != 1 || !slices.Equal(c.Outcomes, want) {
		t.Fatalf("got %+v, want 1 deactivated, 1 unchanged, 1 unknown, in the items' order", c)
	}
	ps, err := st.Get(ctx, cust("A"), "profile")
	if err != nil || ps.ActiveTokens != 1 {
		t.Fatalf("got %d active tokens (%v), want 1", ps.ActiveTokens, err)
	}
}

func profileReg(i int64) profile.Registration {
	return profile.Registration{Key: apns(fmt.Sprintf("%064x", i)), Time: base + i, DeviceID: fmt.Sprintf("device-%d", i), Source: "bench"}
}

// TestSortPutsOrdersLikeBytes checks the ranked sort against plain byte
// order on keys with long shared prefixes, keys shorter than a rank and
// keys that are prefixes of others.
func TestSortPutsOrdersLikeBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 8))
	var puts []put
	for i := 0; i < 2000; i++ {
		key := []byte("tenant\x00customer_id\x00C-")
		for n := rng.IntN(12); n > 0; n-- {
			key = append(key, byte('0'+rng.IntN(3)))
		}
		puts = append(puts, put{key: key})
	}
	// Random 16-byte ids after the prefix, as the token index has.
	for i := 0; i < 3000; i++ {
		key := []byte("tenant\x00")
		for range 16 {
			key = append(key, byte(rng.IntN(256)))
		}
		puts = append(puts, put{key: key})
	}
	for _, n := range []int{len(puts), 2000, 300} {
		ps := slices.Clone(puts[len(puts)-n:])
		sortPuts(ps)
		for i := 1; i < len(ps); i++ {
			if bytes.Compare(ps[i-1].key, ps[i].key) > 0 {
				t.Fatalf("%d puts: keys %d and %d out of order: %q before %q", n, i-1, i, ps[i-1].key, ps[i].key)
			}
		}
		sortPuts(ps) // already sorted
		if !slices.IsSortedFunc(ps, func(a, b put) int { return bytes.Compare(a.key, b.key) }) {
			t.Fatalf("%d puts: sorting sorted puts unsorted them", n)
		}
	}
}
