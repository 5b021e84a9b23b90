package events

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/instruments"
)

// meterName is the instrumentation scope of trackingsvc's instruments.
const meterName = "github.com/pushmesh/pushmesh/trackingsvc"

// Attribute keys: the event type and, for a rejection, the field at fault
// (a fixed set of field names; the reason's words vary and are left out).
// Never an event, profile, journey or message id, a token, the tenant or
// the app id (README.md, "Metrics").
const (
	keyEventType = attribute.Key("pushmesh.event.type")
	keyField     = attribute.Key("pushmesh.field")
)

// Metrics are trackingsvc's instruments; a nil *Metrics records nothing.
type Metrics struct {
	ingested   metric.Int64Counter
	rejected   metric.Int64Counter
	duplicates metric.Int64Counter
	// byType holds the ingested counter's attribute set per event type,
	// built once: ingest runs at hundreds of thousands of events a second.
	byType map[trackingv1.EventType][]metric.AddOption
}

// NewMetrics makes the instruments from mp (otel.GetMeterProvider() in the
// service).
func NewMetrics(mp metric.MeterProvider) (*Metrics, error) {
	in := instruments.New(mp, meterName)
	m := &Metrics{byType: make(map[trackingv1.EventType][]metric.AddOption)}
	m.ingested = in.Counter("pushmesh.events.ingested", "{event}",
		"Events stored (new event ids), by type: send outcomes from deliverysvc, engagement from apps.")
	m.rejected = in.Counter("pushmesh.events.rejected", "{event}",
		"Events refused by validation, by the field at fault.")
	m.duplicates = in.Counter("pushmesh.events.duplicates", "{event}",
		"Events whose id was already stored: retries and resends, not counted again.")
	for v, name := range trackingv1.EventType_name {
		m.byType[trackingv1.EventType(v)] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(
			keyEventType.String(strings.ToLower(strings.TrimPrefix(name, "EVENT_TYPE_")))))}
	}
	return m, in.Err
}

// batch counts what one Ingest did: the stored events of good (new[i]) by
// type, the duplicates, and the rejections by field.
func (m *Metrics) batch(ctx context.Context, good []*trackingv1.Event, stored []bool, duplicates int, rejected []Rejection) {
	if m == nil {
		return
	}
	// One Add per type present, not per event.
	var perType [trackingv1.EventType_EVENT_TYPE_ACTION + 1]int64 // by EventType; Check refuses unknown ones
	for i, e := range good {
		if i < len(stored) && stored[i] && int(e.GetType()) < len(perType) {
			perType[e.GetType()]++
		}
	}
	for t, n := range perType {
		if n > 0 {
			m.ingested.Add(ctx, n, m.byType[trackingv1.EventType(t)]...)
		}
	}
	if duplicates > 0 {
		m.duplicates.Add(ctx, int64(duplicates))
	}
	for _, r := range rejected {
		m.rejected.Add(ctx, 1, metric.WithAttributes(keyField.String(r.Field)))
	}
}
