// Package remote connects the delivery pipeline to the other services:
// profilesvc (token resolution, dead-token feedback) and trackingsvc (send
// outcomes). Outcomes and feedback go through durable outboxes: the
// pipeline's Record and ReportDead return once the records are stored, and
// the outboxes forward them in batches, retrying while a service is down.
package remote

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/outbox"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

func tenantOf(ctx context.Context) string { return tenant.FromContext(ctx) }

// permanent reports a remote refusal that no retry can fix (the batch
// itself is invalid); the outbox drops such a batch after logging it
// instead of blocking every later record behind it.
func permanent(err error) bool {
	return status.Code(err) == codes.InvalidArgument
}

// Profiles resolves profile targets through profilesvc; it implements
// delivery.Resolver.
type Profiles struct {
	Client profilev1.ProfileServiceClient
}

// ProfileTokens implements delivery.Resolver: the profile's active tokens
// of the requested apps and platforms.
func (p *Profiles) ProfileTokens(ctx context.Context, t delivery.ProfileTarget) ([]delivery.Target, error) {
	res, err := p.Client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{
		Profile: &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_ProfileId{ProfileId: t.ProfileID}},
		AppIds:  t.AppIDs,
	})
	if status.Code(err) == codes.NotFound {
		return nil, fmt.Errorf("%w: %s", delivery.ErrProfileNotFound, status.Convert(err).Message())
	}
	if err != nil {
		return nil, fmt.Errorf("profilesvc ListPushTokens: %w", err)
	}
	out := make([]delivery.Target, 0, len(res.GetTokens()))
	for _, tok := range res.GetTokens() {
		// Filter again: an older profilesvc might ignore a filter, and an
		// inactive token must never be sent to.
		if tok.GetState() != profilev1.TokenState_TOKEN_STATE_ACTIVE || !wanted(tok, t) {
			continue
		}
		out = append(out, delivery.Target{
			Token:           tok.GetToken(),
			Platform:        tok.GetPlatform(),
			AppID:           tok.GetAppId(),
			ProfileID:       tok.GetProfileId(),
			APNsEnvironment: tok.GetApnsEnvironment(),
		})
	}
	return out, nil
}

