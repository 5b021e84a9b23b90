// Package testenv runs deliverysvc in-process for tests and benchmarks: the
// real service (server.Start) over loopback gRPC, the APNs and FCM emulators
// sharing one CA, and hand-written fakes of profilesvc and trackingsvc.
package testenv

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// FakeProfiles is a profilesvc with only the RPCs deliverysvc calls; each
// answers with its function field (Unimplemented when nil).
type FakeProfiles struct {
	profilev1.UnimplementedProfileServiceServer
	ListPushTokensFunc      func(ctx context.Context, req *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error)
	ReportTokenFeedbackFunc func(ctx context.Context, req *profilev1.ReportTokenFeedbackRequest) (*profilev1.ReportTokenFeedbackResponse, error)
}

// ListPushTokens implements profilev1.ProfileServiceServer.
func (f *FakeProfiles) ListPushTokens(ctx context.Context, req *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
	if f.ListPushTokensFunc == nil {
		return nil, status.Error(codes.Unimplemented, "ListPushTokens")
	}
	return f.ListPushTokensFunc(ctx, req)
}

// ReportTokenFeedback implements profilev1.ProfileServiceServer.
func (f *FakeProfiles) ReportTokenFeedback(ctx context.Context, req *profilev1.ReportTokenFeedbackRequest) (*profilev1.ReportTokenFeedbackResponse, error) {
	if f.ReportTokenFeedbackFunc == nil {
		return nil, status.Error(codes.Unimplemented, "ReportTokenFeedback")
	}
	return f.ReportTokenFeedbackFunc(ctx, req)
}

// FakeTracking is a trackingsvc with Ingest only, answering through
// IngestFunc (called once per received batch).
type FakeTracking struct {
	trackingv1.UnimplementedTrackingServiceServer
	IngestFunc func(ctx context.Context, events []*trackingv1.Event) error
}

// Ingest implements trackingv1.TrackingServiceServer.
func (f *FakeTracking) Ingest(stream trackingv1.TrackingService_IngestServer) error {
	var accepted int64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&trackingv1.IngestResponse{Accepted: accepted})
		}
		if err != nil {
			return err
		}
		if f.IngestFunc == nil {
			return status.Error(codes.Unimplemented, "Ingest")
		}
		if err := f.IngestFunc(stream.Context(), req.GetEvents()); err != nil {
			return err
		}
		accepted += int64(len(req.GetEvents()))
	}
}

// Events collects tracking events by id, counting repeats, as trackingsvc
// deduplicates them.
type Events struct {
	mu        sync.Mutex
	byID      map[string]*trackingv1.Event
	tenants   map[string]string
	order     []string
	repeats   int
	received  int
	countOnly bool
	down      bool
	changed   chan struct{}
}

// NewEvents returns an empty collector.
func NewEvents() *Events {
	return &Events{byID: make(map[string]*trackingv1.Event), tenants: make(map[string]string), changed: make(chan struct{})}
}

// NewEventCounter returns a collector that only counts what it receives and
// keeps no event, for benchmarks: a million retained events make the
// process's garbage collector a visible part of what is measured, which the
// real trackingsvc (events on disk) does not cost its neighbours.
func NewEventCounter() *Events {
	e := NewEvents()
	e.countOnly = true
	return e
}

// Received counts the events received, repeats included.
func (e *Events) Received() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.received
}

// SetDown makes Ingest fail with Unavailable while down.
func (e *Events) SetDown(down bool) {
	e.mu.Lock()
	e.down = down
	e.mu.Unlock()
}

// Ingest is a FakeTracking.IngestFunc.
func (e *Events) Ingest(ctx context.Context, events []*trackingv1.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.down {
		return status.Error(codes.Unavailable, "trackingsvc is down (fake)")
	}
	e.received += len(events)
	for _, ev := range events {
		if e.countOnly {
			break // a counter keeps nothing
		}
		if _, ok := e.byID[ev.GetEventId()]; ok {
			e.repeats++
			continue
		}
		e.byID[ev.GetEventId()] = ev
		e.tenants[ev.GetEventId()] = tenant.FromContext(ctx)
		e.order = append(e.order, ev.GetEventId())
	}
	close(e.changed)
	e.changed = make(chan struct{})
	return nil
}

// All returns the distinct events in arrival order.
func (e *Events) All() []*trackingv1.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*trackingv1.Event, len(e.order))
	for i, id := range e.order {
		out[i] = e.byID[id]
	}
	return out
}

// Tenant returns the tenant an event arrived for.
func (e *Events) Tenant(id string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tenants[id]
}

// Repeats counts events received again with an id already seen.
func (e *Events) Repeats() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.repeats
}

// WaitFor blocks until at least n distinct events arrived (for a counter:
// n events) or ctx ends.
func (e *Events) WaitFor(ctx context.Context, n int) error {
	for {
		e.mu.Lock()
		have, changed := len(e.order), e.changed
		if e.countOnly {
			have = e.received
		}
		e.mu.Unlock()
		if have >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Feedback collects ReportTokenFeedback calls.
type Feedback struct {
	mu      sync.Mutex
	got     []*profilev1.TokenFeedback
	changed chan struct{}
}

// NewFeedback returns an empty collector.
func NewFeedback() *Feedback { return &Feedback{changed: make(chan struct{})} }

// Report is a FakeProfiles.ReportTokenFeedbackFunc.
func (f *Feedback) Report(_ context.Context, req *profilev1.ReportTokenFeedbackRequest) (*profilev1.ReportTokenFeedbackResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.got = append(f.got, req.GetFeedback()...)
	close(f.changed)
	f.changed = make(chan struct{})
	return &profilev1.ReportTokenFeedbackResponse{Deactivated: int32(len(req.GetFeedback()))}, nil
}

// All returns the verdicts received.
func (f *Feedback) All() []*profilev1.TokenFeedback {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*profilev1.TokenFeedback(nil), f.got...)
}

// WaitFor blocks until at least n verdicts arrived or ctx ends.
func (f *Feedback) WaitFor(ctx context.Context, n int) error {
	for {
		f.mu.Lock()
		have, changed := len(f.got), f.changed
		f.mu.Unlock()
		if have >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
