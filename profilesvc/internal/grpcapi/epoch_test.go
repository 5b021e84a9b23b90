package grpcapi_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

// TestEmptyTimestampIsNotUnset: a timestamp that is set but empty
// (google.protobuf.Timestamp{}, the epoch) is rejected like any other time
// not after 1970. It used to pass as "already reported": a registration was
// stored inactive (dead on arrival), consent was dated 1970, and a verdict
// was counted unchanged.
func TestEmptyTimestampIsNotUnset(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	epoch := func() *timestamppb.Timestamp { return &timestamppb.Timestamp{} }

	r := goodRegister()
	r.SourceTime = epoch()
	_, err := e.client.RegisterPushToken(ctx, r)
	wantStatus(t, err, codes.InvalidArgument, "source_time")
	l, err := e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: r.Profile, IncludeInactive: true})
	if err == nil && len(l.GetTokens()) > 0 {
		t.Fatalf("a rejected registration stored %v", l.GetTokens())
	}

	_, err = e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C"}},
		Consent:    &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_OUT, UpdateTime: epoch()},
	})
	wantStatus(t, err, codes.InvalidArgument, "consent.update_time")

	// The token the verdict is about exists (registered now).
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, goodRegister()))
	wantStatus(t, feedback(e, &profilev1.TokenFeedback{Token: goodAPNS, Platform: apns, AppId: "com.example",
		Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: epoch()})(ctx), codes.InvalidArgument, "feedback[1].gateway_time")

	resp := importAll(t, ctx, e.client, []*profilev1.ImportRow{
		{CustomerId: "B", Platform: fcm, AppId: "app", Token: "tok-ok", SourceTime: at(1)},
		{CustomerId: "B", Platform: fcm, AppId: "app", Token: "tok-epoch", SourceTime: epoch()},
	}, 2)
	if resp.GetCreated() != 1 || resp.GetRejected() != 1 || len(resp.GetRejectedRows()) != 1 ||
		resp.GetRejectedRows()[0].GetIndex() != 1 || resp.GetRejectedRows()[0].GetField() != "source_time" {
		t.Fatalf("import: got %v, want the epoch row rejected on source_time", resp)
	}
	l = must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer("B"), IncludeInactive: true}))
	if len(l.GetTokens()) != 1 || l.GetTokens()[0].GetToken() != "tok-ok" {
		t.Fatalf("import: got tokens %v, want only tok-ok", l.GetTokens())
	}
}
