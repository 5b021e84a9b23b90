package remote

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

func TestEvent(t *testing.T) {
	ctx := tenant.With(context.Background(), "acme")
	r := delivery.Result{
		IdempotencyKey: "k", MessageID: "m", JourneyID: "j", TraceParent: "tp",
		Target: delivery.Target{Token: "tok", Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.x", ProfileID: "p"},
		Status: delivery.StatusFailed, Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, Time: time.Unix(100, 0),
	}
	ev := Event(ctx, &r)
	if ev.GetType() != trackingv1.EventType_EVENT_TYPE_FAILED || ev.GetFailureReason() != commonv1.FailureReason_FAILURE_REASON_UNREGISTERED ||
		ev.GetJourneyId() != "j" || ev.GetMessageId() != "m" || ev.GetTraceparent() != "tp" || ev.GetToken() != "tok" || ev.GetProfileId() != "p" ||
		ev.GetEventTime().AsTime().Unix() != 100 {
		t.Errorf("got %v", ev)
	}
	// The id is the same for the same outcome, and differs per tenant,
	// token and status.
	same := Event(ctx, &r).GetEventId()
	sent := r
	sent.Status = delivery.StatusSent
	otherToken := r
	otherToken.Target.Token = "tok2"
	for name, id := range map[string]string{
		"other tenant": Event(tenant.With(context.Background(), "beta"), &r).GetEventId(),
		"other status": Event(ctx, &sent).GetEventId(),
		"other token":  Event(ctx, &otherToken).GetEventId(),
	} {
		if id == same {
			t.Errorf("%s: got the same event id %s", name, id)
		}
	}
	if ev.GetEventId() != same || len(same) > 128 {
		t.Errorf("event id %q: want deterministic and at most 128 bytes", same)
	}
	r.Status = delivery.StatusUnspecified
	if Event(ctx, &r) != nil {
		t.Error("a result without a status became an event")
	}
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
