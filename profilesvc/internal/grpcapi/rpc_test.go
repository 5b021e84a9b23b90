package grpcapi_test

import (
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

func registerReq(customer, token string, sec int, device string) *profilev1.RegisterPushTokenRequest {
	return &profilev1.RegisterPushTokenRequest{Profile: byCustomer(customer), Token: token, Platform: apns, AppId: "com.example",
		SourceTime: at(sec), DeviceId: device, Source: "ios-sdk", ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION}
}

func TestRegisterRulesOverGRPC(t *testing.T) {
	type call struct {
		req          *profilev1.RegisterPushTokenRequest
		wantOutcome  profilev1.RegistrationOutcome
		wantOwner    string // customer id
		wantState    profilev1.TokenState
		wantReplaced []string
	}
	tests := []struct {
		name  string
		calls []call
	}{
		{"create then same again", []call{
			{registerReq("A", "aa01", 1, ""), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_CREATED, "A", profilev1.TokenState_TOKEN_STATE_ACTIVE, nil},
			{registerReq("A", "aa01", 1, ""), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_UNCHANGED, "A", profilev1.TokenState_TOKEN_STATE_ACTIVE, nil},
			{registerReq("A", "AA01", 2, ""), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_UPDATED, "A", profilev1.TokenState_TOKEN_STATE_ACTIVE, nil},
		}},
		{"shared device: newer login moves, older does not", []call{
			{registerReq("A", "aa01", 1, ""), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_CREATED, "A", profilev1.TokenState_TOKEN_STATE_ACTIVE, nil},
			{registerReq("B", "aa01", 2, ""), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_MOVED, "B", profilev1.TokenState_TOKEN_STATE_ACTIVE, nil},
			{registerReq("A", "aa01", 1, ""), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_UNCHANGED, "B", profilev1.TokenState_TOKEN_STATE_ACTIVE, nil},
		}},
		{"rotation", []call{
			{registerReq("A", "aa01", 1, "iphone"), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_CREATED, "A", profilev1.TokenState_TOKEN_STATE_ACTIVE, nil},
			{registerReq("A", "aa02", 2, "iphone"), profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_CREATED, "A", profilev1.TokenState_TOKEN_STATE_ACTIVE, []string{"aa01"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, store.Options{})
			ctx := ctxFor(t)
			for i, c := range tt.calls {
				resp, err := e.client.RegisterPushToken(ctx, c.req)
				if err != nil {
					t.Fatal(err)
				}
				owner := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer(c.wantOwner)}))
				if resp.GetOutcome() != c.wantOutcome || resp.GetToken().GetProfileId() != owner.GetProfile().GetProfileId() ||
					resp.GetToken().GetState() != c.wantState || !slices.Equal(resp.GetReplacedTokens(), c.wantReplaced) {
					t.Fatalf("call %d: got %v owner %s state %v replaced %v; want %v owner %s state %v replaced %v", i,
						resp.GetOutcome(), resp.GetToken().GetProfileId(), resp.GetToken().GetState(), resp.GetReplacedTokens(),
						c.wantOutcome, owner.GetProfile().GetProfileId(), c.wantState, c.wantReplaced)
				}
			}
		})
	}
}

func TestTokenHistoryAndListing(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("A", "aa01", 1, "")))
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("B", "aa01", 2, "")))
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("B", "bb01", 3, "")))
	fcmReq := registerReq("B", "fcm:token-1", 3, "")
	fcmReq.Platform, fcmReq.AppId = fcm, "com.android"
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, fcmReq))
	a := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer("A")}))
	b := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer("B")}))
	if got := b.GetProfile().GetActiveTokenCount(); got != 3 {
		t.Fatalf("got %d active tokens on B, want 3", got)
	}

	list := must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer("B"), IncludeHistory: true}))
	var order []string
	for _, tk := range list.GetTokens() {
		order = append(order, tk.GetAppId()+"/"+tk.GetToken())
	}
	if want := []string{"com.android/fcm:token-1", "com.example/aa01", "com.example/bb01"}; !slices.Equal(order, want) {
		t.Fatalf("got tokens %v, want %v (by app id, then token)", order, want)
	}
	h := list.GetTokens()[1].GetHistory()
	want := []*profilev1.TokenMove{
		{ToProfileId: a.GetProfile().GetProfileId(), Time: at(1), Source: "ios-sdk"},
		{FromProfileId: a.GetProfile().GetProfileId(), ToProfileId: b.GetProfile().GetProfileId(), Time: at(2), Source: "ios-sdk"},
	}
	if len(h) != 2 || !proto.Equal(h[0], want[0]) || !proto.Equal(h[1], want[1]) {
		t.Fatalf("got history %v, want %v", h, want)
	}
	tk := list.GetTokens()[1]
	if tk.GetApnsEnvironment() != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION || !proto.Equal(tk.GetSourceTime(), at(2)) {
		t.Fatalf("got env %v source %v, want production at(2)", tk.GetApnsEnvironment(), tk.GetSourceTime())
	}
	filtered := must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer("B"), AppIds: []string{"com.android"}}))
	if len(filtered.GetTokens()) != 1 || filtered.GetTokens()[0].GetHistory() != nil {
		t.Fatalf("got %v, want only the com.android token, without history", filtered.GetTokens())
	}
	if got := must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer("A"), IncludeInactive: true})); len(got.GetTokens()) != 0 {
		t.Fatalf("got %d tokens on A after the move, want 0", len(got.GetTokens()))
	}
}

