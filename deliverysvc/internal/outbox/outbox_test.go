package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

func openDB(t *testing.T, dir string) *bolt.DB {
	t.Helper()
	db, err := boltdb.Open(dir, "test.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := buckets.Create(db); err != nil {
		t.Fatal(err)
	}
	return db
}

// remote is a fake receiver that can be switched off.
type remote struct {
	mu       sync.Mutex
	down     bool
	got      map[string][]string // tenant → records, in order
	calls    int
	received chan struct{}
}

func newRemote() *remote {
	return &remote{got: map[string][]string{}, received: make(chan struct{}, 1000)}
}

func (r *remote) deliver(ctx context.Context, tenantID string, records [][]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.down {
		return errors.New("remote down")
	}
	if got := tenant.FromContext(ctx); got != tenantID {
		return fmt.Errorf("context tenant %q, batch tenant %q", got, tenantID)
	}
	for _, rec := range records {
		r.got[tenantID] = append(r.got[tenantID], string(rec))
	}
	r.received <- struct{}{}
	return nil
}

func (r *remote) setDown(down bool) { r.mu.Lock(); r.down = down; r.mu.Unlock() }

func (r *remote) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, recs := range r.got {
		n += len(recs)
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fastConfig() Config {
	return Config{Name: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), RetryInitial: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond, Interval: time.Millisecond, CommitLinger: time.Millisecond}
}