func wanted(tok *profilev1.PushToken, t delivery.ProfileTarget) bool {
	if len(t.Platforms) > 0 && !contains(t.Platforms, tok.GetPlatform()) {
		return false
	}
	if len(t.AppIDs) > 0 && !contains(t.AppIDs, tok.GetAppId()) {
		return false
	}
	return true
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// Tracking records outcomes into the tracking outbox; it implements
// delivery.Recorder.
type Tracking struct {
	Outbox *outbox.Outbox
}

// Record implements delivery.Recorder.
func (t *Tracking) Record(ctx context.Context, results []delivery.Result) error {
	return t.Outbox.Append(ctx, trackingRecords(tenantOf(ctx), results))
}

// RecordAsync implements delivery.Recorder.
func (t *Tracking) RecordAsync(ctx context.Context, results []delivery.Result, done func(error)) {
	t.Outbox.AppendAsync(ctx, trackingRecords(tenantOf(ctx), results), done)
}

// trackingRecords encodes the events of results.
func trackingRecords(tenantID string, results []delivery.Result) [][]byte {
	// One buffer for the batch's events; records are slices of it.
	buf := make([]byte, 0, 320*len(results))
	records := make([][]byte, 0, len(results))
	for i := range results {
		start := len(buf)
		var ok bool
		if buf, ok = appendEvent(buf, tenantID, &results[i]); ok {
			records = append(records, buf[start:len(buf):len(buf)])
		}
	}
	return records
}

// EventID is the deterministic id of an outcome's event: the same outcome
// recorded twice (a retry after a crash) is one event for trackingsvc.
func EventID(tenantID string, r *delivery.Result) string {
	var id [eventIDLen]byte
	return string(appendEventID(id[:0], tenantID, r))
}

// eventIDLen is the length of an event id: "pm-" and 32 hex digits.
const eventIDLen = 3 + 32

func appendEventID(dst []byte, tenantID string, r *delivery.Result) []byte {
	// One buffer on the stack and one hash call: this runs for every push.
	var buf [512]byte
	b := buf[:0]
	for _, part := range [...]string{tenantID, r.IdempotencyKey, r.Target.Platform.String(), r.Target.AppID, r.Target.Token, r.Target.ProfileID, r.Status.String()} {
		b = append(b, part...)
		b = append(b, 0)
	}
	sum := sha256.Sum256(b)
	dst = append(dst, "pm-"...)
	return hex.AppendEncode(dst, sum[:16])
}

// Field numbers of trackingv1.Event and google.protobuf.Timestamp.
const (
	eventIDField          = 1
	eventTypeField        = 2
	eventTimeField        = 3
	eventProfileIDField   = 4
	eventTokenField       = 5
	eventAppIDField       = 7
	eventPlatformField    = 8
	eventJourneyIDField   = 9
	eventMessageIDField   = 10
	eventFailureField     = 12
	eventExclusionField   = 13
	eventTraceparentField = 15
	timestampSecondsField = 1
	timestampNanosField   = 2
)

// appendEvent appends the tracking event of an outcome (a trackingv1.Event
// in protobuf wire format) to dst; ok is false when the result is not an
// outcome trackingsvc counts. It writes the fields directly, in field
// order, rather than filling an Event and calling proto.Marshal: this runs
// for every push, and the message, its timestamp and the generic encoder
// showed in CPU profiles. TestAppendEvent checks it against proto.Marshal.
func appendEvent(dst []byte, tenantID string, r *delivery.Result) (out []byte, ok bool) {
	var typ trackingv1.EventType
	switch r.Status {
	case delivery.StatusSent:
		typ = trackingv1.EventType_EVENT_TYPE_SENT
	case delivery.StatusFailed:
		typ = trackingv1.EventType_EVENT_TYPE_FAILED
	case delivery.StatusExcluded:
		typ = trackingv1.EventType_EVENT_TYPE_EXCLUDED
	default:
		return dst, false
	}
	dst = protowire.AppendTag(dst, eventIDField, protowire.BytesType)
	dst = protowire.AppendVarint(dst, eventIDLen)
	dst = appendEventID(dst, tenantID, r)
	dst = appendEnum(dst, eventTypeField, int32(typ))

	secs, nanos := r.Time.Unix(), int32(r.Time.Nanosecond())
	var ts [2 * (1 + binary.MaxVarintLen64)]byte
	tsb := ts[:0]
	if secs != 0 {
		tsb = protowire.AppendTag(tsb, timestampSecondsField, protowire.VarintType)
		tsb = protowire.AppendVarint(tsb, uint64(secs))
	}
	if nanos != 0 {
		tsb = protowire.AppendTag(tsb, timestampNanosField, protowire.VarintType)
		tsb = protowire.AppendVarint(tsb, uint64(nanos))
	}
	dst = protowire.AppendTag(dst, eventTimeField, protowire.BytesType)
	dst = protowire.AppendBytes(dst, tsb)

	dst = appendString(dst, eventProfileIDField, r.Target.ProfileID)
	dst = appendString(dst, eventTokenField, r.Target.Token)
	dst = appendString(dst, eventAppIDField, r.Target.AppID)
	dst = appendEnum(dst, eventPlatformField, int32(r.Target.Platform))
	dst = appendString(dst, eventJourneyIDField, r.JourneyID)
	dst = appendString(dst, eventMessageIDField, r.MessageID)
	switch r.Status {
	case delivery.StatusFailed:
		dst = appendEnum(dst, eventFailureField, int32(r.Reason))
	case delivery.StatusExcluded:
		dst = appendEnum(dst, eventExclusionField, int32(r.Exclusion))
	}
	dst = appendString(dst, eventTraceparentField, r.TraceParent)
	return dst, true
}

// appendString appends a proto3 string field (nothing when empty).
func appendString(dst []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	return protowire.AppendString(dst, s)
}

// appendEnum appends a proto3 enum field (nothing when zero).
func appendEnum(dst []byte, num protowire.Number, v int32) []byte {
	if v == 0 {
		return dst
	}
	dst = protowire.AppendTag(dst, num, protowire.VarintType)
	return protowire.AppendVarint(dst, uint64(int64(v)))
}

// maxEventsPerRequest bounds the events of one IngestRequest.
const maxEventsPerRequest = 10_000

// maxRequestBytes bounds the encoded size of one request to a peer
// (IngestRequest, ReportTokenFeedbackRequest), well under gRPC's default
// 4 MiB receive limit, which trackingsvc and profilesvc keep. A count alone
// is not enough: tokens, profile and message ids are up to kilobytes each,
// and one full outbox batch of such events is several MiB. A request over
// the peer's limit is refused (ResourceExhausted) on every retry, and as the
// outbox forwards in order, everything behind it would wait for good. One
// record is a few KiB at most, so a request never passes this by more.
const maxRequestBytes = 2 << 20

// frameEvents checks records (checkEvent) and frames the readable ones as
// IngestRequest messages of at most perRequest events and about maxBytes
// bytes (a request holds at least one event). Every request is a
// slice of one buffer allocated at its final size: a batch of thousands of
// events appended to a growing slice would be copied about twice over. It
// returns the traceparent of the first readable record and how many were
// dropped.
func frameEvents(records [][]byte, perRequest, maxBytes int) (requests []preEncoded, traceparent string, dropped int) {
	size := 0
	for _, rec := range records {
		size += protowire.SizeTag(ingestEventsField) + protowire.SizeBytes(len(rec))
	}
	buf := make([]byte, 0, size)
	start, inReq := 0, 0
	for _, rec := range records {
		tp, ok := checkEvent(rec)
		if !ok {
			dropped++
			continue
		}
		if inReq == 0 && len(requests) == 0 {
			traceparent = string(tp)
		}
		size := protowire.SizeTag(ingestEventsField) + protowire.SizeBytes(len(rec))
		if inReq == perRequest || inReq > 0 && len(buf)-start+size > maxBytes {
			requests = append(requests, buf[start:len(buf):len(buf)])
			start, inReq = len(buf), 0
		}
		buf = protowire.AppendTag(buf, ingestEventsField, protowire.BytesType)
		buf = protowire.AppendBytes(buf, rec)
		inReq++
	}
	if inReq > 0 {
		requests = append(requests, buf[start:])
	}
	return requests, traceparent, dropped
}

// Ingest returns the tracking outbox's Deliver: one Ingest stream per batch.
// The records are Event encodings (appendEvent) and travel as they are,
// framed as IngestRequest messages, instead of being decoded and encoded
// again. A record trackingsvc could not decode (checkEvent) is dropped
// with a log line rather than fail its whole batch forever.
func Ingest(client trackingv1.TrackingServiceClient, log *slog.Logger) outbox.Deliver {
	return func(ctx context.Context, tenantID string, records [][]byte) error {
		requests, traceparent, dropped := frameEvents(records, maxEventsPerRequest, maxRequestBytes)
		if dropped > 0 {
			// A record this binary cannot read will never become readable:
			// drop it rather than block the queue.
			log.ErrorContext(ctx, "dropping unreadable tracking records", "tenant", tenantID, "records", dropped)
		}
		if len(requests) == 0 {
			return nil
		}
		stream, err := client.Ingest(sendTraceContext(ctx, traceparent), grpc.ForceCodecV2(ingestCodec))
		if err != nil {
			return fmt.Errorf("trackingsvc Ingest: %w", err)
		}
		for _, r := range requests {
			if err := stream.SendMsg(r); err != nil {
				_, rerr := stream.CloseAndRecv()
				return fmt.Errorf("trackingsvc Ingest: %w", errors.Join(err, rerr))
			}
		}
		res, err := stream.CloseAndRecv()
		if permanent(err) {
			log.ErrorContext(ctx, "trackingsvc refused a batch of send events; dropping it", "tenant", tenantID, "events", len(records), "err", err)
			return nil
		}
		if err != nil {
			return fmt.Errorf("trackingsvc Ingest: %w", err)
		}
		if res.GetRejectedCount() > 0 {
			// Rejected events are invalid; sending them again would not
			// help. Log the first reasons.
			var first *trackingv1.EventRejection
			if len(res.GetRejected()) > 0 {
				first = res.GetRejected()[0]
			}
			if first.GetField() == "event_time" && strings.Contains(first.GetReason(), "future") {
				// The event times are deliverysvc's clock: trackingsvc's
				// is behind it by more than it allows, and every outcome
				// is being lost until the clocks agree.
				log.ErrorContext(ctx, "trackingsvc rejected send events as from the future: deliverysvc's clock is ahead of trackingsvc's; synchronise them (NTP) — these outcomes are lost",
					"tenant", tenantID, "rejected", res.GetRejectedCount(), "first_reason", first.GetReason())
				return nil
			}
			log.WarnContext(ctx, "trackingsvc rejected send events", "tenant", tenantID, "rejected", res.GetRejectedCount(),
				"first_field", first.GetField(), "first_reason", first.GetReason())
		}
		return nil
	}
}

// ingestEventsField is the field number of IngestRequest.events.
const ingestEventsField = 1

// preEncoded is a message already in protobuf wire format.
type preEncoded []byte

// passThroughCodec is gRPC's protobuf codec, except that it sends
// preEncoded messages as they are.
type passThroughCodec struct{ encoding.CodecV2 }

func (c passThroughCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(preEncoded); ok {
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

var ingestCodec = passThroughCodec{encoding.GetCodecV2(grpcproto.Name)}

// eventShape is trackingv1.Event's shape, for checkEvent.
var eventShape = shapeOf((&trackingv1.Event{}).ProtoReflect().Descriptor(), 0)

// shape is what checking a message's encoding needs from its descriptor:
// which fields are strings and which are messages (and their shapes).
type shape struct {
	strings  map[protowire.Number]bool
	messages map[protowire.Number]*shape
}

func shapeOf(md protoreflect.MessageDescriptor, depth int) *shape {
	s := &shape{strings: map[protowire.Number]bool{}, messages: map[protowire.Number]*shape{}}
	if depth > 8 { // deeper nesting is checked as bytes only
		return s
	}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch fd.Kind() {
		case protoreflect.StringKind:
			s.strings[fd.Number()] = true
		case protoreflect.MessageKind:
			s.messages[fd.Number()] = shapeOf(fd.Message(), depth+1)
		}
	}
	return s
}

// checkEvent reports whether rec decodes as a trackingv1.Event (the checks
// proto.Unmarshal makes: well-formed wire data, valid UTF-8 in string
// fields, the same for nested messages) and returns its traceparent,
// borrowing rec's memory.
func checkEvent(rec []byte) (traceparent []byte, ok bool) {
	ok = eventShape.check(rec, func(num protowire.Number, v []byte) {
		if num == eventTraceparentField {
			traceparent = v
		}
	})
	return traceparent, ok
}

// check checks b; onString sees the string fields at this level.
func (s *shape) check(b []byte, onString func(protowire.Number, []byte)) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if s.strings[num] {
			if !utf8.Valid(v) {
				return false
			}
			if onString != nil {
				onString(num, v)
			}
		} else if m := s.messages[num]; m != nil && !m.check(v, nil) {
			return false
		}
		// Unknown fields are kept as they are, like proto.Unmarshal does.
	}
	return true
}

