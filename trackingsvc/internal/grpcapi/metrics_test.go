package grpcapi_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/metrictest"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/events"
)

// Stored events are counted by type, repeats as duplicates, refused ones by
// the field at fault; through Track and Ingest alike.
func TestMetricsIngestRejectAndDuplicates(t *testing.T) {
	mp, reader := metrictest.New(t)
	m, err := events.NewMetrics(mp)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvMetered(t, m)
	ctx := context.Background()
	noType := ev("bad-type", trackingv1.EventType_EVENT_TYPE_UNSPECIFIED, now)
	tooOld := ev("old", trackingv1.EventType_EVENT_TYPE_OPENED, now.Add(-40*24*time.Hour))
	batch := []*trackingv1.Event{
		ev("s1", trackingv1.EventType_EVENT_TYPE_SENT, now),
		ev("s2", trackingv1.EventType_EVENT_TYPE_SENT, now),
		ev("o1", trackingv1.EventType_EVENT_TYPE_OPENED, now),
		ev("o1", trackingv1.EventType_EVENT_TYPE_OPENED, now), // repeated
		noType, tooOld,
	}
	if _, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: batch}); err != nil {
		t.Fatal(err)
	}
	// The same batch again through Ingest, as a retry would: all repeats.
	if _, err := ingestStream(ctx, e.client, batch); err != nil {
		t.Fatal(err)
	}
	eventType := func(s string) attribute.KeyValue { return attribute.String("pushmesh.event.type", s) }
	field := func(s string) attribute.KeyValue { return attribute.String("pushmesh.field", s) }
	for _, c := range []struct {
		name  string
		attrs []attribute.KeyValue
		want  int64
	}{
		{"pushmesh.events.ingested", []attribute.KeyValue{eventType("sent")}, 2},
		{"pushmesh.events.ingested", []attribute.KeyValue{eventType("opened")}, 1},
		{"pushmesh.events.ingested", nil, 3},
		{"pushmesh.events.duplicates", nil, 1 + 4},
		{"pushmesh.events.rejected", []attribute.KeyValue{field("type")}, 2},
		{"pushmesh.events.rejected", []attribute.KeyValue{field("event_time")}, 2},
	} {
		if got := reader.Value(c.name, c.attrs...); got != c.want {
			t.Errorf("%s %v: got %d, want %d (points %v)", c.name, c.attrs, got, c.want, reader.Attributes(c.name))
		}
	}
}
