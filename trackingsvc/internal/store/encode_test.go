package store

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

func TestAppendEventMatchesProtoMarshal(t *testing.T) {
	full := &trackingv1.Event{
		EventId: "e-1", Type: trackingv1.EventType_EVENT_TYPE_ACTION, EventTime: &timestamppb.Timestamp{Seconds: 1764331200, Nanos: 123456789},
		ProfileId: "p", Token: "tok", TokenHash: "00112233445566778899aabbccddeeff", AppId: "com.acme", Platform: commonv1.Platform_PLATFORM_FCM,
		JourneyId: "j", MessageId: "m", ActionId: "buy", FailureReason: commonv1.FailureReason_FAILURE_REASON_INTERNAL,
		ExclusionReason: commonv1.ExclusionReason_EXCLUSION_REASON_PAYLOAD_TOO_LARGE,
		Device:          &commonv1.DeviceInfo{Model: "Pixel 8", OsVersion: "14", AppVersion: "3.2.1", Locale: "en-GB", TimeZone: "Europe/Paris"},
		Traceparent:     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ReceiveTime: &timestamppb.Timestamp{Seconds: 5},
	}
	// Every field of Event must be set above, so a field added to the
	// schema fails here until appendEvent writes it.
	fields := full.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		if !full.ProtoReflect().Has(fields.Get(i)) {
			t.Fatalf("field %s is not set in the test event: add it here and to appendEvent", fields.Get(i).Name())
		}
	}
	for name, e := range map[string]*trackingv1.Event{
		"full":           full,
		"empty":          {},
		"minimal":        {EventId: "x", Type: 1, EventTime: &timestamppb.Timestamp{Seconds: 1}},
		"empty device":   {EventId: "x", Device: &commonv1.DeviceInfo{}},
		"zero timestamp": {EventId: "x", EventTime: &timestamppb.Timestamp{}},
		"unknown enum":   {EventId: "x", Type: 99, Platform: 7},
	} {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEvent(nil, e); !bytes.Equal(got, want) {
			t.Errorf("%s: got %x, want %x", name, got, want)
		}
	}
}

func BenchmarkEncodeEvent(b *testing.B) {
	e := &trackingv1.Event{
		EventId: "pm-0123456789abcdef0123456789abcdef", Type: 1, EventTime: timestamppb.Now(), ProfileId: "p123456",
		TokenHash: "00112233445566778899aabbccddeeff", AppId: "com.acme.shop", Platform: 1, JourneyId: "bench-journey", MessageId: "bench-message",
	}
	b.Run("appendEvent", func(b *testing.B) {
		var buf []byte
		for i := 0; i < b.N; i++ {
			buf = appendEvent(buf[:0], e)
		}
	})
	b.Run("proto.Marshal", func(b *testing.B) {
		var buf []byte
		for i := 0; i < b.N; i++ {
			buf, _ = proto.MarshalOptions{}.MarshalAppend(buf[:0], e)
		}
	})
}
