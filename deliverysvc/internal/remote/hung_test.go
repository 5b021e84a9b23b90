package remote

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/outbox"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// hungTracking takes every Ingest stream to its end and then does not
// answer until answering is switched on (or the caller gives up).
type hungTracking struct {
	trackingv1.UnimplementedTrackingServiceServer
	answer  atomic.Bool
	streams atomic.Int64
	mu      sync.Mutex
	events  int
}

func (f *hungTracking) Ingest(stream grpc.ClientStreamingServer[trackingv1.IngestRequest, trackingv1.IngestResponse]) error {
	f.streams.Add(1)
	reqs, err := recvAll(stream)
	if err != nil {
		return err
	}
	var n int
	for _, req := range reqs {
		n += len(req.GetEvents())
	}
	for !f.answer.Load() {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	f.mu.Lock()
	f.events += n
	f.mu.Unlock()
	return stream.SendAndClose(&trackingv1.IngestResponse{Accepted: int64(n)})
}

func (f *hungTracking) received() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.events
}

// A trackingsvc that accepts the Ingest stream and never answers does not
// stall the outbox: each batch times out, is logged and retried, and the
// events arrive once the peer answers.
func TestForwardingTimesOutOnAHungTrackingsvc(t *testing.T) {
	fake := &hungTracking{}
	conn := grpctest.Start(t, func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, fake) })
	var logs logtest.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	db, err := boltdb.Open(t.TempDir(), "test.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := buckets.Create(db); err != nil {
		t.Fatal(err)
	}
	box := outbox.New(db, buckets.TrackingOutbox, Ingest(trackingv1.NewTrackingServiceClient(conn), log), outbox.Config{
		Name: "tracking", Logger: log, DeliverTimeout: 150 * time.Millisecond,
		RetryInitial: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond, Interval: time.Millisecond, CommitLinger: time.Millisecond,
	})
	box.Start()
	defer box.Close()

	rec := &Tracking{Outbox: box}
	if err := rec.Record(tenant.With(context.Background(), "t1"), []delivery.Result{sentResult(1), sentResult(2), sentResult(3)}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "three timed-out Ingest calls", func() bool { return fake.streams.Load() >= 3 })
	if got := fake.received(); got != 0 {
		t.Fatalf("received %d events before answering", got)
	}
	if l := logs.String(); !strings.Contains(l, "forwarding failed") || !strings.Contains(l, "no answer within 150ms") {
		t.Fatalf("the timeout was not logged; logs:\n%s", l)
	}
	if n, _ := box.Len(); n != 3 {
		t.Fatalf("outbox holds %d records while the peer hangs, want 3", n)
	}

	fake.answer.Store(true)
	waitUntil(t, 10*time.Second, "the events delivered", func() bool { n, _ := box.Len(); return fake.received() >= 3 && n == 0 })
	waitUntil(t, 5*time.Second, "forwarding resumed logged", func() bool { return strings.Contains(logs.String(), "forwarding resumed") })
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
