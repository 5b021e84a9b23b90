package grpcapi_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

const goodAPNS = "740f4707bebcf74f9b7c25d48e3358945f6aa01da5ddb387462c7eaf61bb78ad"

func goodRegister() *profilev1.RegisterPushTokenRequest {
	return &profilev1.RegisterPushTokenRequest{Profile: byCustomer("C1"), Token: goodAPNS, Platform: apns, AppId: "com.example", SourceTime: at(1)}
}

func ident(ns, v string) *profilev1.ProfileRef {
	return &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: ns, Value: v}}}
}

// TestBadInputPerField sends one bad field at a time to every RPC and
// checks the code and the field named in the BadRequest detail.
func TestBadInputPerField(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	// A profile that exists, for NotFound checks to be about the right thing.
	if _, err := e.client.RegisterPushToken(ctx, goodRegister()); err != nil {
		t.Fatal(err)
	}
	other := goodRegister()
	other.Profile, other.Token = byCustomer("C2"), "abcdef"
	if _, err := e.client.RegisterPushToken(ctx, other); err != nil {
		t.Fatal(err)
	}
	future := timestamppb.New(timestamppb.Now().AsTime().Add(48 * 3600e9))
	unknownID := "01J0000000000000000000000Z"

	tests := []struct {
		name  string
		call  func(ctx context.Context) error
		code  codes.Code
		field string
	}{
		// RegisterPushToken
		{"register: no profile", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Profile = nil }), codes.InvalidArgument, "profile"},
		{"register: bad profile id", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Profile = byID("nope") }), codes.InvalidArgument, "profile.profile_id"},
		{"register: unknown profile id", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Profile = byID(unknownID) }), codes.NotFound, "profile.profile_id"},
		{"register: bad namespace", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Profile = ident("Customer ID", "x") }), codes.InvalidArgument, "profile.identity.namespace"},
		{"register: empty identity value", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Profile = ident("customer_id", "") }), codes.InvalidArgument, "profile.identity.value"},
		{"register: no platform", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Platform = 0 }), codes.InvalidArgument, "platform"},
		{"register: unknown platform", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Platform = 7 }), codes.InvalidArgument, "platform"},
		{"register: empty token", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Token = "" }), codes.InvalidArgument, "token"},
		{"register: non-hex APNs token", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Token = "xyz" }), codes.InvalidArgument, "token"},
		{"register: FCM token with a space", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Platform, r.Token = fcm, "a b" }), codes.InvalidArgument, "token"},
		{"register: FCM token too long", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Platform, r.Token = fcm, strings.Repeat("a", 4097) }), codes.InvalidArgument, "token"},
		{"register: missing app id", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.AppId = "" }), codes.InvalidArgument, "app_id"},
		{"register: app id with a space", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.AppId = "com. example" }), codes.InvalidArgument, "app_id"},
		{"register: unknown environment", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.ApnsEnvironment = 9 }), codes.InvalidArgument, "apns_environment"},
		{"register: device id too long", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.DeviceId = strings.Repeat("d", 257) }), codes.InvalidArgument, "device_id"},
		{"register: device model with a newline", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Device = &commonv1.DeviceInfo{Model: "a\nb"} }), codes.InvalidArgument, "device.model"},
		{"register: source time in the future", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.SourceTime = future }), codes.InvalidArgument, "source_time"},
		{"register: source time before 1970", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.SourceTime = &timestamppb.Timestamp{Seconds: -10} }), codes.InvalidArgument, "source_time"},
		{"register: invalid timestamp", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.SourceTime = &timestamppb.Timestamp{Nanos: -1} }), codes.InvalidArgument, "source_time"},
		{"register: source label too long", reg(e, func(r *profilev1.RegisterPushTokenRequest) { r.Source = strings.Repeat("s", 65) }), codes.InvalidArgument, "source"},

		// UpsertProfile
		{"upsert: bad profile id", upsert(e, &profilev1.UpsertProfileRequest{ProfileId: "x"}), codes.InvalidArgument, "profile_id"},
		{"upsert: unknown profile id", upsert(e, &profilev1.UpsertProfileRequest{ProfileId: unknownID}), codes.NotFound, "profile_id"},
		{"upsert: bad identity namespace", upsert(e, &profilev1.UpsertProfileRequest{Identities: []*profilev1.Identity{{Namespace: "ok", Value: "1"}, {Namespace: "", Value: "x"}}}), codes.InvalidArgument, "identities[1].namespace"},
		{"upsert: identity of another profile", upsert(e, &profilev1.UpsertProfileRequest{Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C2"}, {Namespace: "customer_id", Value: "C1"}}}), codes.AlreadyExists, "identities[1]"},
		{"upsert: bad attribute key", upsert(e, &profilev1.UpsertProfileRequest{Attributes: &structpb.Struct{Fields: map[string]*structpb.Value{"": structpb.NewStringValue("x")}}}), codes.InvalidArgument, "attributes."},
		{"upsert: unknown consent", upsert(e, &profilev1.UpsertProfileRequest{Consent: &profilev1.PushConsent{State: 9}}), codes.InvalidArgument, "consent.state"},
		{"upsert: consent in the future", upsert(e, &profilev1.UpsertProfileRequest{Consent: &profilev1.PushConsent{State: 1, UpdateTime: future}}), codes.InvalidArgument, "consent.update_time"},

		// GetProfile / DeleteProfile
		{"get: no ref", func(ctx context.Context) error {
			_, err := e.client.GetProfile(ctx, &profilev1.GetProfileRequest{})
			return err
		}, codes.InvalidArgument, "profile"},
		{"get: unknown identity", func(ctx context.Context) error {
			_, err := e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer("nobody")})
			return err
		}, codes.NotFound, "profile.identity"},
		{"get: unknown id", func(ctx context.Context) error {
			_, err := e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byID(unknownID)})
			return err
		}, codes.NotFound, "profile.profile_id"},
		{"delete: bad id", func(ctx context.Context) error {
			_, err := e.client.DeleteProfile(ctx, &profilev1.DeleteProfileRequest{Profile: byID("bad")})
			return err
		}, codes.InvalidArgument, "profile.profile_id"},
		{"delete: unknown identity", func(ctx context.Context) error {
			_, err := e.client.DeleteProfile(ctx, &profilev1.DeleteProfileRequest{Profile: byCustomer("nobody")})
			return err
		}, codes.NotFound, "profile.identity"},

		// UnregisterPushToken
		{"unregister: unknown token", unreg(e, &profilev1.UnregisterPushTokenRequest{Token: "abcd", Platform: apns, AppId: "com.example"}), codes.NotFound, "token"},
		{"unregister: bad token", unreg(e, &profilev1.UnregisterPushTokenRequest{Token: "zz", Platform: apns, AppId: "com.example"}), codes.InvalidArgument, "token"},
		{"unregister: no platform", unreg(e, &profilev1.UnregisterPushTokenRequest{Token: "ab", AppId: "com.example"}), codes.InvalidArgument, "platform"},
		{"unregister: no app", unreg(e, &profilev1.UnregisterPushTokenRequest{Token: "ab", Platform: apns}), codes.InvalidArgument, "app_id"},
		{"unregister: REPLACED is not for callers", unreg(e, &profilev1.UnregisterPushTokenRequest{Token: goodAPNS, Platform: apns, AppId: "com.example", Reason: profilev1.InactiveReason_INACTIVE_REASON_REPLACED}), codes.InvalidArgument, "reason"},
		{"unregister: unknown reason", unreg(e, &profilev1.UnregisterPushTokenRequest{Token: goodAPNS, Platform: apns, AppId: "com.example", Reason: 42}), codes.InvalidArgument, "reason"},

		// ListPushTokens
		{"list: no ref", list(e, &profilev1.ListPushTokensRequest{}), codes.InvalidArgument, "profile"},
		{"list: unknown profile", list(e, &profilev1.ListPushTokensRequest{Profile: byCustomer("nobody")}), codes.NotFound, "profile.identity"},
		{"list: empty app id", list(e, &profilev1.ListPushTokensRequest{Profile: byCustomer("C1"), AppIds: []string{"com.example", ""}}), codes.InvalidArgument, "app_ids[1]"},

		// ReportTokenFeedback
		{"feedback: no reason", feedback(e, &profilev1.TokenFeedback{Token: goodAPNS, Platform: apns, AppId: "com.example"}), codes.InvalidArgument, "feedback[1].reason"},
		{"feedback: bad token", feedback(e, &profilev1.TokenFeedback{Token: "<>", Platform: apns, AppId: "com.example", Reason: 1}), codes.InvalidArgument, "feedback[1].token"},
		{"feedback: no platform", feedback(e, &profilev1.TokenFeedback{Token: "ab", AppId: "com.example", Reason: 1}), codes.InvalidArgument, "feedback[1].platform"},
		{"feedback: no app", feedback(e, &profilev1.TokenFeedback{Token: "ab", Platform: apns, Reason: 1}), codes.InvalidArgument, "feedback[1].app_id"},
		{"feedback: gateway time in the future", feedback(e, &profilev1.TokenFeedback{Token: "ab", Platform: apns, AppId: "com.example", Reason: 1, GatewayTime: future}), codes.InvalidArgument, "feedback[1].gateway_time"},
		{"feedback: too many", func(ctx context.Context) error {
			req := &profilev1.ReportTokenFeedbackRequest{}
			for i := 0; i < 10_001; i++ {
				req.Feedback = append(req.Feedback, &profilev1.TokenFeedback{Token: "ab", Platform: apns, AppId: "a", Reason: 1})
			}
			_, err := e.client.ReportTokenFeedback(ctx, req)
			return err
		}, codes.InvalidArgument, "feedback"},

		// QueryAudience
		{"audience: condition does not compile", audience(e, &profilev1.QueryAudienceRequest{Condition: "attributes.tier =="}), codes.InvalidArgument, "condition"},
		{"audience: condition not boolean", audience(e, &profilev1.QueryAudienceRequest{Condition: "profile_id"}), codes.InvalidArgument, "condition"},
		{"audience: undeclared variable", audience(e, &profilev1.QueryAudienceRequest{Condition: "tier == 'gold'"}), codes.InvalidArgument, "condition"},
		{"audience: batch too big", audience(e, &profilev1.QueryAudienceRequest{BatchSize: 5001}), codes.InvalidArgument, "batch_size"},
		{"audience: negative batch", audience(e, &profilev1.QueryAudienceRequest{BatchSize: -1}), codes.InvalidArgument, "batch_size"},
		{"audience: negative limit", audience(e, &profilev1.QueryAudienceRequest{Limit: -1}), codes.InvalidArgument, "limit"},
		{"audience: bad resume id", audience(e, &profilev1.QueryAudienceRequest{StartAfterProfileId: "nope"}), codes.InvalidArgument, "start_after_profile_id"},
		{"audience: unknown platform", audience(e, &profilev1.QueryAudienceRequest{Platforms: []commonv1.Platform{apns, 0}}), codes.InvalidArgument, "platforms[1]"},
		{"audience: empty app id", audience(e, &profilev1.QueryAudienceRequest{AppIds: []string{""}}), codes.InvalidArgument, "app_ids[0]"},
		{"audience: empty attribute name", audience(e, &profilev1.QueryAudienceRequest{MemberFields: &profilev1.MemberFields{Attributes: []string{"tier", ""}}}), codes.InvalidArgument, "member_fields.attributes[1]"},
		{"audience: attribute name too long", audience(e, &profilev1.QueryAudienceRequest{MemberFields: &profilev1.MemberFields{Attributes: []string{strings.Repeat("a", 257)}}}), codes.InvalidArgument, "member_fields.attributes[0]"},
		{"audience: too many attributes", audience(e, &profilev1.QueryAudienceRequest{MemberFields: &profilev1.MemberFields{Attributes: make([]string, 257)}}), codes.InvalidArgument, "member_fields.attributes"},
		{"audience: bad identity namespace", audience(e, &profilev1.QueryAudienceRequest{MemberFields: &profilev1.MemberFields{IdentityNamespaces: []string{"Customer ID"}}}), codes.InvalidArgument, "member_fields.identity_namespaces[0]"},
		{"audience: too many namespaces", audience(e, &profilev1.QueryAudienceRequest{MemberFields: &profilev1.MemberFields{IdentityNamespaces: make([]string, 65)}}), codes.InvalidArgument, "member_fields.identity_namespaces"},

		// Tenant metadata
		{"bad tenant", func(ctx context.Context) error {
			_, err := e.client.GetProfile(withTenant(ctx, "Bad Tenant!"), &profilev1.GetProfileRequest{Profile: byCustomer("C1")})
			return err
		}, codes.InvalidArgument, "metadata.x-pushmesh-tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantStatus(t, tt.call(ctx), tt.code, tt.field)
		})
	}
}

