package events

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
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
		// The third event is a duplicate of an earlier one.
		return store.AppendResult{Accepted: 3, Duplicates: 1, New: []bool{true, true, false, true}}, nil
	})}
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	open := func(id, traceparent string) *trackingv1.Event {
		return &trackingv1.Event{EventId: id, Type: trackingv1.EventType_EVENT_TYPE_OPENED, EventTime: timestamppb.New(now),
			Traceparent: traceparent, Token: "secret-token", JourneyId: "j", MessageId: "m"}
	}
	out, err := in.Ingest(context.Background(), "default", []*trackingv1.Event{
		open("1", tp),
		{EventId: "2", Type: trackingv1.EventType_EVENT_TYPE_RECEIVED, EventTime: timestamppb.New(now), Traceparent: tp, ProfileId: "p"},
		open("3", tp),        // a duplicate: its open was linked the first time
		open("4", "garbage"), // kept, but there is nothing to link to
	}, 0)
	if err != nil || out.Accepted != 3 || len(out.Rejected) != 0 {
		t.Fatalf("got %+v, %v, want 3 accepted and none rejected", out, err)
	}
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("got %d spans, want 1 (only the new open with a valid traceparent)", len(spans))
	}
	links := spans[0].Links()
	if len(links) != 1 || links[0].SpanContext.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || links[0].SpanContext.SpanID().String() != "00f067aa0ba902b7" {
		t.Errorf("got links %v, want one to the send span", links)
	}
	for _, a := range spans[0].Attributes() {
		if strings.Contains(a.Value.Emit(), "secret-token") {
			t.Errorf("attribute %s carries the token", a.Key)
		}
	}
	if stored[0].GetToken() != "" || stored[0].GetTokenHash() != TokenHash("secret-token") {
		t.Errorf("stored token %q hash %q, want only the hash", stored[0].GetToken(), stored[0].GetTokenHash())
	}
}

func TestIngestRejectsStaleEventsAndIndexesFromBase(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	var got []*trackingv1.Event
	in := &Ingester{Retention: 24 * time.Hour, Now: func() time.Time { return now }, Store: appendFunc(func(_ context.Context, _ string, evs []*trackingv1.Event) (store.AppendResult, error) {
		got = evs
		return store.AppendResult{Accepted: len(evs), New: make([]bool, len(evs))}, nil
	})}
	out, err := in.Ingest(context.Background(), "default", []*trackingv1.Event{
		{EventId: "old", Type: trackingv1.EventType_EVENT_TYPE_SENT, EventTime: timestamppb.New(now.Add(-25 * time.Hour)), ProfileId: "p"},
		{EventId: "ok", Type: trackingv1.EventType_EVENT_TYPE_RECEIVED, EventTime: timestamppb.New(now.Add(-23 * time.Hour)), ProfileId: "p"},
	}, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Rejected) != 1 || out.Rejected[0].Index != 1000 || out.Rejected[0].Field != "event_time" || out.Rejected[0].EventID != "old" {
		t.Errorf("got rejections %+v, want index 1000 (base 1000), field event_time", out.Rejected)
	}
	if len(got) != 1 || got[0].GetEventId() != "ok" {
		t.Errorf("stored %v, want only the event inside the retention", got)
	}
}

