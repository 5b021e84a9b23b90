package gateway

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// sharedDeadline bounds gateway requests without a timer per request. It
// hands out one context per slice of time, ending RequestTimeout plus at most
// one slice after the moment it is asked for, and every request of that
// slice runs under it. context.WithDeadline per push (a timer, a
// registration with the caller's context, a cancel) was about 3 % of
// deliverysvc's CPU at 10,000 pushes/s; one context per slice costs nothing
// measurable.
//
// A request under a shared context is not cancelled by its caller: once a
// push is on the wire it runs until the gateway answers or the deadline
// passes, so its outcome is known rather than guessed. Callers still stop
// waiting for a free slot when their context ends.
type sharedDeadline struct {
	timeout, slice time.Duration
	cur            atomic.Pointer[sliceContext]
	mu             sync.Mutex // serializes making the next slice's context
}

type sliceContext struct {
	ctx      context.Context
	deadline time.Time
	// cancel is never called: the context ends at its deadline, when its
	// own timer releases it, and requests may still be using it until then.
	cancel context.CancelFunc
}

func newSharedDeadline(timeout time.Duration) *sharedDeadline {
	return &sharedDeadline{timeout: timeout, slice: min(max(timeout/10, time.Millisecond), time.Second)}
}

// get returns a context whose deadline is between timeout and timeout+slice
// after now, and that deadline.
func (d *sharedDeadline) get(now time.Time) (context.Context, time.Time) {
	earliest := now.Add(d.timeout)
	if c := d.cur.Load(); c != nil && !c.deadline.Before(earliest) {
		return c.ctx, c.deadline
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.cur.Load(); c != nil && !c.deadline.Before(earliest) {
		return c.ctx, c.deadline
	}
	c := &sliceContext{deadline: earliest.Add(d.slice)}
	c.ctx, c.cancel = context.WithDeadline(context.Background(), c.deadline)
	d.cur.Store(c)
	return c.ctx, c.deadline
}
