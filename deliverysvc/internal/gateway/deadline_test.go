package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/emulator/apns"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
)

func TestSharedDeadlineSlices(t *testing.T) {
	d := newSharedDeadline(10 * time.Second) // slices of 1 s
	now := time.Now()
	ctx, deadline := d.get(now)
	if deadline.Before(now.Add(10*time.Second)) || deadline.After(now.Add(11*time.Second)) {
		t.Fatalf("deadline %v after now, want between 10 s and 11 s", deadline.Sub(now))
	}
	if got, ok := ctx.Deadline(); !ok || !got.Equal(deadline) {
		t.Fatalf("context deadline %v %v, want %v", got, ok, deadline)
	}
	// Within the slice: the same context.
	if again, _ := d.get(now.Add(500 * time.Millisecond)); again != ctx {
		t.Error("a request within the slice got a new context")
	}
	// Past the slice: a new one, again at least the timeout away.
	later := now.Add(1500 * time.Millisecond)
	next, nextDeadline := d.get(later)
	if next == ctx || nextDeadline.Before(later.Add(10*time.Second)) {
		t.Errorf("after the slice: same context %v, deadline %v after the request, want a new one at least 10 s away", next == ctx, nextDeadline.Sub(later))
	}
}

func TestSharedDeadlineEnds(t *testing.T) {
	d := newSharedDeadline(20 * time.Millisecond)
	ctx, _ := d.get(time.Now())
	select {
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Errorf("ended with %v, want DeadlineExceeded", ctx.Err())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the shared context never ended")
	}
}

// An APNs request the gateway never answers is cut off by RequestTimeout.
func TestAPNsRequestTimeout(t *testing.T) {
	e := start(t)
	s := e.openWithTimeout(t, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID), 200*time.Millisecond)
	if err := e.apns.SetFaults(apns.Faults{Latency: time.Minute}); err != nil {
		t.Fatal(err)
	}
	defer e.apns.SetFaults(apns.Faults{})
	start := time.Now()
	a := s.Send(context.Background(), []delivery.Push{apnsPush(strings.Repeat("3", 64))})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_NETWORK {
		t.Errorf("unanswered push: got %v %q, want NETWORK", a.Reason, a.Detail)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("the push waited %v for a gateway that does not answer", waited)
	}
}

// A push already on the wire is not abandoned when its caller goes away: the
// gateway's answer is what the caller gets, so the outcome is known.
func TestAPNsPushOutlivesItsCaller(t *testing.T) {
	e := start(t)
	s := openSender(t, e.gw, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID))
	if err := e.apns.SetFaults(apns.Faults{Latency: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	defer e.apns.SetFaults(apns.Faults{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	token := strings.Repeat("4", 64)
	a := s.Send(ctx, []delivery.Push{apnsPush(token)})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED || a.GatewayID == "" {
		t.Errorf("got %v %q, want the gateway's acceptance", a.Reason, a.Detail)
	}
	if got := e.apns.ReceivedFor(token); len(got) != 1 {
		t.Errorf("emulator received %d pushes, want 1", len(got))
	}
}

// BenchmarkRequestDeadline compares what bounding one request costs: the
// shared slice context against a deadline of its own under a cancellable
// parent (a timer, a registration with the parent, a done channel, a
// cancel). Both ask for Done, as the HTTP/2 client does.
func BenchmarkRequestDeadline(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.Run("shared", func(b *testing.B) {
		d := newSharedDeadline(30 * time.Second)
		for b.Loop() {
			ctx, _ := d.get(time.Now())
			if ctx.Done() == nil {
				b.Fatal("no done channel")
			}
		}
	})
	b.Run("own", func(b *testing.B) {
		for b.Loop() {
			ctx, cancel := context.WithDeadline(parent, time.Now().Add(30*time.Second))
			if ctx.Done() == nil {
				b.Fatal("no done channel")
			}
			cancel()
		}
	})
}
