// Package remote connects the delivery pipeline to the other services:
// profilesvc (token resolution, dead-token feedback) and trackingsvc (send
// outcomes). Outcomes and feedback go through durable outboxes: the
// pipeline's Record and ReportDead return once the records are stored, and
// the outboxes forward them in batches, retrying while a service is down.
package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
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
	records := make([][]byte, 0, len(results))
	for i := range results {
		ev := Event(ctx, &results[i])
		if ev == nil {
			continue
		}
		b, err := proto.Marshal(ev)
		if err != nil {
			return fmt.Errorf("encode tracking event: %w", err)
		}
		records = append(records, b)
	}
	return t.Outbox.Append(ctx, records)
}

// EventID is the deterministic id of an outcome's event: the same outcome
// recorded twice (a retry after a crash) is one event for trackingsvc.
func EventID(tenantID string, r *delivery.Result) string {
	// One buffer on the stack and one hash call: this runs for every push.
	var buf [512]byte
	b := buf[:0]
	for _, part := range [...]string{tenantID, r.IdempotencyKey, r.Target.Platform.String(), r.Target.AppID, r.Target.Token, r.Target.ProfileID, r.Status.String()} {
		b = append(b, part...)
		b = append(b, 0)
	}
	sum := sha256.Sum256(b)
	var id [3 + 32]byte
	copy(id[:], "pm-")
	hex.Encode(id[3:], sum[:16])
	return string(id[:])
}

// Event converts a result to a tracking event, or nil when the result is
// not an outcome trackingsvc counts.
func Event(ctx context.Context, r *delivery.Result) *trackingv1.Event {
	ev := &trackingv1.Event{
		EventId:     EventID(tenantOf(ctx), r),
		EventTime:   timestamppb.New(r.Time),
		ProfileId:   r.Target.ProfileID,
		Token:       r.Target.Token,
		AppId:       r.Target.AppID,
		Platform:    r.Target.Platform,
		JourneyId:   r.JourneyID,
		MessageId:   r.MessageID,
		Traceparent: r.TraceParent,
	}
	switch r.Status {
	case delivery.StatusSent:
		ev.Type = trackingv1.EventType_EVENT_TYPE_SENT
	case delivery.StatusFailed:
		ev.Type = trackingv1.EventType_EVENT_TYPE_FAILED
		ev.FailureReason = r.Reason
	case delivery.StatusExcluded:
		ev.Type = trackingv1.EventType_EVENT_TYPE_EXCLUDED
		ev.ExclusionReason = r.Exclusion
	default:
		return nil
	}
	return ev
}

// Ingest returns the tracking outbox's Deliver: one Ingest stream per batch.
func Ingest(client trackingv1.TrackingServiceClient, log *slog.Logger) outbox.Deliver {
	return func(ctx context.Context, tenantID string, records [][]byte) error {
		events := make([]*trackingv1.Event, 0, len(records))
		for _, rec := range records {
			ev := &trackingv1.Event{}
			if err := proto.Unmarshal(rec, ev); err != nil {
				// A record this binary cannot read will never become
				// readable: drop it rather than block the queue.
				log.ErrorContext(ctx, "dropping an unreadable tracking record", "err", err)
				continue
			}
			events = append(events, ev)
		}
		if len(events) == 0 {
			return nil
		}
		stream, err := client.Ingest(sendTraceContext(ctx, events[0].GetTraceparent()))
		if err != nil {
			return fmt.Errorf("trackingsvc Ingest: %w", err)
		}
		const maxPerRequest = 10_000
		for start := 0; start < len(events); start += maxPerRequest {
			end := min(start+maxPerRequest, len(events))
			if err := stream.Send(&trackingv1.IngestRequest{Events: events[start:end]}); err != nil {
				_, rerr := stream.CloseAndRecv()
				return fmt.Errorf("trackingsvc Ingest: %w", errors.Join(err, rerr))
			}
		}
		res, err := stream.CloseAndRecv()
		if permanent(err) {
			log.ErrorContext(ctx, "trackingsvc refused a batch of send events; dropping it", "tenant", tenantID, "events", len(events), "err", err)
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
			log.WarnContext(ctx, "trackingsvc rejected send events", "tenant", tenantID, "rejected", res.GetRejectedCount(),
				"first_field", first.GetField(), "first_reason", first.GetReason())
		}
		return nil
	}
}

// Feedback reports dead tokens into the feedback outbox; it implements
// delivery.Feedback.
type Feedback struct {
	Outbox *outbox.Outbox
}

// ReportDead implements delivery.Feedback.
func (f *Feedback) ReportDead(ctx context.Context, dead []delivery.DeadToken) error {
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
			return fmt.Errorf("encode token feedback: %w", err)
		}
		records = append(records, b)
	}
	return f.Outbox.Append(ctx, records)
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
// in requests of at most 10,000 verdicts.
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
		for start := 0; start < len(feedback); start += maxPerRequest {
			end := min(start+maxPerRequest, len(feedback))
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
