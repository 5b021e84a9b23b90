// Package grpcapi is trackingsvc's gRPC adapter: it converts requests to the
// domain's calls and maps every error to a status in one place (errors.go).
package grpcapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/events"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
)

// Request limits.
const (
	maxTrackEvents   = 1000
	maxIngestEvents  = 10_000
	maxListPageSize  = 10_000
	defaultPageSize  = 100
	maxRejectedShown = 100
	// ingestCommitEvents is how many events an Ingest stream gathers before
	// one transaction: bigger batches make bbolt's sorted inserts cheaper.
	ingestCommitEvents = 20_000
)

// Server implements TrackingService.
type Server struct {
	trackingv1.UnimplementedTrackingServiceServer
	Ingester *events.Ingester
	Store    *store.Store
	Log      *slog.Logger
}

// Track stores a few events.
func (s *Server) Track(ctx context.Context, req *trackingv1.TrackRequest) (*trackingv1.TrackResponse, error) {
	out, err := s.track(ctx, req)
	return out, s.status(ctx, err)
}

func (s *Server) track(ctx context.Context, req *trackingv1.TrackRequest) (*trackingv1.TrackResponse, error) {
	if n := len(req.GetEvents()); n == 0 || n > maxTrackEvents {
		return nil, fault.Invalid("events", "want 1 to %d events, got %d (use Ingest for volume)", maxTrackEvents, n)
	}
	o, err := s.Ingester.Ingest(ctx, tenant.FromContext(ctx), req.GetEvents(), 0)
	if err != nil {
		return nil, err
	}
	return &trackingv1.TrackResponse{Accepted: o.Accepted, Duplicates: o.Duplicates, Rejected: rejections(o.Rejected, len(o.Rejected))}, nil
}

// Ingest stores a stream of batches, committing every ingestCommitEvents.
func (s *Server) Ingest(stream trackingv1.TrackingService_IngestServer) error {
	ctx := stream.Context()
	return s.status(ctx, s.ingest(ctx, stream))
}

// ingest receives the stream while a committer goroutine stores what was
// received before: decoding the next events overlaps the disk commit of the
// previous ones. At most two gathered batches wait, which bounds memory and
// pushes back on the client through gRPC flow control.
func (s *Server) ingest(ctx context.Context, stream trackingv1.TrackingService_IngestServer) error {
	t := tenant.FromContext(ctx)
	type batch struct {
		events []*trackingv1.Event
		base   int64 // stream index of events[0]
	}
	resp := &trackingv1.IngestResponse{}
	work := make(chan batch, 1)
	committed := make(chan error, 1)
	var failed atomic.Bool
	go func() {
		var err error
		for b := range work {
			if err != nil {
				continue // drain; the stream is failing
			}
			var o events.Outcome
			if o, err = s.Ingester.Ingest(ctx, t, b.events, b.base); err != nil {
				failed.Store(true)
				continue
			}
			resp.Accepted += o.Accepted
			resp.Duplicates += o.Duplicates
			resp.RejectedCount += int64(len(o.Rejected))
			resp.Rejected = append(resp.Rejected, rejections(o.Rejected, maxRejectedShown-len(resp.Rejected))...)
		}
		committed <- err
	}()

	recvErr := func() error {
		defer close(work)
		var pending []*trackingv1.Event
		var seen int64
		for !failed.Load() {
			req, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if n := len(req.GetEvents()); n > maxIngestEvents {
				return fault.Invalid("events", "at most %d events per message, got %d", maxIngestEvents, n)
			}
			pending = append(pending, req.GetEvents()...)
			seen += int64(len(req.GetEvents()))
			if len(pending) >= ingestCommitEvents {
				work <- batch{pending, seen - int64(len(pending))}
				pending = nil
			}
		}
		if len(pending) > 0 {
			work <- batch{pending, seen - int64(len(pending))}
		}
		return nil
	}()
	// Batches received before a failure are stored (or fail) either way:
	// wait for the committer so nothing runs after the RPC returns.
	if err := errors.Join(recvErr, <-committed); err != nil {
		return err
	}
	return stream.SendAndClose(resp)
}

func rejections(rs []events.Rejection, room int) []*trackingv1.EventRejection {
	if room <= 0 {
		return nil
	}
	out := make([]*trackingv1.EventRejection, 0, min(room, len(rs)))
	for _, r := range rs[:min(room, len(rs))] {
		out = append(out, &trackingv1.EventRejection{Index: r.Index, EventId: r.EventID, Field: r.Field, Reason: r.Reason})
	}
	return out
}

// GetMetrics answers from the aggregates.
func (s *Server) GetMetrics(ctx context.Context, req *trackingv1.GetMetricsRequest) (*trackingv1.GetMetricsResponse, error) {
	out, err := s.getMetrics(ctx, req)
	return out, s.status(ctx, err)
}

func (s *Server) getMetrics(ctx context.Context, req *trackingv1.GetMetricsRequest) (*trackingv1.GetMetricsResponse, error) {
	f, err := filter(req.GetFilter(), req.GetStartTime(), req.GetEndTime())
	if err != nil {
		return nil, err
	}
	var width time.Duration
	switch req.GetGranularity() {
	case trackingv1.Granularity_GRANULARITY_UNSPECIFIED:
	case trackingv1.Granularity_GRANULARITY_MINUTE:
		width = time.Minute
	case trackingv1.Granularity_GRANULARITY_HOUR:
		width = time.Hour
	case trackingv1.Granularity_GRANULARITY_DAY:
		width = 24 * time.Hour
	default:
		return nil, fault.Invalid("granularity", "unknown granularity %d", req.GetGranularity())
	}
	total, buckets, err := s.Store.Metrics(ctx, tenant.FromContext(ctx), f, width)
	if err != nil {
		return nil, err
	}
	return &trackingv1.GetMetricsResponse{Total: total, Buckets: buckets}, nil
}

// ListEvents pages through stored events.
func (s *Server) ListEvents(ctx context.Context, req *trackingv1.ListEventsRequest) (*trackingv1.ListEventsResponse, error) {
	out, err := s.listEvents(ctx, req)
	return out, s.status(ctx, err)
}

func (s *Server) listEvents(ctx context.Context, req *trackingv1.ListEventsRequest) (*trackingv1.ListEventsResponse, error) {
	f, err := filter(req.GetFilter(), req.GetStartTime(), req.GetEndTime())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0 || size > maxListPageSize:
		return nil, fault.Invalid("page_size", "must be 0 to %d, got %d", maxListPageSize, size)
	case size == 0:
		size = defaultPageSize
	}
	for i, t := range req.GetTypes() {
		if t == trackingv1.EventType_EVENT_TYPE_UNSPECIFIED || trackingv1.EventType_name[int32(t)] == "" {
			return nil, fault.Invalid("types["+itoa(i)+"]", "unknown event type %d", t)
		}
	}
	evs, next, err := s.Store.List(ctx, tenant.FromContext(ctx), f, req.GetTypes(), size, req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &trackingv1.ListEventsResponse{Events: evs, NextPageToken: next}, nil
}