func TestDeadTokensAndRevival(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("A", "aa01", 1, "")))
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("A", "aa02", 10, "")))
	fb := must[*profilev1.ReportTokenFeedbackResponse](t)(e.client.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{Feedback: []*profilev1.TokenFeedback{
		{Token: "aa01", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: at(5)},
		{Token: "AA02", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_BAD_DEVICE_TOKEN, GatewayTime: at(5)},
		{Token: "ffff", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: at(5)},
	}}))
	if fb.GetDeactivated() != 1 || fb.GetUnchanged() != 1 || fb.GetUnknown() != 1 {
		t.Fatalf("got %v, want 1 deactivated (aa01), 1 unchanged (aa02 registered after), 1 unknown", fb)
	}
	state := func() *profilev1.PushToken {
		l := must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer("A"), IncludeInactive: true}))
		return l.GetTokens()[0]
	}
	tk := state()
	if tk.GetState() != profilev1.TokenState_TOKEN_STATE_INACTIVE || tk.GetInactiveReason() != profilev1.InactiveReason_INACTIVE_REASON_UNREGISTERED || !proto.Equal(tk.GetGatewayInvalidTime(), at(5)) {
		t.Fatalf("got %v %v %v, want inactive, unregistered, gateway time at(5)", tk.GetState(), tk.GetInactiveReason(), tk.GetGatewayInvalidTime())
	}
	for _, c := range []struct {
		sec  int
		want profilev1.TokenState
	}{{4, profilev1.TokenState_TOKEN_STATE_INACTIVE}, {5, profilev1.TokenState_TOKEN_STATE_INACTIVE}, {6, profilev1.TokenState_TOKEN_STATE_ACTIVE}} {
		must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("A", "aa01", c.sec, "")))
		if got := state().GetState(); got != c.want {
			t.Fatalf("after a registration at %d (gateway at 5): got %v, want %v", c.sec, got, c.want)
		}
	}

	un := must[*profilev1.UnregisterPushTokenResponse](t)(e.client.UnregisterPushToken(ctx, &profilev1.UnregisterPushTokenRequest{Token: "aa02", Platform: apns, AppId: "com.example"}))
	if un.GetToken().GetState() != profilev1.TokenState_TOKEN_STATE_INACTIVE || un.GetToken().GetInactiveReason() != profilev1.InactiveReason_INACTIVE_REASON_UNINSTALLED {
		t.Fatalf("got %v, want inactive uninstalled", un.GetToken())
	}
	p := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer("A")}))
	if p.GetProfile().GetActiveTokenCount() != 1 {
		t.Fatalf("got %d active tokens, want 1", p.GetProfile().GetActiveTokenCount())
	}
}

func TestProfilesUpsertGetDelete(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	attrs, _ := structpb.NewStruct(map[string]any{"firstName": "Ada", "tier": "gold", "tags": []any{"a", "b"}})
	up := must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C1"}, {Namespace: "email", Value: "ada@example.com"}},
		Attributes: attrs,
		Consent:    &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_IN, UpdateTime: at(1)},
	}))
	if !up.GetCreated() {
		t.Fatalf("got created=false for a new profile")
	}
	id := up.GetProfile().GetProfileId()
	patch, _ := structpb.NewStruct(map[string]any{"tier": "silver", "tags": nil})
	up2 := must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{ProfileId: id, Attributes: patch}))
	if up2.GetCreated() {
		t.Fatalf("got created=true for an update")
	}
	want, _ := structpb.NewStruct(map[string]any{"firstName": "Ada", "tier": "silver"})
	got := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: ident("email", "ada@example.com")}))
	if !proto.Equal(got.GetProfile().GetAttributes(), want) || got.GetProfile().GetProfileId() != id ||
		got.GetProfile().GetConsent().GetState() != profilev1.ConsentState_CONSENT_STATE_OPTED_IN {
		t.Fatalf("got %v, want attributes %v and opted-in consent", got.GetProfile(), want)
	}

	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, registerReq("C1", "aa01", 1, "d1")))
	del := must[*profilev1.DeleteProfileResponse](t)(e.client.DeleteProfile(ctx, &profilev1.DeleteProfileRequest{Profile: byID(id)}))
	if del.GetProfileId() != id || del.GetTokensDeleted() != 1 {
		t.Fatalf("got %v, want profile %s with 1 token", del, id)
	}
	for _, ref := range []*profilev1.ProfileRef{byID(id), byCustomer("C1"), ident("email", "ada@example.com")} {
		_, err := e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: ref})
		wantStatus(t, err, codes.NotFound, "")
	}
	_, err := e.client.UnregisterPushToken(ctx, &profilev1.UnregisterPushTokenRequest{Token: "aa01", Platform: apns, AppId: "com.example"})
	wantStatus(t, err, codes.NotFound, "token")
	fb := must[*profilev1.ReportTokenFeedbackResponse](t)(e.client.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{Feedback: []*profilev1.TokenFeedback{
		{Token: "aa01", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED},
	}}))
	if fb.GetUnknown() != 1 {
		t.Fatalf("got %v after erasure, want the token unknown", fb)
	}
}

func TestTenantsOverGRPC(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	red := withTenant(ctx, "red")
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(red, registerReq("C1", "aa01", 1, "")))
	_, err := e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer("C1")})
	wantStatus(t, err, codes.NotFound, "profile.identity")
	must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(red, &profilev1.GetProfileRequest{Profile: byCustomer("C1")}))
}
