package events

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
)

var tracer = otel.Tracer("github.com/pushmesh/pushmesh/trackingsvc/internal/events")

// Appender stores prepared events; *store.Store is the real one.
type Appender interface {
	Append(ctx context.Context, tenant string, evs []*trackingv1.Event) (store.AppendResult, error)
}

// Ingester validates and stores batches of events.
type Ingester struct {
	Store Appender
	// Retention rejects events whose event time is older than this. It
	// must not exceed the store's Options.Retention: the store remembers an
	// event's id (in memory for the dedupe window, then on disk) until that
	// long after the event time, so an event older than it could be a copy
	// of one whose id is forgotten, and would be counted twice.
	Retention time.Duration
	Now       func() time.Time
	// Metrics counts ingested, duplicate and rejected events; nil counts
	// nothing.
	Metrics *Metrics
}

// Outcome is what one batch did.
type Outcome struct {
	Accepted, Duplicates int64
	Rejected             []Rejection
}

// Ingest validates evs (indexes in rejections start at base), stores the
// good ones durably in one transaction, and links each stored OPENED event
// with a traceparent to the span of the send it answers. The good events are
// rewritten in place to their stored form (see Prepare).
func (in *Ingester) Ingest(ctx context.Context, tenant string, evs []*trackingv1.Event, base int64) (Outcome, error) {
	now := in.Now()
	var out Outcome
	good := make([]*trackingv1.Event, 0, len(evs))
	for i, e := range evs {
		field, reason := Check(e, now)
		if field == "" && in.Retention > 0 && e.GetEventTime().AsTime().Before(now.Add(-in.Retention)) {
			field, reason = "event_time", "older than the retention window ("+in.Retention.String()+")"
		}
		if field != "" {
			out.Rejected = append(out.Rejected, Rejection{Index: base + int64(i), EventID: e.GetEventId(), Field: field, Reason: reason})
			continue
		}
		Prepare(e)
		good = append(good, e)
	}
	res, err := in.Store.Append(ctx, tenant, good)
	if err != nil {
		return Outcome{}, err
	}
	out.Accepted, out.Duplicates = int64(res.Accepted), int64(res.Duplicates)
	in.Metrics.batch(ctx, good, res.New, res.Duplicates, out.Rejected)
	for i, e := range good {
		if res.New[i] && e.GetType() == trackingv1.EventType_EVENT_TYPE_OPENED && e.GetTraceparent() != "" {
			linkOpen(ctx, e)
		}
	}
	return out, nil
}

// linkOpen records a span for an open, linked to the send span named by the
// event's traceparent, so a trace viewer jumps from the send to the open.
func linkOpen(ctx context.Context, e *trackingv1.Event) {
	carrier := propagation.MapCarrier{"traceparent": e.GetTraceparent()}
	sendCtx := propagation.TraceContext{}.Extract(context.Background(), carrier)
	send := trace.SpanContextFromContext(sendCtx)
	if !send.IsValid() {
		return
	}
	_, span := tracer.Start(ctx, "notification.opened",
		trace.WithLinks(trace.Link{SpanContext: send}),
		trace.WithTimestamp(e.GetEventTime().AsTime()),
		trace.WithAttributes(
			attribute.String("pushmesh.journey_id", e.GetJourneyId()),
			attribute.String("pushmesh.message_id", e.GetMessageId()),
			attribute.String("pushmesh.event_id", e.GetEventId()),
		))
	span.End()
}