func TestForwardsInOrderPerTenant(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	r := newRemote()
	o := New(db, buckets.TrackingOutbox, r.deliver, fastConfig())
	o.Start()
	defer o.Close()
	acme, beta := tenant.With(context.Background(), "acme"), tenant.With(context.Background(), "beta")
	for i := 0; i < 50; i++ {
		if err := o.Append(acme, [][]byte{[]byte(fmt.Sprintf("a%02d", i))}); err != nil {
			t.Fatal(err)
		}
		if err := o.Append(beta, [][]byte{[]byte(fmt.Sprintf("b%02d", i)), []byte(fmt.Sprintf("b%02d+", i))}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "150 records", func() bool { return r.count() == 150 })
	waitFor(t, "the forwarded records to be deleted", func() bool { n, _ := o.Len(); return n == 0 })
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, rec := range r.got["acme"] {
		if want := fmt.Sprintf("a%02d", i); rec != want {
			t.Fatalf("acme record %d: got %q, want %q", i, rec, want)
		}
	}
	if len(r.got["beta"]) != 100 || r.got["beta"][1] != "b00+" {
		t.Errorf("beta: got %d records starting %v, want 100 in order", len(r.got["beta"]), r.got["beta"][:2])
	}
}

func TestRemoteDownThenUp(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	r := newRemote()
	r.setDown(true)
	o := New(db, buckets.TrackingOutbox, r.deliver, fastConfig())
	o.Start()
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		if err := o.Append(ctx, [][]byte{[]byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "failed attempts", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.calls >= 2 })
	if n, err := o.Len(); err != nil || n != 100 {
		t.Fatalf("while down: outbox holds %d (%v), want 100", n, err)
	}
	if n := o.Backlog(); n != 100 {
		t.Errorf("while down: backlog %d, want 100", n)
	}
	// A restart while down loses nothing.
	o.Close()
	db.Close()
	db = openDB(t, dir)
	defer db.Close()
	o = New(db, buckets.TrackingOutbox, r.deliver, fastConfig())
	o.Start()
	defer o.Close()
	if n, _ := o.Len(); n != 100 {
		t.Fatalf("after restart: outbox holds %d, want 100", n)
	}
	if n := o.Backlog(); n != 100 {
		t.Errorf("after restart: backlog %d, want 100 (counted from the bucket)", n)
	}
	r.setDown(false)
	waitFor(t, "delivery after recovery", func() bool { return r.count() == 100 })
	waitFor(t, "an empty outbox", func() bool { n, _ := o.Len(); return n == 0 })
	if n := o.Backlog(); n != 0 {
		t.Errorf("after recovery: backlog %d, want 0", n)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, rec := range r.got["default"] {
		if seen[rec] {
			t.Errorf("record %s delivered twice", rec)
		}
		seen[rec] = true
	}
	if len(seen) != 100 {
		t.Errorf("got %d distinct records, want 100", len(seen))
	}
}

func TestAppendAfterClose(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	o := New(db, buckets.TrackingOutbox, newRemote().deliver, fastConfig())
	o.Close()
	if err := o.Append(context.Background(), [][]byte{[]byte("x")}); !errors.Is(err, ErrClosed) {
		t.Errorf("got %v, want ErrClosed", err)
	}
}

// TestAppendAsync checks that done runs once the records are committed (and
// not before), exactly once per append, and at once for nothing to write or
// a closed outbox.
func TestAppendAsync(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	cfg := fastConfig()
	cfg.CommitLinger = 50 * time.Millisecond                       // so appends share a commit
	o := New(db, buckets.TrackingOutbox, newRemote().deliver, cfg) // not started: records stay
	ctx := tenant.With(context.Background(), "acme")

	const appends = 20
	type outcome struct {
		err    error
		stored int // records in the bucket when done ran
	}
	outcomes := make(chan outcome, appends)
	for i := range appends {
		o.AppendAsync(ctx, [][]byte{[]byte(fmt.Sprintf("r%02d", i))}, func(err error) {
			n, lenErr := o.Len()
			if lenErr != nil {
				err = errors.Join(err, lenErr)
			}
			outcomes <- outcome{err: err, stored: n}
		})
	}
	for range appends {
		select {
		case got := <-outcomes:
			if got.err != nil {
				t.Fatal(got.err)
			}
			// Every append of the first commit sees at least its own record.
			if got.stored == 0 {
				t.Error("done ran before the records were committed")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("done not called")
		}
	}
	if n, _ := o.Len(); n != appends {
		t.Errorf("stored %d records, want %d", n, appends)
	}

	called := 0
	o.AppendAsync(ctx, nil, func(err error) {
		called++
		if err != nil {
			t.Errorf("empty append: %v", err)
		}
	})
	o.Close()
	o.AppendAsync(ctx, [][]byte{[]byte("late")}, func(err error) {
		called++
		if !errors.Is(err, ErrClosed) {
			t.Errorf("append after Close: got %v, want ErrClosed", err)
		}
	})
	if called != 2 {
		t.Errorf("done ran %d times before AppendAsync returned, want 2", called)
	}
	select {
	case extra := <-outcomes:
		t.Errorf("done called twice: %+v", extra)
	default:
	}
}

// TestWriteSplitsValues: one commit stores each tenant's records in order,
// at most maxValueRecords per value, whatever the interleaving of tenants.
func TestWriteSplitsValues(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	o := New(db, buckets.TrackingOutbox, newRemote().deliver, fastConfig())
	defer o.Close()
	want := map[string][]string{}
	var group []*appendReq
	for i := range 4510 {
		tenantID := "acme"
		if i%451 == 0 {
			tenantID = "beta"
		}
		rec := fmt.Sprintf("%s-%04d%s", tenantID, i, strings.Repeat("x", i%300)) // lengths over one varint byte too
		want[tenantID] = append(want[tenantID], rec)
		group = append(group, &appendReq{tenant: tenantID, records: [][]byte{[]byte(rec)}})
	}
	if err := o.write(group); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	var sizes []int
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(buckets.TrackingOutbox).ForEach(func(k, v []byte) error {
			recs, err := splitRecords(v, nil)
			if err != nil {
				return err
			}
			tenantID := "beta"
			if bytes.HasPrefix(k, boltdb.TenantPrefix("acme")) {
				tenantID = "acme"
			}
			for _, r := range recs {
				got[tenantID] = append(got[tenantID], string(r))
			}
			sizes = append(sizes, len(recs))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for tenantID, recs := range want {
		if !slices.Equal(got[tenantID], recs) {
			t.Errorf("%s: got %d records, want %d in order", tenantID, len(got[tenantID]), len(recs))
		}
	}
	for _, n := range sizes {
		if n > maxValueRecords {
			t.Errorf("a value holds %d records, more than %d", n, maxValueRecords)
		}
	}
}

func TestSplitRecords(t *testing.T) {
	recs, err := splitRecords([]byte{2, 'a', 'b', 0, 1, 'c'}, nil)
	if err != nil || len(recs) != 3 || string(recs[0]) != "ab" || len(recs[1]) != 0 || string(recs[2]) != "c" {
		t.Errorf("got %q, %v; want [ab, , c]", recs, err)
	}
	if _, err := splitRecords([]byte{5, 'a'}, nil); err == nil {
		t.Error("truncated value: got nil error, want one")
	}
}

// A tenant whose batches the remote keeps failing (a quota, an outage of
// its shard, a refusal of that tenant) must not hold the other tenants'
// records: they are forwarded while its own wait, in order, for the retry.
func TestOneTenantsFailuresDoNotHoldTheOthers(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	r := newRemote()
	var acmeDown sync.Mutex // held while acme's batches fail
	acmeDown.Lock()
	refused := make(chan struct{}, 1)
	deliver := func(ctx context.Context, tenantID string, records [][]byte) error {
		if tenantID == "acme" {
			if !acmeDown.TryLock() {
				select {
				case refused <- struct{}{}:
				default:
				}
				return errors.New("acme's shard is unavailable")
			}
			acmeDown.Unlock()
		}
		return r.deliver(ctx, tenantID, records)
	}
	o := New(db, buckets.TrackingOutbox, deliver, fastConfig())
	o.Start()
	defer o.Close()
	acme, beta := tenant.With(context.Background(), "acme"), tenant.With(context.Background(), "beta")
	for i := range 20 {
		// acme's keys sort first: its records are the outbox's head.
		if err := o.Append(acme, [][]byte{[]byte(fmt.Sprintf("a%02d", i))}); err != nil {
			t.Fatal(err)
		}
		if err := o.Append(beta, [][]byte{[]byte(fmt.Sprintf("b%02d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	<-refused
	waitFor(t, "beta's records while acme's fail", func() bool { return r.count() == 20 })
	r.mu.Lock()
	gotBeta, gotAcme := len(r.got["beta"]), len(r.got["acme"])
	r.mu.Unlock()
	if gotBeta != 20 || gotAcme != 0 {
		t.Fatalf("while acme fails: got %d beta and %d acme records, want 20 and 0", gotBeta, gotAcme)
	}
	acmeDown.Unlock()
	waitFor(t, "acme's records once its remote is back", func() bool { return r.count() == 40 })
	waitFor(t, "an empty outbox", func() bool { n, _ := o.Len(); return n == 0 })
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, rec := range r.got["acme"] {
		if want := fmt.Sprintf("a%02d", i); rec != want {
			t.Fatalf("acme record %d: got %q, want %q (in order)", i, rec, want)
		}
	}
}

// TestBacklogCountsWhatIsForwarded checks that the backlog counts a corrupt
// value's records as the forwarder reads them, so it returns to zero once
// the value is forwarded and deleted.
func TestBacklogCountsWhatIsForwarded(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	// Two good records, then a length running past the value's end.
	var v []byte
	for _, rec := range []string{"r1", "r2"} {
		v = binary.AppendUvarint(v, uint64(len(rec)))
		v = append(v, rec...)
	}
	v = binary.AppendUvarint(v, 100)
	v = append(v, "short"...)
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.TrackingOutbox)
		if err := b.SetSequence(1); err != nil { // as an append would have
			return err
		}
		return b.Put(binary.BigEndian.AppendUint64(boltdb.TenantPrefix("default"), 1), v)
	}); err != nil {
		t.Fatal(err)
	}
	r := newRemote()
	o := New(db, buckets.TrackingOutbox, r.deliver, fastConfig())
	defer o.Close()
	if n := o.Backlog(); n != 2 {
		t.Fatalf("before forwarding: backlog %d, want the 2 readable records", n)
	}
	if err := o.Append(context.Background(), [][]byte{[]byte("r3")}); err != nil {
		t.Fatal(err)
	}
	if n := o.Backlog(); n != 3 {
		t.Fatalf("after an append: backlog %d, want 3", n)
	}
	o.Start()
	waitFor(t, "the records forwarded", func() bool { return r.count() == 3 })
	waitFor(t, "a backlog of 0", func() bool { return o.Backlog() == 0 })
}

// A group whose commit fails is not left in the backlog (the writer counts
// a group before its commit, so that the forwarder can never subtract
// records not yet added).
func TestBacklogUnchangedByAFailedCommit(t *testing.T) {
	dir := t.TempDir()
	openDB(t, dir).Close()
	db, err := bolt.Open(filepath.Join(dir, "test.db"), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	o := New(db, buckets.TrackingOutbox, newRemote().deliver, fastConfig())
	defer o.Close()
	if err := o.Append(context.Background(), [][]byte{[]byte("r1"), []byte("r2")}); err == nil {
		t.Fatal("append to a read-only database: want an error")
	}
	if n := o.Backlog(); n != 0 {
		t.Errorf("after a failed commit: backlog %d, want 0", n)
	}
}

// A value with no readable record at all (its first length runs past its
// end) has nothing to forward; it is deleted, rather than stop the
// forwarder before the records behind it, here another tenant's.
func TestUnreadableValueDoesNotHoldUpTheQueue(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	v := append(binary.AppendUvarint(nil, 100), "short"...)
	if err := db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(buckets.TrackingOutbox)
		if err := b.SetSequence(1); err != nil { // as an append would have
			return err
		}
		return b.Put(binary.BigEndian.AppendUint64(boltdb.TenantPrefix("acme"), 1), v)
	}); err != nil {
		t.Fatal(err)
	}
	r := newRemote()
	o := New(db, buckets.TrackingOutbox, r.deliver, fastConfig())
	defer o.Close()
	if err := o.Append(tenant.With(context.Background(), "beta"), [][]byte{[]byte("r1")}); err != nil {
		t.Fatal(err)
	}
	o.Start()
	waitFor(t, "beta's record forwarded", func() bool { return r.count() == 1 })
	waitFor(t, "an empty outbox", func() bool { n, _ := o.Len(); return n == 0 && o.Backlog() == 0 })
}