// Feedback reports dead tokens into the feedback outbox; it implements
// delivery.Feedback.
type Feedback struct {
	Outbox *outbox.Outbox
}

// ReportDeadAsync implements delivery.Feedback.
func (f *Feedback) ReportDeadAsync(ctx context.Context, dead []delivery.DeadToken, done func(error)) {
	records, err := feedbackRecords(dead)
	if err != nil {
		done(err)
		return
	}
	f.Outbox.AppendAsync(ctx, records, done)
}

func feedbackRecords(dead []delivery.DeadToken) ([][]byte, error) {
	records := make([][]byte, 0, len(dead))
	for _, d := range dead {
		reason, ok := feedbackReason(d.Reason)
		if !ok {
			continue
		}
		b, err := proto.Marshal(&profilev1.TokenFeedback{
			Token:       d.Target.Token,
			Platform:    d.Target.Platform,
			AppId:       d.Target.AppID,
			Reason:      reason,
			GatewayTime: timestamppb.New(d.GatewayTime),
		})
		if err != nil {
			return nil, fmt.Errorf("encode token feedback: %w", err)
		}
		records = append(records, b)
	}
	return records, nil
}

func feedbackReason(r commonv1.FailureReason) (profilev1.FeedbackReason, bool) {
	switch r {
	case commonv1.FailureReason_FAILURE_REASON_UNREGISTERED:
		return profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, true
	case commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN:
		return profilev1.FeedbackReason_FEEDBACK_REASON_BAD_DEVICE_TOKEN, true
	case commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC:
		return profilev1.FeedbackReason_FEEDBACK_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC, true
	case commonv1.FailureReason_FAILURE_REASON_EXPIRED_TOKEN:
		return profilev1.FeedbackReason_FEEDBACK_REASON_EXPIRED_TOKEN, true
	}
	return profilev1.FeedbackReason_FEEDBACK_REASON_UNSPECIFIED, false
}

