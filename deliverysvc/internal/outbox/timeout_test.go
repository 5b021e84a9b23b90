package outbox

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
)

// A Deliver that never answers is cut off at DeliverTimeout: the failure is
// logged, retried with backoff, and the records go once the remote answers.
func TestDeliverTimeout(t *testing.T) {
	db := openDB(t, t.TempDir())
	defer db.Close()
	var hung atomic.Bool
	hung.Store(true)
	var calls atomic.Int64
	r := newRemote()
	deliver := func(ctx context.Context, tenantID string, records [][]byte) error {
		calls.Add(1)
		if hung.Load() {
			<-ctx.Done() // a peer that took the batch and never answers
			return ctx.Err()
		}
		return r.deliver(ctx, tenantID, records)
	}
	var logs logtest.Buffer
	cfg := fastConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	cfg.DeliverTimeout = 50 * time.Millisecond
	o := New(db, buckets.TrackingOutbox, deliver, cfg)
	o.Start()
	defer o.Close()
	if err := o.Append(context.Background(), [][]byte{[]byte("a"), []byte("b")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "timed-out attempts", func() bool { return calls.Load() >= 3 })
	if l := logs.String(); !strings.Contains(l, "forwarding failed") || !strings.Contains(l, "no answer within 50ms") {
		t.Fatalf("the timeout was not logged:\n%s", l)
	}
	hung.Store(false)
	waitFor(t, "delivery once the remote answers", func() bool { return r.count() == 2 })
	waitFor(t, "an empty outbox", func() bool { n, _ := o.Len(); return n == 0 })
}
