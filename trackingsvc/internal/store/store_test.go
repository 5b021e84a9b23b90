package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// testStore opens a store in dir with the clock; reopen by calling it again
// after closing the returned db.
func testStore(t *testing.T, dir string, c *clock) (*Store, *bolt.DB) {
	t.Helper()
	db, err := boltdb.Open(dir, "trackingsvc.db")
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(db, Options{Now: c.Now})
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	return st, db
}

func newStore(t *testing.T, c *clock) *Store {
	t.Helper()
	st, db := testStore(t, t.TempDir(), c)
	t.Cleanup(func() { db.Close() })
	return st
}

func event(id string, typ trackingv1.EventType, at time.Time) *trackingv1.Event {
	e := &trackingv1.Event{
		EventId: id, Type: typ, EventTime: timestamppb.New(at), ReceiveTime: timestamppb.New(at),
		ProfileId: "p-" + id, AppId: "com.acme", Platform: commonv1.Platform_PLATFORM_APNS, JourneyId: "j1", MessageId: "m1",
	}
	switch typ {
	case trackingv1.EventType_EVENT_TYPE_FAILED:
		e.FailureReason = commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
	case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
		e.ExclusionReason = commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT
	case trackingv1.EventType_EVENT_TYPE_ACTION:
		e.ActionId = "buy"
	}
	return e
}

