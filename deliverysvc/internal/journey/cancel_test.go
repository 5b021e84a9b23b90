package journey

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// stored is a journey as Publish stores it, with its compiled content.
func stored(t *testing.T, j *deliveryv1.Journey) (*deliveryv1.Journey, *Content) {
	t.Helper()
	content, err := Compile(j)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	j.JourneyId, j.MessageId = newID(now), "msg_"+t.Name()
	j.State, j.Progress = deliveryv1.JourneyState_JOURNEY_STATE_RUNNING, &deliveryv1.JourneyProgress{}
	j.CreateTime, j.UpdateTime = timestamppb.New(now), timestamppb.New(now)
	return j, content
}

// A cancel that lands between Publish's store.Create and the runner's
// start finds no runner and stores CANCELLED; the runner, started after it
// with the journey as published, stops at its first checkpoint: nothing
// is streamed or sent and the journey stays CANCELLED.
func TestCancelBetweenCreateAndStartSendsNothing(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 20)...)
	h.start()
	j, content := stored(t, journey("cancelled before its runner starts"))
	if _, _, err := h.store.Create("acme", j, ""); err != nil {
		t.Fatal(err)
	}
	answer, err := h.m.Cancel(testCtx, j.GetJourneyId())
	if err != nil || answer.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Fatalf("cancel: got %v, %v; want CANCELLED", answer.GetState(), err)
	}
	h.m.start(Ref{Tenant: "acme", ID: j.GetJourneyId()}, j, content, trace.SpanContext{})
	got := h.wait(j.GetJourneyId())

	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("state: got %v, want CANCELLED", got.GetState())
	}
	if n := h.pushCount(); n != 0 {
		t.Errorf("got %d pushes, want none", n)
	}
	h.mu.Lock()
	queries := len(h.queries)
	h.mu.Unlock()
	if queries != 0 {
		t.Errorf("the runner queried the audience %d times, want never (it stops before streaming)", queries)
	}
	if refs, err := h.store.Unfinished(); err != nil || len(refs) != 0 {
		t.Errorf("unfinished after the cancel: %v %v, want none", refs, err)
	}
}

// When the runner is slow to drain (a gateway that does not answer), Cancel
// answers after cancelWait, before the runner's final checkpoint; the
// cancel is stored by then: GetJourney and the store say CANCELLED, and a
// restart from the bbolt file as it is at that moment (a kill -9) does not
// resume the journey. Nothing is pushed after Cancel returned.
func TestCancelIsDurableWhileTheRunnerDrains(t *testing.T) {
	h := newHarness(t)
	const n = 200
	h.setMembers(population(t, n)...)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the harness stops the manager
	inner := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
		out := inner(ctx, pushes)
		<-release // ignores ctx: the runner cannot drain until released
		return out
	}
	h.start()
	id := h.publish(journey("slow to drain"))
	ref := Ref{Tenant: "acme", ID: id}
	r := h.m.runner(ref)
	if r == nil {
		t.Fatal("no runner after publish")
	}
	waitUntil(t, 10*time.Second, "a push in flight", func() bool { return h.pushCount() > 0 })

	answer, err := h.m.Cancel(testCtx, id)
	if err != nil {
		t.Fatal(err)
	}
	atCancel := h.pushCount()
	select {
	case <-r.done():
		t.Fatal("the runner ended within cancelWait: the test proves nothing")
	default:
	}
	if answer.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("Cancel answered %v, want CANCELLED", answer.GetState())
	}
	if got, err := h.m.Get(testCtx, id); err != nil || got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("GetJourney while draining: got %v, %v; want CANCELLED, as Cancel answered", got.GetState(), err)
	}
	if js, _, err := h.m.List(testCtx, 0, "", nil); err != nil || len(js) != 1 || js[0].GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("ListJourneys while draining: got %v, %v; want it CANCELLED", js, err)
	}
	if got, err := h.store.Get("acme", id); err != nil || got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED || got.GetProgress().GetEndTime() == nil {
		t.Errorf("stored while draining: got %v (end %v), %v; want CANCELLED with an end time", got.GetState(), got.GetProgress().GetEndTime(), err)
	}
	if _, err := h.m.Cancel(testCtx, id); !errors.Is(err, ErrFinished) {
		t.Errorf("second cancel while draining: got %v, want ErrFinished", err)
	}

	// kill -9 now: the restarted service finds the journey CANCELLED and
	// does not resume it.
	crashed := h.crashCopy()
	crashed.start()
	if crashed.m.runner(ref) != nil {
		t.Error("the restart resumed the cancelled journey")
	}
	if got, err := crashed.m.Get(testCtx, id); err != nil || got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("after the restart: got %v, %v; want CANCELLED", got.GetState(), err)
	}
	crashed.stop()
	if n := crashed.pushCount(); n != 0 {
		t.Errorf("the restarted service pushed %d times, want none", n)
	}

	// The runner drains and stores the final counts; still CANCELLED.
	unblock()
	final := h.wait(id)
	if final.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("after the drain: got %v, want CANCELLED", final.GetState())
	}
	if got := h.pushCount(); got != atCancel {
		t.Errorf("%d pushes started after Cancel returned", got-atCancel)
	}
	if final.GetProgress().GetSent() != int64(atCancel) {
		t.Errorf("final counts: sent %d, want the %d pushes that were in flight", final.GetProgress().GetSent(), atCancel)
	}
}

// A cancel stored while the runner runs (CancelJourney found no runner
// yet, and the runner got past its first checkpoint) stops the runner at
// its next checkpoint: the store refuses to replace CANCELLED.
func TestRunnerStopsWhenItsJourneyIsCancelledInTheStore(t *testing.T) {
	h := newHarness(t)
	const n = 5000
	id := h.publishHeld(n, "cancelled behind the runner's back")
	j, err := h.store.Get("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	j.State = deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED
	if err := h.store.Checkpoint("acme", j, ""); err != nil {
		t.Fatal(err)
	}
	got := h.wait(id)
	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("state: got %v (%s), want CANCELLED", got.GetState(), got.GetError())
	}
	if h.pushCount() >= n {
		t.Error("the journey sent to everyone after it was cancelled")
	}
}

// A final state is sticky in the store: a completed journey cannot be
// turned into a cancelled one (nor back into a running one); the same
// final state can be written again.
func TestFinalStateIsSticky(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 3)...)
	h.start()
	id := h.publish(journey("done"))
	if got := h.wait(id); got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("state: got %v, want COMPLETED", got.GetState())
	}
	if _, err := h.m.Cancel(testCtx, id); !errors.Is(err, ErrFinished) {
		t.Errorf("Cancel of a completed journey: got %v, want ErrFinished", err)
	}
	// A cancel that read the journey just before it completed.
	j, err := h.store.Get("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []deliveryv1.JourneyState{deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING} {
		j.State = s
		if err := h.store.Checkpoint("acme", j, "p999999"); !errors.Is(err, ErrFinished) {
			t.Errorf("checkpoint %v over COMPLETED: got %v, want ErrFinished", s, err)
		}
	}
	j.State = deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED
	if err := h.store.Checkpoint("acme", j, ""); err != nil {
		t.Errorf("checkpoint COMPLETED again: %v", err)
	}
	if got, _ := h.store.Get("acme", id); got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED || got.GetProgress().GetSent() != 3 {
		t.Errorf("stored: got %v with %d sent, want COMPLETED with 3", got.GetState(), got.GetProgress().GetSent())
	}
	if cursor, _ := h.store.Cursor("acme", id); cursor != "p000002" {
		t.Errorf("cursor: got %q, want p000002 (a refused checkpoint writes nothing)", cursor)
	}
}
