package journey

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// Stop waits for the runners only until its context ends, and names the
// journeys left: while outcome writes fail, a runner waits for them until
// the recorder is closed for good, after which a second Stop returns.
func TestStopIsBoundedWhileOutcomeWritesFail(t *testing.T) {
	h := newHarness(t)
	const (
		healthy = iota
		failing
		closed
	)
	var disk atomic.Int32
	record := h.recorder.RecordFunc
	h.recorder.RecordFunc = func(ctx context.Context, results []delivery.Result) error {
		switch disk.Load() {
		case failing:
			return errors.New("write deliverysvc.db: bad file descriptor")
		case closed:
			return delivery.ErrRecorderClosed
		}
		return record(ctx, results)
	}
	id := h.publishSlowly(2000, "dead disk")
	disk.Store(failing)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	left := h.m.Stop(ctx)
	cancel()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Stop took %s with a 300ms deadline", took)
	}
	if len(left) != 1 || left[0].ID != id {
		t.Fatalf("Stop left %v, want the journey %s waiting for its outcome writes", left, id)
	}

	disk.Store(closed) // the outboxes close: the writes give up
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if left := h.m.Stop(ctx); len(left) != 0 {
		t.Fatalf("after the recorder closed, Stop left %v", left)
	}
}

// On a healthy recorder Stop returns once every runner has stopped, with
// nothing left, like Close.
func TestStopWaitsForRunners(t *testing.T) {
	h := newHarness(t)
	h.publishSlowly(2000, "healthy")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if left := h.m.Stop(ctx); len(left) != 0 {
		t.Fatalf("Stop left %v", left)
	}
	h.m.mu.Lock()
	n := len(h.m.runners)
	h.m.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d runners still registered", n)
	}
}

// A final state the disk refuses to store is written again until it is
// stored: the journey does not stay RUNNING in the store with no runner.
func TestFinalStateStoredAfterFailedWrites(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 20)...)
	var refused atomic.Int32
	h.store.failCheckpoint = func(j *deliveryv1.Journey) error {
		if j.GetState() == deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED && refused.Load() < 3 {
			refused.Add(1)
			return errors.New("write deliverysvc.db: input/output error")
		}
		return nil
	}
	h.start()
	defer h.stop()
	id := h.publish(journey("final write fails"))
	h.wait(id)
	stored, err := h.store.Get("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if refused.Load() != 3 || stored.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("after %d refused writes the store holds %v, want COMPLETED after 3", refused.Load(), stored.GetState())
	}
	if got := stored.GetProgress().GetProfilesDone(); got != 20 {
		t.Errorf("stored progress: %d profiles done, want 20", got)
	}
}

// Once the service stops, a final state that cannot be stored is left: the
// journey resumes from its last checkpoint on the next start.
func TestFinalWriteGivesUpWhenStopping(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 20)...)
	h.store.failCheckpoint = func(j *deliveryv1.Journey) error {
		if j.GetState() == deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
			return errors.New("write deliverysvc.db: input/output error")
		}
		return nil
	}
	h.start()
	id := h.publish(journey("final write never succeeds"))
	waitUntil(t, 10*time.Second, "all sent", func() bool { return h.pushCount() >= 20 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if left := h.m.Stop(ctx); len(left) != 0 {
		t.Fatalf("Stop left %v, want the runner to give up its final write", left)
	}
	stored, err := h.store.Get("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if stored.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_RUNNING {
		t.Errorf("stored state %v, want RUNNING (resumed on the next start)", stored.GetState())
	}
}
