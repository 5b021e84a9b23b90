package dedupe

import (
	"context"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
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

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func results(key string) []delivery.Result {
	return []delivery.Result{
		{IdempotencyKey: key, MessageID: "m-" + key, JourneyID: "j", TraceParent: "00-aa-bb-01",
			Target: delivery.Target{Token: "tok1", Platform: commonv1.Platform_PLATFORM_APNS, AppID: "com.x", ProfileID: "p1", APNsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX},
			Status: delivery.StatusSent, GatewayID: "gw-1", Attempts: 2, Time: time.UnixMilli(1_700_000_000_123)},
		{IdempotencyKey: key, MessageID: "m-" + key, JourneyID: "j", TraceParent: "00-aa-bb-01",
			Target: delivery.Target{Token: "tok2", Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.y"},
			Status: delivery.StatusFailed, Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, Detail: "FCM 404 UNREGISTERED",
			Attempts: 1, Time: time.UnixMilli(1_700_000_000_456), GatewayTime: time.UnixMilli(1_699_000_000_000)},
	}
}

func TestRememberAndLookup(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	clk := &clock{now: time.Date(2030, 1, 10, 12, 0, 0, 0, time.UTC)}
	s := Open(db, Config{Now: clk.Now, FlushInterval: time.Hour})
	acme := tenant.With(context.Background(), "acme")
	other := tenant.With(context.Background(), "other")

	s.Remember(acme, "k1", results("k1"))
	got, err := s.Lookup(acme, []string{"k1", "k2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || len(got["k1"]) != 2 {
		t.Fatalf("before flush: got %v, want k1 with 2 results", got)
	}
	if got, _ := s.Lookup(other, []string{"k1"}); len(got) != 0 {
		t.Errorf("another tenant sees k1: %v", got)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	got, err = s.Lookup(acme, []string{"k1"})
	if err != nil {
		t.Fatal(err)
	}
	want := results("k1")
	for i := range want {
		g, w := got["k1"][i], want[i]
		if g.Target != w.Target || g.Status != w.Status || g.GatewayID != w.GatewayID || g.Reason != w.Reason || g.Detail != w.Detail ||
			g.Attempts != w.Attempts || !g.Time.Equal(w.Time) || !g.GatewayTime.Equal(w.GatewayTime) || g.MessageID != w.MessageID ||
			g.JourneyID != w.JourneyID || g.TraceParent != w.TraceParent || g.IdempotencyKey != "k1" {
			t.Errorf("result %d after flush: got %+v, want %+v", i, g, w)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// A restart still knows k1.
	db = openDB(t, dir)
	defer db.Close()
	s = Open(db, Config{Now: clk.Now})
	defer s.Close()
	if got, _ := s.Lookup(acme, []string{"k1"}); len(got["k1"]) != 2 {
		t.Errorf("after restart: got %v, want k1", got)
	}

	// Six days later it is still remembered; after eight it is gone, and
	// the old day bucket with it.
	clk.Add(6 * 24 * time.Hour)
	if got, _ := s.Lookup(acme, []string{"k1"}); len(got["k1"]) != 2 {
		t.Errorf("six days later: got %v, want k1", got)
	}
	clk.Add(2 * 24 * time.Hour)
	s.Remember(acme, "k9", results("k9")) // a flush expires old days
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(acme, []string{"k1"}); len(got) != 0 {
		t.Errorf("eight days later: got %v, want k1 forgotten", got)
	}
	var days []string
	db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(buckets.Dedupe).ForEach(func(k, _ []byte) error { days = append(days, string(k)); return nil })
	})
	if len(days) != 1 || days[0] != "20300118" {
		t.Errorf("day buckets: got %v, want only 20300118", days)
	}
}

func TestCloseFlushes(t *testing.T) {
	dir := t.TempDir()
	db := openDB(t, dir)
	s := Open(db, Config{FlushInterval: time.Hour})
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c"} {
		s.Remember(ctx, k, results(k))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = Open(db, Config{})
	defer s.Close()
	defer db.Close()
	got, err := s.Lookup(ctx, []string{"a", "b", "c", "d"})
	if err != nil || len(got) != 3 {
		t.Errorf("got %d keys (%v), want a, b and c", len(got), err)
	}
}

func TestDecodeRejectsCorruptRecords(t *testing.T) {
	value := encode(results("k"))
	for _, bad := range [][]byte{nil, {9}, value[:len(value)/2]} {
		if _, err := decode("k", bad); err == nil {
			t.Errorf("decode(%x): got nil error, want one", bad)
		}
	}
}
