package store

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

func TestTallyEncodingIsProtobufMetrics(t *testing.T) {
	full := &trackingv1.Metrics{
		Targeted: 7, Sent: 5, Failed: 2, Excluded: 3, Received: 4, Opened: 3, UniqueOpens: 2, Dismissed: 1, Actions: 2, UniqueActions: 1,
		FailedByReason: []*commonv1.FailureCount{
			{Reason: commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN, Count: 1},
			{Reason: commonv1.FailureReason_FAILURE_REASON_INTERNAL, Count: 1},
		},
		ExcludedByReason: []*commonv1.ExclusionCount{{Reason: commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT, Count: 3}},
		ActionsById:      []*trackingv1.ActionCount{{ActionId: "buy", Count: 1}, {ActionId: "later", Count: 1}},
	}
	stored, err := proto.MarshalOptions{Deterministic: true}.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	// Decoding protobuf bytes, then encoding, gives the same bytes back.
	var tl tally
	if err := tl.addEncoded(stored); err != nil {
		t.Fatal(err)
	}
	if got := tl.appendTo(nil); !bytes.Equal(got, stored) {
		t.Errorf("re-encoded:\n got %x\nwant %x", got, stored)
	}
	// Adding twice doubles every counter; the API form derives the rates.
	if err := tl.addEncoded(stored); err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(full).(*trackingv1.Metrics)
	want.Targeted, want.Sent, want.Failed, want.Excluded, want.Received = 14, 10, 4, 6, 8
	want.Opened, want.UniqueOpens, want.Dismissed, want.Actions, want.UniqueActions = 6, 4, 2, 4, 2
	for _, f := range want.FailedByReason {
		f.Count *= 2
	}
	want.ExcludedByReason[0].Count = 6
	for _, a := range want.ActionsById {
		a.Count *= 2
	}
	want.OpenRate, want.ActionRate, want.UniqueActionRate = 0.4, 0.4, 0.2 // unique opens, actions, unique actions / sent
	if got := tl.metrics(); !proto.Equal(got, want) {
		t.Errorf("metrics:\n got %v\nwant %v", got, want)
	}
	// Unknown fields (a newer writer) are skipped, garbage is an error.
	withUnknown := append(append([]byte{}, stored...), 0xf8, 0x06, 0x01) // field 111, varint 1
	if err := (&tally{}).addEncoded(withUnknown); err != nil {
		t.Errorf("unknown field: got %v, want it skipped", err)
	}
	if err := (&tally{}).addEncoded([]byte{0x0a, 0x05, 0x01}); err == nil {
		t.Error("truncated aggregate: got nil error")
	}
}

func BenchmarkTallyAddEncoded(b *testing.B) {
	m := &trackingv1.Metrics{Targeted: 7000, Sent: 5000, Failed: 2000, Received: 4000, Opened: 3000, UniqueOpens: 2000, Dismissed: 1000, Actions: 900,
		FailedByReason: []*commonv1.FailureCount{{Reason: 2, Count: 2000}}, ActionsById: []*trackingv1.ActionCount{{ActionId: "buy", Count: 900}}}
	stored, _ := proto.Marshal(m)
	b.Run("tally", func(b *testing.B) {
		var tl tally
		for i := 0; i < b.N; i++ {
			_ = tl.addEncoded(stored)
		}
	})
	b.Run("proto.Unmarshal", func(b *testing.B) {
		var dst trackingv1.Metrics
		for i := 0; i < b.N; i++ {
			proto.Reset(&dst)
			_ = proto.Unmarshal(stored, &dst)
		}
	})
}
