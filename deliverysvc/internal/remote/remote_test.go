package remote

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// referenceEvent is the tracking event of a result as a message: what
// appendEvent must encode.
func referenceEvent(tenantID string, r *delivery.Result) *trackingv1.Event {
	ev := &trackingv1.Event{
		EventId:     EventID(tenantID, r),
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

// event decodes appendEvent's encoding of r (nil when it writes none).
func event(t *testing.T, tenantID string, r *delivery.Result) *trackingv1.Event {
	t.Helper()
	b, ok := appendEvent([]byte("prefix"), tenantID, r)
	if !ok {
		if string(b) != "prefix" {
			t.Fatalf("no event, but %q appended", b[len("prefix"):])
		}
		return nil
	}
	ev := &trackingv1.Event{}
	if err := proto.Unmarshal(b[len("prefix"):], ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestEvent(t *testing.T) {
	r := delivery.Result{
		IdempotencyKey: "k", MessageID: "m", JourneyID: "j", TraceParent: "tp",
		Target: delivery.Target{Token: "tok", Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.x", ProfileID: "p"},
		Status: delivery.StatusFailed, Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, Time: time.Unix(100, 0),
	}
	ev := event(t, "acme", &r)
	if ev.GetType() != trackingv1.EventType_EVENT_TYPE_FAILED || ev.GetFailureReason() != commonv1.FailureReason_FAILURE_REASON_UNREGISTERED ||
		ev.GetJourneyId() != "j" || ev.GetMessageId() != "m" || ev.GetTraceparent() != "tp" || ev.GetToken() != "tok" || ev.GetProfileId() != "p" ||
		ev.GetEventTime().AsTime().Unix() != 100 {
		t.Errorf("got %v", ev)
	}
	// The id is the same for the same outcome, and differs per tenant,
	// token and status.
	same := event(t, "acme", &r).GetEventId()
	sent := r
	sent.Status = delivery.StatusSent
	otherToken := r
	otherToken.Target.Token = "tok2"
	for name, id := range map[string]string{
		"other tenant": event(t, "beta", &r).GetEventId(),
		"other status": event(t, "acme", &sent).GetEventId(),
		"other token":  event(t, "acme", &otherToken).GetEventId(),
	} {
		if id == same {
			t.Errorf("%s: got the same event id %s", name, id)
		}
	}
	if ev.GetEventId() != same || len(same) > 128 {
		t.Errorf("event id %q: want deterministic and at most 128 bytes", same)
	}
	r.Status = delivery.StatusUnspecified
	if event(t, "acme", &r) != nil {
		t.Error("a result without a status became an event")
	}
}

// fullResult is a journey push's result with every field of an event set.
func fullResult(at time.Time) delivery.Result {
	return delivery.Result{
		IdempotencyKey: "journey/profile/token", MessageID: "msg_1", JourneyID: "jrn_1",
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		Target: delivery.Target{Token: strings.Repeat("ab", 32), Platform: commonv1.Platform_PLATFORM_APNS,
			AppID: "com.example.shop", ProfileID: "01JD3Z5V4Q9W8X7Y6Z5A4B3C2D"},
		Status: delivery.StatusSent, Time: at,
	}
}

// TestAppendEvent checks the hand-written encoding against proto.Marshal
// of the same event, byte for byte.
func TestAppendEvent(t *testing.T) {
	full := fullResult(time.Unix(1_700_000_000, 123_456_789))
	failed := full
	failed.Status, failed.Reason = delivery.StatusFailed, commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
	excluded := full
	excluded.Status, excluded.Exclusion = delivery.StatusExcluded, commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT
	bare := delivery.Result{Status: delivery.StatusSent} // every optional field empty, zero time
	epoch := delivery.Result{Status: delivery.StatusFailed, Time: time.Unix(0, 0)}
	before1970 := delivery.Result{Status: delivery.StatusSent, Time: time.Unix(-86_400, 5), Target: delivery.Target{Token: "ü-tök"}}
	for name, r := range map[string]delivery.Result{
		"sent": full, "failed": failed, "excluded": excluded, "bare": bare, "epoch": epoch, "before 1970": before1970,
	} {
		t.Run(name, func(t *testing.T) {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(referenceEvent("tenant-a", &r))
			if err != nil {
				t.Fatal(err)
			}
			got, ok := appendEvent(nil, "tenant-a", &r)
			if !ok || !bytes.Equal(got, want) {
				t.Fatalf("appendEvent = %x (%v)\nproto.Marshal = %x", got, ok, want)
			}
		})
	}
}

func BenchmarkRecordEncoding(b *testing.B) {
	r := fullResult(time.Now())
	b.Run("appendEvent", func(b *testing.B) {
		for b.Loop() {
			buf := make([]byte, 0, 320)
			_, _ = appendEvent(buf, "tenant-a", &r)
		}
	})
	b.Run("proto.Marshal", func(b *testing.B) {
		for b.Loop() {
			_, _ = proto.Marshal(referenceEvent("tenant-a", &r))
		}
	})
}

type fakeProfiles struct {
	profilev1.UnimplementedProfileServiceServer
	ListPushTokensFunc func(context.Context, *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error)
}

func (f *fakeProfiles) ListPushTokens(ctx context.Context, req *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
	return f.ListPushTokensFunc(ctx, req)
}

func TestProfileTokens(t *testing.T) {
	fake := &fakeProfiles{}
	conn := grpctest.Start(t, func(s *grpc.Server) { profilev1.RegisterProfileServiceServer(s, fake) })
	p := &Profiles{Client: profilev1.NewProfileServiceClient(conn)}
	active := profilev1.TokenState_TOKEN_STATE_ACTIVE
	fake.ListPushTokensFunc = func(ctx context.Context, req *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
		if got := tenant.FromContext(ctx); got != "acme" {
			t.Errorf("profilesvc saw tenant %q, want acme", got)
		}
		if req.GetIncludeInactive() || len(req.GetAppIds()) != 1 {
			t.Errorf("request: got %v, want active tokens of one app", req)
		}
		return &profilev1.ListPushTokensResponse{Tokens: []*profilev1.PushToken{
			{Token: "a", Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.x", State: active, ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX},
			{Token: "b", Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.x", State: active},
			{Token: "c", Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.x", State: profilev1.TokenState_TOKEN_STATE_INACTIVE},
			{Token: "d", Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.y", State: active},
		}}, nil
	}
	ctx := tenant.With(context.Background(), "acme")
	got, err := p.ProfileTokens(ctx, delivery.ProfileTarget{ProfileID: "p1", AppIDs: []string{"com.x"}, Platforms: []commonv1.Platform{commonv1.Platform_PLATFORM_APNS}})
	if err != nil || len(got) != 1 || got[0].Token != "a" || got[0].APNsEnvironment != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX {
		t.Errorf("got %v, %v; want only the active APNs token of com.x with its environment", got, err)
	}
	fake.ListPushTokensFunc = func(context.Context, *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
		return nil, status.Error(codes.NotFound, "no such profile")
	}
	if _, err := p.ProfileTokens(ctx, delivery.ProfileTarget{ProfileID: "p2"}); !errors.Is(err, delivery.ErrProfileNotFound) {
		t.Errorf("unknown profile: got %v, want ErrProfileNotFound", err)
	}
}

func TestFeedbackReasons(t *testing.T) {
	for reason, want := range map[commonv1.FailureReason]profilev1.FeedbackReason{
		commonv1.FailureReason_FAILURE_REASON_UNREGISTERED:               profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED,
		commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN:           profilev1.FeedbackReason_FEEDBACK_REASON_BAD_DEVICE_TOKEN,
		commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC: profilev1.FeedbackReason_FEEDBACK_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC,
		commonv1.FailureReason_FAILURE_REASON_EXPIRED_TOKEN:              profilev1.FeedbackReason_FEEDBACK_REASON_EXPIRED_TOKEN,
	} {
		if got, ok := feedbackReason(reason); !ok || got != want {
			t.Errorf("feedbackReason(%v): got %v %v, want %v", reason, got, ok, want)
		}
	}
	if _, ok := feedbackReason(commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED); ok {
		t.Error("a rate limit became token feedback")
	}
}