// ReportFeedback returns the feedback outbox's Deliver: ReportTokenFeedback
// in requests of at most 10,000 verdicts and about maxRequestBytes.
func ReportFeedback(client profilev1.ProfileServiceClient, log *slog.Logger) outbox.Deliver {
	return func(ctx context.Context, tenantID string, records [][]byte) error {
		feedback := make([]*profilev1.TokenFeedback, 0, len(records))
		for _, rec := range records {
			fb := &profilev1.TokenFeedback{}
			if err := proto.Unmarshal(rec, fb); err != nil {
				log.ErrorContext(ctx, "dropping an unreadable feedback record", "err", err)
				continue
			}
			feedback = append(feedback, fb)
		}
		const maxPerRequest = 10_000
		for start, end := 0, 0; start < len(feedback); start = end {
			// Up to maxPerRequest verdicts and maxRequestBytes (at least one
			// verdict): see maxRequestBytes.
			size := 0
			for end = start; end < len(feedback) && end-start < maxPerRequest; end++ {
				n := protowire.SizeTag(1) + protowire.SizeBytes(proto.Size(feedback[end]))
				if end > start && size+n > maxRequestBytes {
					break
				}
				size += n
			}
			res, err := client.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{Feedback: feedback[start:end]})
			if permanent(err) {
				log.ErrorContext(ctx, "profilesvc refused a batch of token feedback; dropping it", "tenant", tenantID, "verdicts", end-start, "err", err)
				continue
			}
			if err != nil {
				return fmt.Errorf("profilesvc ReportTokenFeedback: %w", err)
			}
			log.InfoContext(ctx, "dead tokens reported", "tenant", tenantID, "deactivated", res.GetDeactivated(),
				"unchanged", res.GetUnchanged(), "unknown", res.GetUnknown())
		}
		return nil
	}
}

// sendTraceContext continues the trace of the send an outcome belongs to, so
// a journey's trace reaches trackingsvc: the Ingest call becomes a child of
// the first event's send span. Without a valid traceparent ctx is returned
// as is.
func sendTraceContext(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	send := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": traceparent}))
	if !send.IsValid() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, send)
}