func mustAppend(t *testing.T, st *Store, tenant string, evs ...*trackingv1.Event) AppendResult {
	t.Helper()
	res, err := st.Append(context.Background(), tenant, evs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestDuplicatesCaughtAcrossRestartWithinWindow(t *testing.T) {
	c := &clock{now: t0}
	dir := t.TempDir()
	st, db := testStore(t, dir, c)
	sent := event("e1", trackingv1.EventType_EVENT_TYPE_SENT, t0)
	if res := mustAppend(t, st, "acme", sent, event("e2", trackingv1.EventType_EVENT_TYPE_SENT, t0)); res.Accepted != 2 {
		t.Fatalf("first batch: got %d accepted, want 2", res.Accepted)
	}
	db.Close()

	// Six days later, after a restart, the same id with a different event
	// time (a sender that rebuilt the event) is still a duplicate.
	c.Set(t0.Add(6 * 24 * time.Hour))
	st, db = testStore(t, dir, c)
	retry := proto.Clone(sent).(*trackingv1.Event)
	retry.EventTime = timestamppb.New(t0.Add(time.Hour))
	res := mustAppend(t, st, "acme", retry, event("e3", trackingv1.EventType_EVENT_TYPE_SENT, t0))
	if res.Accepted != 1 || res.Duplicates != 1 || res.New[0] || !res.New[1] {
		t.Errorf("after restart: got %+v, want e1 a duplicate and e3 new", res)
	}
	// The same id in another tenant is another event.
	if res := mustAppend(t, st, "other", proto.Clone(sent).(*trackingv1.Event)); res.Accepted != 1 {
		t.Errorf("other tenant: got %+v, want accepted", res)
	}
	db.Close()

	// Past the window (7 days, kept per whole receive day) the id leaves
	// memory; a copy with its event time is still caught, from the day's
	// sorted run on disk, as long as the event could be accepted.
	c.Set(t0.Add(9 * 24 * time.Hour))
	st, db = testStore(t, dir, c)
	defer db.Close()
	if got := st.RememberedIDs(); got != 2 {
		t.Errorf("ids in memory after the window: got %d, want 2 (e3 and other's e1, from day 6)", got)
	}
	if res := mustAppend(t, st, "acme", proto.Clone(sent).(*trackingv1.Event)); res.Accepted != 0 || res.Duplicates != 1 {
		t.Errorf("after the window: got %+v, want e1 a duplicate", res)
	}
	// A copy rebuilt with a new event time is caught only within the
	// window (documented).
	rebuilt := proto.Clone(sent).(*trackingv1.Event)
	rebuilt.EventTime = timestamppb.New(c.Now())
	if res := mustAppend(t, st, "acme", rebuilt); res.Accepted != 1 {
		t.Errorf("rebuilt with a new time after the window: got %+v, want accepted", res)
	}
}

// TestLateCopyAfterTheWindowIsADuplicate: an event may be accepted up to the
// retention after its event time, so its id must be remembered that long,
// though memory holds only the dedupe window.
func TestLateCopyAfterTheWindowIsADuplicate(t *testing.T) {
	c := &clock{now: t0}
	dir := t.TempDir()
	st, db := testStore(t, dir, c)
	orig := event("late", trackingv1.EventType_EVENT_TYPE_SENT, t0.Add(-time.Hour))
	mustAppend(t, st, "acme", orig, event("other", trackingv1.EventType_EVENT_TYPE_SENT, t0))
	ctx := context.Background()

	// Nine days later the first copy's receive day has left memory.
	c.Set(t0.Add(9 * 24 * time.Hour))
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.RememberedIDs(); got != 0 {
		t.Errorf("ids in memory after the window: got %d, want 0", got)
	}
	res := mustAppend(t, st, "acme", proto.Clone(orig).(*trackingv1.Event), event("new", trackingv1.EventType_EVENT_TYPE_SENT, c.Now()))
	if res.Accepted != 1 || res.New[0] || !res.New[1] {
		t.Errorf("late copy: got %+v, want it a duplicate and the new event stored", res)
	}
	// The same across a restart, and in no other tenant.
	db.Close()
	st, db = testStore(t, dir, c)
	defer func() { db.Close() }()
	if res := mustAppend(t, st, "acme", proto.Clone(orig).(*trackingv1.Event)); res.Duplicates != 1 {
		t.Errorf("late copy after restart: got %+v, want a duplicate", res)
	}
	if res := mustAppend(t, st, "zeta", proto.Clone(orig).(*trackingv1.Event)); res.Accepted != 1 {
		t.Errorf("another tenant: got %+v, want accepted", res)
	}
	m, _, err := st.Metrics(ctx, "acme", Filter{}, 0)
	if err != nil || m.GetSent() != 3 {
		t.Errorf("got %v, %v, want sent 3 (late, other, new): nothing counted twice", m, err)
	}
	evs, _, err := st.List(ctx, "acme", Filter{}, nil, 100, "")
	if err != nil || len(evs) != 3 {
		t.Errorf("listed %d events, %v, want 3", len(evs), err)
	}
}

// A sweep that moves a day from memory to a run on disk between a batch's
// look-up on disk (which memory then made unnecessary) and its check must
// not let a copy of that day's event through: the batch looks again.
func TestSweepBetweenLookupAndCheck(t *testing.T) {
	c := &clock{now: t0}
	st := newStore(t, c)
	orig := event("e1", trackingv1.EventType_EVENT_TYPE_SENT, t0.Add(-time.Hour))
	mustAppend(t, st, "acme", orig)

	// Nine days on, before any sweep, memory still holds the first day.
	c.Set(t0.Add(9 * 24 * time.Hour))
	lookups := 0
	st.afterLookup = func() {
		lookups++
		if lookups == 1 {
			if _, err := st.Sweep(context.Background()); err != nil {
				t.Error(err)
			}
		}
	}
	res := mustAppend(t, st, "acme", proto.Clone(orig).(*trackingv1.Event))
	if res.Accepted != 0 || res.Duplicates != 1 {
		t.Errorf("copy checked across a sweep: got %+v, want a duplicate", res)
	}
	if lookups != 2 {
		t.Errorf("looked up %d times, want 2 (again after the sweep)", lookups)
	}
	if got := st.RememberedIDs(); got != 0 {
		t.Errorf("ids in memory after the sweep: %d, want 0 (the day is in a run)", got)
	}
}

// Days that left memory for runs stay covered by their runs when the
// service restarts with a longer dedupe window (or a clock set back): their
// partitions are gone, so memory cannot answer for them.
func TestLongerWindowAfterARestartStillFindsRunIDs(t *testing.T) {
	c := &clock{now: t0}
	dir := t.TempDir()
	st, db := testStore(t, dir, c)
	orig := event("late", trackingv1.EventType_EVENT_TYPE_SENT, t0.Add(-time.Hour))
	mustAppend(t, st, "acme", orig)
	c.Set(t0.Add(9 * 24 * time.Hour))
	if _, err := st.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err := boltdb.Open(dir, "trackingsvc.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err = Open(db, Options{Now: c.Now, DedupeWindow: 14 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if res := mustAppend(t, st, "acme", proto.Clone(orig).(*trackingv1.Event)); res.Duplicates != 1 {
		t.Errorf("a copy after the window grew: got %+v, want a duplicate", res)
	}
}

// A day whose batch is still committing is not moved out of memory until
// that batch is done, so its ids reach the day's run.
func TestDayLeavesMemoryOnlyWhenItsBatchesAreDone(t *testing.T) {
	c := &clock{now: t0}
	st := newStore(t, c)
	ctx := context.Background()
	mustAppend(t, st, "acme", event("quick", trackingv1.EventType_EVENT_TYPE_SENT, t0))
	orig := event("slow", trackingv1.EventType_EVENT_TYPE_SENT, t0)
	release := make(chan struct{})
	st.beforeCommit = func() error { <-release; return nil }
	done := make(chan error, 1)
	go func() {
		_, err := st.Append(ctx, "acme", []*trackingv1.Event{proto.Clone(orig).(*trackingv1.Event)})
		done <- err
	}()
	waitInflight(st, 1)
	c.Set(t0.Add(9 * 24 * time.Hour))
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st.beforeCommit = nil
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := st.RememberedIDs(); got != 0 {
		t.Errorf("ids in memory: got %d, want 0 (the day left the window)", got)
	}
	if res := mustAppend(t, st, "acme", proto.Clone(orig).(*trackingv1.Event)); res.Duplicates != 1 {
		t.Errorf("copy of the slow batch's event: got %+v, want a duplicate", res)
	}
}

// Ids are forgotten once no copy of their events can be accepted any more:
// the retention after the event time (and a day of margin).
func TestRunsExpireAfterTheRetention(t *testing.T) {
	c := &clock{now: t0}
	st := newStore(t, c)
	ctx := context.Background()
	mustAppend(t, st, "acme", event("a", trackingv1.EventType_EVENT_TYPE_SENT, t0))
	c.Set(t0.Add(10 * 24 * time.Hour))
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(st.cover.Load().runs); got != 1 {
		t.Fatalf("run days after 10 days: got %d, want 1", got)
	}
	c.Set(t0.Add(33 * 24 * time.Hour))
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(st.cover.Load().runs); got != 0 {
		t.Errorf("run days after 33 days: got %d, want 0", got)
	}
	err := st.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDedupeRuns).ForEachBucket(func(k []byte) error {
			return fmt.Errorf("run %x still on disk", k)
		})
	})
	if err != nil {
		t.Error(err)
	}
}