func reg(e *env, mutate func(*profilev1.RegisterPushTokenRequest)) func(context.Context) error {
	return func(ctx context.Context) error {
		r := goodRegister()
		mutate(r)
		_, err := e.client.RegisterPushToken(ctx, r)
		return err
	}
}

func upsert(e *env, r *profilev1.UpsertProfileRequest) func(context.Context) error {
	return func(ctx context.Context) error { _, err := e.client.UpsertProfile(ctx, r); return err }
}

func unreg(e *env, r *profilev1.UnregisterPushTokenRequest) func(context.Context) error {
	return func(ctx context.Context) error { _, err := e.client.UnregisterPushToken(ctx, r); return err }
}

func list(e *env, r *profilev1.ListPushTokensRequest) func(context.Context) error {
	return func(ctx context.Context) error { _, err := e.client.ListPushTokens(ctx, r); return err }
}

// feedback sends a valid verdict followed by f, so the violation is on
// feedback[1].
func feedback(e *env, f *profilev1.TokenFeedback) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := e.client.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{Feedback: []*profilev1.TokenFeedback{
			{Token: goodAPNS, Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: at(0)},
			f,
		}})
		return err
	}
}

func audience(e *env, r *profilev1.QueryAudienceRequest) func(context.Context) error {
	return func(ctx context.Context) error { return drainAudience(ctx, e.client, r) }
}

// drainAudience runs an audience query and reads it to its end.
func drainAudience(ctx context.Context, c profilev1.ProfileServiceClient, r *profilev1.QueryAudienceRequest) error {
	stream, err := c.QueryAudience(ctx, r)
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if isEOF(err) {
				return nil
			}
			return err
		}
	}
}