func TestCheck(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	good := func() *trackingv1.Event {
		return &trackingv1.Event{EventId: "e", Type: trackingv1.EventType_EVENT_TYPE_OPENED, EventTime: timestamppb.New(now), ProfileId: "p"}
	}
	long := strings.Repeat("x", MaxFieldLen+1)
	tests := []struct {
		name  string
		edit  func(*trackingv1.Event)
		field string
	}{
		{"good", func(*trackingv1.Event) {}, ""},
		{"token instead of profile", func(e *trackingv1.Event) { e.ProfileId, e.Token = "", "tok" }, ""},
		{"four minutes ahead", func(e *trackingv1.Event) { e.EventTime = timestamppb.New(now.Add(4 * time.Minute)) }, ""},
		{"id of 128 bytes", func(e *trackingv1.Event) { e.EventId = strings.Repeat("i", 128) }, ""},
		{"failed with reason", func(e *trackingv1.Event) {
			e.Type, e.FailureReason = trackingv1.EventType_EVENT_TYPE_FAILED, commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
		}, ""},
		{"no id", func(e *trackingv1.Event) { e.EventId = "" }, "event_id"},
		{"id of 129 bytes", func(e *trackingv1.Event) { e.EventId = strings.Repeat("i", 129) }, "event_id"},
		{"no type", func(e *trackingv1.Event) { e.Type = 0 }, "type"},
		{"unknown type", func(e *trackingv1.Event) { e.Type = 42 }, "type"},
		{"no time", func(e *trackingv1.Event) { e.EventTime = nil }, "event_time"},
		{"invalid time", func(e *trackingv1.Event) { e.EventTime = &timestamppb.Timestamp{Nanos: -1} }, "event_time"},
		{"six minutes ahead", func(e *trackingv1.Event) { e.EventTime = timestamppb.New(now.Add(6 * time.Minute)) }, "event_time"},
		{"before 1970", func(e *trackingv1.Event) { e.EventTime = &timestamppb.Timestamp{Seconds: -5} }, "event_time"},
		{"nobody", func(e *trackingv1.Event) { e.ProfileId = "" }, "profile_id"},
		{"unknown platform", func(e *trackingv1.Event) { e.Platform = 7 }, "platform"},
		{"action without id", func(e *trackingv1.Event) { e.Type = trackingv1.EventType_EVENT_TYPE_ACTION }, "action_id"},
		{"failed without reason", func(e *trackingv1.Event) { e.Type = trackingv1.EventType_EVENT_TYPE_FAILED }, "failure_reason"},
		{"unknown failure reason", func(e *trackingv1.Event) {
			e.Type, e.FailureReason = trackingv1.EventType_EVENT_TYPE_FAILED, 9
		}, "failure_reason"},
		{"excluded without reason", func(e *trackingv1.Event) { e.Type = trackingv1.EventType_EVENT_TYPE_EXCLUDED }, "exclusion_reason"},
		{"unknown exclusion reason", func(e *trackingv1.Event) {
			e.Type, e.ExclusionReason = trackingv1.EventType_EVENT_TYPE_EXCLUDED, 99
		}, "exclusion_reason"},
		{"huge token", func(e *trackingv1.Event) { e.Token = strings.Repeat("t", MaxTokenLen+1) }, "token"},
		{"huge profile", func(e *trackingv1.Event) { e.ProfileId = long }, "profile_id"},
		{"huge app", func(e *trackingv1.Event) { e.AppId = long }, "app_id"},
		{"huge journey", func(e *trackingv1.Event) { e.JourneyId = long }, "journey_id"},
		{"huge message", func(e *trackingv1.Event) { e.MessageId = long }, "message_id"},
		{"huge action", func(e *trackingv1.Event) { e.ActionId = long }, "action_id"},
		{"huge traceparent", func(e *trackingv1.Event) { e.Traceparent = long }, "traceparent"},
		{"huge device model", func(e *trackingv1.Event) { e.Device = &commonv1.DeviceInfo{Model: long} }, "device.model"},
		{"huge time zone", func(e *trackingv1.Event) { e.Device = &commonv1.DeviceInfo{TimeZone: long} }, "device.time_zone"},
	}
	for _, tt := range tests {
		e := good()
		tt.edit(e)
		if field, reason := Check(e, now); field != tt.field {
			t.Errorf("%s: got field %q (%s), want %q", tt.name, field, reason, tt.field)
		}
	}
}

func TestPrepareKeepsOnlyTheTokenHash(t *testing.T) {
	e := &trackingv1.Event{EventId: "e", Token: "secret", TokenHash: "forged", ReceiveTime: timestamppb.New(time.Unix(1, 0))}
	Prepare(e)
	if e.GetToken() != "" || e.GetTokenHash() != TokenHash("secret") || len(e.GetTokenHash()) != 32 {
		t.Errorf("got token %q hash %q, want no token and the 32-hex hash", e.GetToken(), e.GetTokenHash())
	}
	if e.GetReceiveTime() != nil {
		t.Errorf("got receive time %v, want it left to the store", e.GetReceiveTime())
	}
	forged := &trackingv1.Event{TokenHash: "forged"}
	if Prepare(forged); forged.GetTokenHash() != "" {
		t.Errorf("output-only token_hash on input: got %q kept, want it ignored", forged.GetTokenHash())
	}
}