func TestDuplicatesInsideOneBatch(t *testing.T) {
	st := newStore(t, &clock{now: t0})
	a := event("same", trackingv1.EventType_EVENT_TYPE_OPENED, t0)
	b := event("same", trackingv1.EventType_EVENT_TYPE_DISMISSED, t0)
	res := mustAppend(t, st, "acme", a, b)
	if res.Accepted != 1 || res.Duplicates != 1 || !res.New[0] || res.New[1] {
		t.Errorf("got %+v, want the first kept, the second a duplicate", res)
	}
	evs, _, err := st.List(context.Background(), "acme", Filter{}, nil, 10, "")
	if err != nil || len(evs) != 1 || evs[0].GetType() != trackingv1.EventType_EVENT_TYPE_OPENED {
		t.Errorf("got %v, %v, want only the open stored", evs, err)
	}
}

func TestConcurrentAppendsCountEachIDOnce(t *testing.T) {
	st := newStore(t, &clock{now: t0})
	// Four writers send overlapping batches at once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for w := range 4 {
		wg.Go(func() {
			for b := range 10 {
				var evs []*trackingv1.Event
				for i := range 50 {
					evs = append(evs, event(fmt.Sprintf("e%d", (w*7+b*50+i)%400), trackingv1.EventType_EVENT_TYPE_SENT, t0))
				}
				res, err := st.Append(context.Background(), "acme", evs)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				accepted += res.Accepted
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	m, _, err := st.Metrics(context.Background(), "acme", Filter{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.GetSent() != int64(accepted) || accepted != 400 {
		t.Errorf("got %d accepted and %d counted, want 400 each", accepted, m.GetSent())
	}
}

func TestABatchThatReliedOnAFailedOneFails(t *testing.T) {
	st := newStore(t, &clock{now: t0})
	ctx := context.Background()
	checkedB := make(chan struct{})
	fail := errors.New("disk on fire")
	first := true
	st.beforeCommit = func() error {
		if first {
			first = false
			<-checkedB // B is checked while A is in flight
			return fail
		}
		return nil
	}
	sent := func(id string) *trackingv1.Event { return event(id, trackingv1.EventType_EVENT_TYPE_SENT, t0) }
	aDone := make(chan error, 1)
	go func() {
		_, err := st.Append(ctx, "acme", []*trackingv1.Event{sent("1"), sent("2")})
		aDone <- err
	}()
	// Wait until A is in flight, then append B, which shares id 2.
	waitInflight(st, 1)
	bDone := make(chan error, 1)
	go func() {
		_, err := st.Append(ctx, "acme", []*trackingv1.Event{sent("2"), sent("3")})
		bDone <- err
	}()
	waitInflight(st, 2)
	close(checkedB)
	if err := <-aDone; !errors.Is(err, fail) {
		t.Fatalf("A: got %v, want its commit error", err)
	}
	if err := <-bDone; !errors.Is(err, ErrEarlierBatchFailed) {
		t.Fatalf("B: got %v, want ErrEarlierBatchFailed (it took A's id 2 for a duplicate)", err)
	}
	// Retries find ids 1, 2 and 3 free: nothing was stored.
	res := mustAppend(t, st, "acme", sent("1"), sent("2"), sent("3"))
	if res.Accepted != 3 {
		t.Errorf("retry: got %+v, want all three accepted", res)
	}
	m, _, err := st.Metrics(ctx, "acme", Filter{}, 0)
	if err != nil || m.GetSent() != 3 {
		t.Errorf("got %v, %v, want sent 3", m, err)
	}
}

func TestUniqueOpensPerProfileAndMessage(t *testing.T) {
	st := newStore(t, &clock{now: t0})
	open := func(id, profile, message string) *trackingv1.Event {
		e := event(id, trackingv1.EventType_EVENT_TYPE_OPENED, t0)
		e.ProfileId, e.MessageId = profile, message
		return e
	}
	byToken := open("t1", "", "m1")
	byToken.TokenHash = "00112233445566778899aabbccddeeff"
	mustAppend(t, st, "acme", open("1", "alice", "m1"), open("2", "alice", "m1"), open("3", "bob", "m1"), byToken)
	mustAppend(t, st, "acme", open("4", "alice", "m1"), open("5", "alice", "m2"), open("6", "carol", "m1"))
	m, _, err := st.Metrics(context.Background(), "acme", Filter{JourneyID: "j1", MessageID: "m1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.GetOpened() != 6 || m.GetUniqueOpens() != 4 {
		t.Errorf("m1: got opened %d unique %d, want 6 and 4 (alice, bob, a token, carol)", m.GetOpened(), m.GetUniqueOpens())
	}
	m, _, _ = st.Metrics(context.Background(), "acme", Filter{JourneyID: "j1"}, 0)
	if m.GetUniqueOpens() != 5 {
		t.Errorf("journey: got unique %d, want 5 (alice opened two messages)", m.GetUniqueOpens())
	}
}

// Unique actions count a profile once per message, whatever it tapped and
// how often, apart from its opens, and survive a restart; an earlier tap
// arriving later moves the count to its minute.
func TestUniqueActionsPerProfileAndMessage(t *testing.T) {
	c := &clock{now: t0}
	dir := t.TempDir()
	st, db := testStore(t, dir, c)
	tap := func(id, profile, action string, at time.Time) *trackingv1.Event {
		e := event(id, trackingv1.EventType_EVENT_TYPE_ACTION, at)
		e.ProfileId, e.ActionId = profile, action
		return e
	}
	opened := event("o1", trackingv1.EventType_EVENT_TYPE_OPENED, t0)
	opened.ProfileId = "alice"
	mustAppend(t, st, "acme", event("s1", trackingv1.EventType_EVENT_TYPE_SENT, t0), event("s2", trackingv1.EventType_EVENT_TYPE_SENT, t0),
		opened, tap("1", "alice", "buy", t0), tap("2", "alice", "buy", t0), tap("3", "alice", "later", t0))
	db.Close()
	st, db = testStore(t, dir, c)
	defer func() { db.Close() }()
	mustAppend(t, st, "acme", tap("4", "bob", "buy", t0), tap("5", "alice", "buy", t0.Add(-10*time.Minute)))
	total, buckets, err := st.Metrics(context.Background(), "acme", Filter{JourneyID: "j1", MessageID: "m1"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if total.GetActions() != 5 || total.GetUniqueActions() != 2 || total.GetUniqueOpens() != 1 || total.GetUniqueActionRate() != 1 {
		t.Errorf("got actions %d, unique actions %d, unique opens %d, unique action rate %v; want 5, 2 (alice, bob), 1, 1",
			total.GetActions(), total.GetUniqueActions(), total.GetUniqueOpens(), total.GetUniqueActionRate())
	}
	byMinute := map[time.Time]int64{}
	for _, b := range buckets {
		byMinute[b.GetStartTime().AsTime()] = b.GetMetrics().GetUniqueActions()
	}
	if early, late := byMinute[t0.Add(-10*time.Minute)], byMinute[t0]; early != 1 || late != 1 {
		t.Errorf("unique actions by minute: %d ten minutes early, %d at t0; want 1 (alice, moved) and 1 (bob)", early, late)
	}
}

func TestUniqueOpensSurviveRestartAndEviction(t *testing.T) {
	c := &clock{now: t0}
	dir := t.TempDir()
	open := func(id, profile string) *trackingv1.Event {
		e := event(id, trackingv1.EventType_EVENT_TYPE_OPENED, c.Now())
		e.ProfileId = profile
		return e
	}
	uniques := func(st *Store) int64 {
		t.Helper()
		m, _, err := st.Metrics(context.Background(), "acme", Filter{JourneyID: "j1", MessageID: "m1"}, 0)
		if err != nil {
			t.Fatal(err)
		}
		return m.GetUniqueOpens()
	}
	st, db := testStore(t, dir, c)
	mustAppend(t, st, "acme", open("1", "alice"))
	db.Close()

	st, db = testStore(t, dir, c)
	defer func() { db.Close() }()
	mustAppend(t, st, "acme", open("2", "alice"), open("3", "bob"))
	if got := uniques(st); got != 2 {
		t.Errorf("after restart: got %d unique opens, want 2 (alice once, bob)", got)
	}
	// Idle for two hours, the message's openers leave memory; the next open
	// reloads them.
	c.Set(t0.Add(2 * time.Hour))
	if _, err := st.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	st.openersMu.Lock()
	cached := len(st.openers.sets)
	st.openersMu.Unlock()
	if cached != 0 {
		t.Errorf("got %d cached messages after the idle sweep, want 0", cached)
	}
	mustAppend(t, st, "acme", open("4", "alice"), open("5", "carol"))
	if got := uniques(st); got != 3 {
		t.Errorf("after eviction: got %d unique opens, want 3 (alice, bob, carol)", got)
	}
}

// A profile's unique open moves to an earlier open arriving later, in its
// bucket, app and platform, across restarts and cache evictions; openers
// recorded before event times were (8 bytes each) stay where they were
// counted.
func TestUniqueOpenMovesToTheEarliestOpen(t *testing.T) {
	c := &clock{now: t0}
	dir := t.TempDir()
	ctx := context.Background()
	open := func(id, profile string, at time.Time, app string, platform commonv1.Platform) *trackingv1.Event {
		e := event(id, trackingv1.EventType_EVENT_TYPE_OPENED, at)
		e.ProfileId, e.AppId, e.Platform = profile, app, platform
		return e
	}
	type where struct {
		hour     time.Time
		app      string
		platform commonv1.Platform
	}
	// uniques lists where each unique open is counted: per hour, app and
	// platform, through the rollups of those filters.
	uniques := func(st *Store) map[where]int64 {
		t.Helper()
		out := map[where]int64{}
		for _, app := range []string{"com.a", "com.b"} {
			for _, p := range []commonv1.Platform{commonv1.Platform_PLATFORM_APNS, commonv1.Platform_PLATFORM_FCM} {
				_, buckets, err := st.Metrics(ctx, "acme", Filter{JourneyID: "j1", MessageID: "m1", AppID: app, Platform: p}, time.Hour)
				if err != nil {
					t.Fatal(err)
				}
				for _, b := range buckets {
					if n := b.GetMetrics().GetUniqueOpens(); n != 0 {
						out[where{b.GetStartTime().AsTime(), app, p}] = n
					}
				}
			}
		}
		total, _, err := st.Metrics(ctx, "acme", Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		sum := int64(0)
		for _, n := range out {
			sum += n
		}
		if total.GetUniqueOpens() != sum {
			t.Errorf("total unique opens %d, want the %d of the buckets", total.GetUniqueOpens(), sum)
		}
		return out
	}
	apns, fcm := commonv1.Platform_PLATFORM_APNS, commonv1.Platform_PLATFORM_FCM
	h := func(n int) time.Time { return t0.Add(time.Duration(n-10) * time.Hour) }

	st, db := testStore(t, dir, c)
	// An opener as written before event times were kept: 8 bytes, no time.
	legacy := xxhash.Sum64(appendWho(nil, open("", "old", t0, "", 0)))
	err := st.db.Update(func(tx *bolt.Tx) error {
		k := openerPrefix(messageKey{"acme", "j1", "m1"})
		return tx.Bucket(bucketOpeners).Put(binary.BigEndian.AppendUint64(k, 1), binary.BigEndian.AppendUint64(nil, legacy))
	})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, st, "acme", open("1", "alice", h(5), "com.b", fcm), open("2", "bob", h(3), "com.a", apns), open("3", "old", h(1), "com.a", apns))
	if got, want := uniques(st), map[where]int64{{h(5), "com.b", fcm}: 1, {h(3), "com.a", apns}: 1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("first batch:\n got %v\nwant %v", got, want)
	}
	// Earlier opens of alice arrive, the earliest last in the batch; a
	// later one of bob changes nothing.
	mustAppend(t, st, "acme", open("4", "alice", h(4), "com.a", apns), open("5", "alice", h(2), "com.a", fcm), open("6", "bob", h(4), "com.b", fcm))
	want := map[where]int64{{h(2), "com.a", fcm}: 1, {h(3), "com.a", apns}: 1}
	if got := uniques(st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after alice's earlier opens:\n got %v\nwant %v", got, want)
	}
	db.Close()

	// After a restart (openers reloaded from disk: the earliest record
	// wins) and after an eviction, an open between changes nothing, an
	// earlier one moves it again.
	st, db = testStore(t, dir, c)
	defer func() { db.Close() }()
	mustAppend(t, st, "acme", open("7", "alice", h(3), "com.b", apns))
	if got := uniques(st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after restart:\n got %v\nwant %v", got, want)
	}
	c.Set(t0.Add(2 * time.Hour))
	if _, err := st.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, st, "acme", open("8", "alice", h(1), "com.b", apns), open("9", "old", h(0), "com.b", apns))
	want = map[where]int64{{h(1), "com.b", apns}: 1, {h(3), "com.a", apns}: 1}
	if got := uniques(st); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after eviction:\n got %v\nwant %v", got, want)
	}
	m, _, err := st.Metrics(ctx, "acme", Filter{}, 0)
	if err != nil || m.GetOpened() != 9 || m.GetUniqueOpens() != 2 {
		t.Errorf("got %v, %v, want 9 opens, 2 unique (alice, bob; old was counted before)", m, err)
	}
}

func TestSweepRemovesOldEventsKeepsAggregatesAndRecentEvents(t *testing.T) {
	c := &clock{now: t0}
	st := newStore(t, c)
	ctx := context.Background()
	for _, tenant := range []string{"acme", "zeta"} {
		mustAppend(t, st, tenant, event("old1", trackingv1.EventType_EVENT_TYPE_SENT, t0), event("old2", trackingv1.EventType_EVENT_TYPE_OPENED, t0))
	}
	c.Set(t0.Add(20 * 24 * time.Hour))
	recent := event("new", trackingv1.EventType_EVENT_TYPE_SENT, c.Now())
	mustAppend(t, st, "acme", recent)

	c.Set(t0.Add(31 * 24 * time.Hour))
	n, err := st.Sweep(ctx)
	if err != nil || n != 4 {
		t.Fatalf("sweep: got %d, %v, want 4 removed", n, err)
	}
	evs, next, err := st.List(ctx, "acme", Filter{}, nil, 100, "")
	if err != nil || len(evs) != 1 || evs[0].GetEventId() != "new" || next != "" {
		t.Errorf("acme after sweep: got %v, %q, %v, want only the recent event", evs, next, err)
	}
	for _, tenant := range []string{"acme", "zeta"} {
		m, _, err := st.Metrics(ctx, tenant, Filter{}, 0)
		if err != nil || m.GetOpened() != 1 || m.GetSent() < 1 {
			t.Errorf("%s aggregates after sweep: got %v, %v, want the swept events still counted", tenant, m, err)
		}
	}
	if n, err := st.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("second sweep: got %d, %v, want nothing left to remove", n, err)
	}
}

func TestSweepWorksInBoundedBatches(t *testing.T) {
	c := &clock{now: t0}
	st := newStore(t, c)
	// Every Append makes at least one block; more blocks than one sweep
	// transaction takes.
	for i := range sweepBlocks + 5 {
		mustAppend(t, st, "acme", event(fmt.Sprint(i), trackingv1.EventType_EVENT_TYPE_RECEIVED, t0))
	}
	c.Set(t0.Add(40 * 24 * time.Hour))
	n, err := st.Sweep(context.Background())
	if err != nil || n != sweepBlocks+5 {
		t.Errorf("got %d, %v, want %d removed", n, err, sweepBlocks+5)
	}
}

func TestPlanCoversTheRangeExactlyOnce(t *testing.T) {
	day, hour := int64(86400), int64(3600)
	tests := []struct {
		name     string
		from, to int64
		top      int
		want     []scan
	}{
		{"minutes only", 0, 600, 0, []scan{{0, 0, 600}}},
		{"inside one hour", 120, 600, 2, []scan{{0, 120, 600}}},
		{"hour edges", 3000, 2*hour + 120, 1, []scan{{0, 3000, hour}, {1, hour, 2 * hour}, {0, 2 * hour, 2*hour + 120}}},
		{"days in the middle", day - 60, 3*day + hour + 60, 2, []scan{{0, day - 60, day}, {2, day, 3 * day}, {1, 3 * day, 3*day + hour}, {0, 3*day + hour, 3*day + hour + 60}}},
		{"aligned days", 0, 2 * day, 2, []scan{{2, 0, 2 * day}}},
		{"empty", 600, 600, 2, nil},
	}
	for _, tt := range tests {
		if got := plan(tt.from, tt.to, tt.top); fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestMetricsMatchBruteForce checks every filter combination, random
// ranges and every granularity against a count over the events themselves.
func TestMetricsMatchBruteForce(t *testing.T) {
	c := &clock{now: t0}
	st := newStore(t, c)
	rng := rand.New(rand.NewPCG(7, 7))
	var all []*trackingv1.Event
	for b := range 20 {
		var batch []*trackingv1.Event
		for i := range 200 {
			typ := trackingv1.EventType(1 + rng.IntN(7))
			e := event(fmt.Sprintf("%d-%d", b, i), typ, t0.Add(-time.Duration(rng.Int64N(int64(3*24*time.Hour)))))
			e.JourneyId = []string{"j1", "j2", ""}[rng.IntN(3)]
			e.MessageId = []string{"m1", "m2"}[rng.IntN(2)]
			e.AppId = []string{"com.a", "com.b"}[rng.IntN(2)]
			e.Platform = commonv1.Platform(1 + rng.IntN(2))
			e.ProfileId = fmt.Sprintf("p%d", rng.IntN(30))
			batch = append(batch, e)
		}
		mustAppend(t, st, "acme", batch...)
		all = append(all, batch...)
	}
	// A unique open (action) is a profile's earliest open (action tap) of a
	// message by event time (to the nanosecond: no ties here), whichever
	// batch brought it.
	firstOpen := map[string]*trackingv1.Event{}
	for _, e := range all {
		if e.GetType() != trackingv1.EventType_EVENT_TYPE_OPENED && e.GetType() != trackingv1.EventType_EVENT_TYPE_ACTION {
			continue
		}
		k := e.GetType().String() + "\x00" + e.GetJourneyId() + "\x00" + e.GetMessageId() + "\x00" + e.GetProfileId()
		if cur := firstOpen[k]; cur == nil || e.GetEventTime().AsTime().Before(cur.GetEventTime().AsTime()) {
			firstOpen[k] = e
		}
	}
	unique := map[*trackingv1.Event]bool{}
	for _, e := range firstOpen {
		unique[e] = true
	}
	grans := []time.Duration{0, time.Minute, time.Hour, 24 * time.Hour}
	for q := range 100 {
		f := Filter{}
		if rng.IntN(2) == 0 {
			f.JourneyID = []string{"j1", "j2"}[rng.IntN(2)]
		}
		if rng.IntN(2) == 0 {
			f.MessageID = []string{"m1", "m2", "nope"}[rng.IntN(3)]
		}
		if rng.IntN(2) == 0 {
			f.AppID = []string{"com.a", "com.b"}[rng.IntN(2)]
		}
		if rng.IntN(2) == 0 {
			f.Platform = commonv1.Platform(1 + rng.IntN(2))
		}
		if rng.IntN(4) > 0 {
			f.From = t0.Add(-time.Duration(rng.Int64N(int64(4 * 24 * time.Hour))))
		}
		if rng.IntN(4) > 0 {
			f.To = f.From.Add(time.Duration(rng.Int64N(int64(3 * 24 * time.Hour))))
			if f.From.IsZero() {
				f.To = t0.Add(-time.Duration(rng.Int64N(int64(3 * 24 * time.Hour))))
			}
		}
		g := grans[rng.IntN(len(grans))]
		total, buckets, err := st.Metrics(context.Background(), "acme", f, g)
		if err != nil {
			t.Fatal(err)
		}
		// The range is widened to whole minutes.
		from, to := f.From.Truncate(time.Minute), f.To
		if to.IsZero() {
			to = t0.Add(time.Hour)
		}
		if to.Truncate(time.Minute) != to {
			to = to.Truncate(time.Minute).Add(time.Minute)
		}
		want := &trackingv1.Metrics{}
		wantBuckets := map[int64]*trackingv1.Metrics{}
		for _, e := range all {
			at := e.GetEventTime().AsTime()
			if (f.JourneyID != "" && e.GetJourneyId() != f.JourneyID) || (f.MessageID != "" && e.GetMessageId() != f.MessageID) ||
				(f.AppID != "" && e.GetAppId() != f.AppID) || (f.Platform != 0 && e.GetPlatform() != f.Platform) ||
				(!f.From.IsZero() && at.Before(from)) || !at.Before(to) {
				continue
			}
			countProto(want, e, unique[e])
			if g > 0 {
				start := at.Truncate(g).Unix()
				if wantBuckets[start] == nil {
					wantBuckets[start] = &trackingv1.Metrics{}
				}
				countProto(wantBuckets[start], e, unique[e])
			}
		}
		finishProto(want)
		if !proto.Equal(total, want) {
			t.Fatalf("query %d (%+v, %s): total\n got %v\nwant %v", q, f, g, total, want)
		}
		if len(buckets) != len(wantBuckets) {
			t.Fatalf("query %d (%+v, %s): got %d buckets, want %d", q, f, g, len(buckets), len(wantBuckets))
		}
		for i, b := range buckets {
			w := wantBuckets[b.GetStartTime().GetSeconds()]
			if w == nil {
				t.Fatalf("query %d: unexpected bucket %v", q, b.GetStartTime().AsTime())
			}
			finishProto(w)
			if !proto.Equal(b.GetMetrics(), w) {
				t.Fatalf("query %d bucket %v:\n got %v\nwant %v", q, b.GetStartTime().AsTime(), b.GetMetrics(), w)
			}
			if i > 0 && !buckets[i-1].GetStartTime().AsTime().Before(b.GetStartTime().AsTime()) {
				t.Fatalf("query %d: buckets out of order", q)
			}
		}
	}
}

func TestListPagesAcrossBlocksAndBatches(t *testing.T) {
	st := newStore(t, &clock{now: t0})
	var want []string
	for b, n := range []int{eventsPerBlock*2 + 3, 1, eventsPerBlock} {
		var evs []*trackingv1.Event
		for i := range n {
			id := fmt.Sprintf("b%d-%04d", b, i)
			evs = append(evs, event(id, trackingv1.EventType_EVENT_TYPE_RECEIVED, t0))
			want = append(want, id)
		}
		mustAppend(t, st, "acme", evs...)
		mustAppend(t, st, "other", event(fmt.Sprint("x", b), trackingv1.EventType_EVENT_TYPE_RECEIVED, t0))
	}
	for _, size := range []int{1, 7, eventsPerBlock, len(want), len(want) + 1} {
		var got []string
		token := ""
		pages := 0
		for {
			page, next, err := st.List(context.Background(), "acme", Filter{}, nil, size, token)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, e := range page {
				got = append(got, e.GetEventId())
			}
			if token = next; token == "" {
				break
			}
			if pages > len(want)+1 {
				t.Fatal("pagination does not end")
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("page size %d: got %d events, want all %d in stored order", size, len(got), len(want))
		}
		if wantPages := (len(want) + size - 1) / size; pages != wantPages {
			t.Errorf("page size %d: got %d pages, want %d (no empty last page)", size, pages, wantPages)
		}
	}
	if _, _, err := st.List(context.Background(), "acme", Filter{}, nil, 10, "not-hex"); !errors.Is(err, ErrBadPageToken) {
		t.Errorf("bad token: got %v, want ErrBadPageToken", err)
	}
}

// countProto adds one event to m the slow, obvious way, independently of
// tally: the brute-force side of the comparisons.
func countProto(m *trackingv1.Metrics, e *trackingv1.Event, unique bool) {
	switch e.GetType() {
	case trackingv1.EventType_EVENT_TYPE_SENT:
		m.Sent++
		m.Targeted++
	case trackingv1.EventType_EVENT_TYPE_FAILED:
		m.Failed++
		m.Targeted++
		for _, f := range m.FailedByReason {
			if f.Reason == e.GetFailureReason() {
				f.Count++
				return
			}
		}
		m.FailedByReason = append(m.FailedByReason, &commonv1.FailureCount{Reason: e.GetFailureReason(), Count: 1})
	case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
		m.Excluded++
		for _, x := range m.ExcludedByReason {
			if x.Reason == e.GetExclusionReason() {
				x.Count++
				return
			}
		}
		m.ExcludedByReason = append(m.ExcludedByReason, &commonv1.ExclusionCount{Reason: e.GetExclusionReason(), Count: 1})
	case trackingv1.EventType_EVENT_TYPE_RECEIVED:
		m.Received++
	case trackingv1.EventType_EVENT_TYPE_OPENED:
		m.Opened++
		if unique {
			m.UniqueOpens++
		}
	case trackingv1.EventType_EVENT_TYPE_DISMISSED:
		m.Dismissed++
	case trackingv1.EventType_EVENT_TYPE_ACTION:
		m.Actions++
		if unique {
			m.UniqueActions++
		}
		for _, a := range m.ActionsById {
			if a.ActionId == e.GetActionId() {
				a.Count++
				return
			}
		}
		m.ActionsById = append(m.ActionsById, &trackingv1.ActionCount{ActionId: e.GetActionId(), Count: 1})
	}
}

// finishProto sets the rates and orders the breakdowns as the API does.
func finishProto(m *trackingv1.Metrics) {
	if m.Sent > 0 {
		m.OpenRate = float64(min(m.UniqueOpens, m.Sent)) / float64(m.Sent)
		m.ActionRate = float64(min(m.Actions, m.Sent)) / float64(m.Sent)
		m.UniqueActionRate = float64(min(m.UniqueActions, m.Sent)) / float64(m.Sent)
	}
	sort.Slice(m.FailedByReason, func(i, j int) bool { return m.FailedByReason[i].Reason < m.FailedByReason[j].Reason })
	sort.Slice(m.ExcludedByReason, func(i, j int) bool { return m.ExcludedByReason[i].Reason < m.ExcludedByReason[j].Reason })
	sort.Slice(m.ActionsById, func(i, j int) bool { return m.ActionsById[i].ActionId < m.ActionsById[j].ActionId })
}

// waitInflight waits until n appends are committing.
func waitInflight(st *Store, n int) {
	for {
		st.mu.Lock()
		got := len(st.inflight)
		st.mu.Unlock()
		if got == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
}
