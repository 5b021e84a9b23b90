package store

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

// appendEvent appends e in the protobuf wire format, the bytes proto.Marshal
// would produce (fields in number order, unknown fields dropped), so
// proto.Unmarshal reads them back. Written out by hand because ingest
// encodes every event and the generic encoder costs about three times as
// much: it re-validates UTF-8 the decoder already checked and walks the
// message by reflection. TestAppendEventMatchesProtoMarshal keeps it in step
// with the schema: a new Event field fails that test until it is added here.
func appendEvent(b []byte, e *trackingv1.Event) []byte {
	b = appendStringField(b, 1, e.GetEventId())
	b = appendVarintField(b, 2, uint64(e.GetType()))
	b = appendTimestampField(b, 3, e.GetEventTime())
	b = appendStringField(b, 4, e.GetProfileId())
	b = appendStringField(b, 5, e.GetToken())
	b = appendStringField(b, 6, e.GetTokenHash())
	b = appendStringField(b, 7, e.GetAppId())
	b = appendVarintField(b, 8, uint64(e.GetPlatform()))
	b = appendStringField(b, 9, e.GetJourneyId())
	b = appendStringField(b, 10, e.GetMessageId())
	b = appendStringField(b, 11, e.GetActionId())
	b = appendVarintField(b, 12, uint64(e.GetFailureReason()))
	b = appendVarintField(b, 13, uint64(e.GetExclusionReason()))
	if d := e.GetDevice(); d != nil {
		b = protowire.AppendTag(b, 14, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(deviceSize(d)))
		b = appendStringField(b, 1, d.GetModel())
		b = appendStringField(b, 2, d.GetOsVersion())
		b = appendStringField(b, 3, d.GetAppVersion())
		b = appendStringField(b, 4, d.GetLocale())
		b = appendStringField(b, 5, d.GetTimeZone())
	}
	b = appendStringField(b, 15, e.GetTraceparent())
	return appendTimestampField(b, 16, e.GetReceiveTime())
}

// Enum values are int32: a negative one is sign-extended to 64 bits, as
// protobuf does.
func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	return protowire.AppendVarint(protowire.AppendTag(b, num, protowire.VarintType), v)
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
}

func appendTimestampField(b []byte, num protowire.Number, t *timestamppb.Timestamp) []byte {
	if t == nil {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(timestampSize(t)))
	b = appendVarintField(b, 1, uint64(t.GetSeconds()))
	return appendVarintField(b, 2, uint64(int64(t.GetNanos())))
}

func timestampSize(t *timestamppb.Timestamp) int {
	n := 0
	if s := t.GetSeconds(); s != 0 {
		n += 1 + protowire.SizeVarint(uint64(s))
	}
	if ns := t.GetNanos(); ns != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(ns)))
	}
	return n
}

func deviceSize(d *commonv1.DeviceInfo) int {
	n := 0
	for _, s := range [...]string{d.GetModel(), d.GetOsVersion(), d.GetAppVersion(), d.GetLocale(), d.GetTimeZone()} {
		if s != "" {
			n += 1 + protowire.SizeBytes(len(s))
		}
	}
	return n
}
