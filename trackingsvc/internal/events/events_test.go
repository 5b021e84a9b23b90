package events

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/types/known/timestamppb"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
)

type appendFunc func(ctx context.Context, tenant string, evs []*trackingv1.Event) (store.AppendResult, error)

func (f appendFunc) Append(ctx context.Context, tenant string, evs []*trackingv1.Event) (store.AppendResult, error) {
	return f(ctx, tenant, evs)
}

func TestOpenWithTraceparentLinksToSendSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	tracer = otel.Tracer("test")

	now := time.Now()
	var stored []*trackingv1.Event
	in := &Ingester{Now: func() time.Time { return now }, Store: appendFunc(func(_ context.Context, _ string, evs []*trackingv1.Event) (store.AppendResult, error) {
		stored = evs
		return store.AppendResult{Accepted: len(evs), New: []bool{true, true}}, nil
	})}
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	_, err := in.Ingest(context.Background(), "default", []*trackingv1.Event{
		{EventId: "1", Type: trackingv1.EventType_EVENT_TYPE_OPENED, EventTime: timestamppb.New(now), Traceparent: tp, Token: "secret-token"},
		{EventId: "2", Type: trackingv1.EventType_EVENT_TYPE_RECEIVED, EventTime: timestamppb.New(now), Traceparent: tp},
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("got %d spans, want 1 (only the open)", len(spans))
	}
	links := spans[0].Links()
	if len(links) != 1 || links[0].SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || links[0].SpanContext.SpanID().String() != "00f067aa0ba902b7" {
		t.Errorf("got links %v, want one to the send span", links)
	}
	if stored[0].GetToken() != "" || stored[0].GetTokenHash() != TokenHash("secret-token") {
		t.Errorf("stored token %q hash %q, want only the hash", stored[0].GetToken(), stored[0].GetTokenHash())
	}
}

func TestCheck(t *testing.T) {
	now := time.Now()
	ok := func() *trackingv1.Event {
		return &trackingv1.Event{EventId: "e", Type: trackingv1.EventType_EVENT_TYPE_OPENED, EventTime: timestamppb.New(now)}
	}
	tests := []struct {
		name  string
		edit  func(*trackingv1.Event)
		field string
	}{
		{"good", func(*trackingv1.Event) {}, ""},
		{"four minutes ahead is fine", func(e *trackingv1.Event) { e.EventTime = timestamppb.New(now.Add(4 * time.Minute)) }, ""},
		{"no id", func(e *trackingv1.Event) { e.EventId = "" }, "event_id"},
		{"failed without reason is allowed", func(e *trackingv1.Event) { e.Type = trackingv1.EventType_EVENT_TYPE_FAILED }, ""},
		{"invalid time", func(e *trackingv1.Event) { e.EventTime = &timestamppb.Timestamp{Nanos: -1} }, "event_time"},
		{"huge app id", func(e *trackingv1.Event) { e.AppId = string(make([]byte, 600)) }, "app_id"},
	}
	for _, tt := range tests {
		e := ok()
		tt.edit(e)
		if field, _ := Check(e, now); field != tt.field {
			t.Errorf("%s: got field %q, want %q", tt.name, field, tt.field)
		}
	}
}
