package grpcapi_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

// TestTenantIsolationPerRPC runs every RPC that writes or scans in two
// tenants that use the same customer ids and the same tokens, and checks
// that nothing one tenant does shows in, or changes, the other (nor the
// default tenant).
func TestTenantIsolationPerRPC(t *testing.T) {
	e := newEnv(t, store.Options{})
	ctx := ctxFor(t)
	red, blue := withTenant(ctx, "red"), withTenant(ctx, "blue")
	tenants := map[string]context.Context{"red": red, "blue": blue, "default": ctx}
	row := func(customer, token, tier string) *profilev1.ImportRow {
		attrs, _ := structpb.NewStruct(map[string]any{"tier": tier})
		return &profilev1.ImportRow{CustomerId: customer, Token: token, Platform: apns, AppId: "com.example", SourceTime: at(1), Attributes: attrs}
	}
	// tokens lists a customer's tokens as "token:state", "" when the
	// customer has no profile in the tenant.
	tokens := func(tctx context.Context, customer string) string {
		t.Helper()
		l, err := e.client.ListPushTokens(tctx, &profilev1.ListPushTokensRequest{Profile: byCustomer(customer), IncludeInactive: true})
		if err != nil {
			wantStatus(t, err, codes.NotFound, "")
			return ""
		}
		var out []string
		for _, tk := range l.GetTokens() {
			out = append(out, tk.GetToken()+":"+strings.TrimPrefix(tk.GetState().String(), "TOKEN_STATE_"))
		}
		return strings.Join(out, ",")
	}
	profileID := func(tctx context.Context, customer string) string {
		t.Helper()
		return must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(tctx, &profilev1.GetProfileRequest{Profile: byCustomer(customer)})).GetProfile().GetProfileId()
	}
	// audience lists a query's members as "customer:token,token", in
	// profile id order, and checks the scanned count.
	audience := func(tctx context.Context, cond string, wantScanned int64) string {
		t.Helper()
		var out []string
		var scanned int64
		for _, resp := range queryAll(t, tctx, e.client, &profilev1.QueryAudienceRequest{Condition: cond}) {
			scanned = resp.GetStats().GetScanned()
			for _, m := range resp.GetMembers() {
				customer := ""
				for _, idn := range m.GetIdentities() {
					if idn.GetNamespace() == "customer_id" {
						customer = idn.GetValue()
					}
				}
				var toks []string
				for _, tk := range m.GetTokens() {
					toks = append(toks, tk.GetToken())
				}
				out = append(out, customer+":"+strings.Join(toks, ","))
			}
		}
		if scanned != wantScanned {
			t.Errorf("QueryAudience(%q) scanned %d profiles, want %d", cond, scanned, wantScanned)
		}
		return strings.Join(out, " ")
	}
	check := func(what, got, want string) {
		t.Helper()
		if got != want {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
	}

	// ImportTokens: both tenants import customer C1 with tokens aa01 and
	// aa03; red also has C2 (aa02), blue C3 (bb01). Each import creates
	// everything: neither sees, moves or updates the other's.
	for name, imp := range map[string][]*profilev1.ImportRow{
		"red":  {row("C1", "aa01", "gold"), row("C1", "aa03", "gold"), row("C2", "aa02", "gold")},
		"blue": {row("C1", "aa01", "silver"), row("C1", "aa03", "silver"), row("C3", "bb01", "silver")},
	} {
		r := importAll(t, tenants[name], e.client, imp, 2)
		if r.GetCreated() != 3 || r.GetProfilesCreated() != 2 || r.GetMoved()+r.GetUpdated()+r.GetUnchanged()+r.GetRejected() != 0 {
			t.Errorf("import in %s: got %v, want 3 tokens and 2 profiles created", name, r)
		}
	}
	for _, c := range []struct{ tenant, customer, want string }{
		{"red", "C1", "aa01:ACTIVE,aa03:ACTIVE"}, {"red", "C2", "aa02:ACTIVE"}, {"red", "C3", ""},
		{"blue", "C1", "aa01:ACTIVE,aa03:ACTIVE"}, {"blue", "C2", ""}, {"blue", "C3", "bb01:ACTIVE"},
		{"default", "C1", ""}, {"default", "C2", ""}, {"default", "C3", ""},
	} {
		check("after the imports, tokens of "+c.customer+" in "+c.tenant, tokens(tenants[c.tenant], c.customer), c.want)
	}
	redC1, blueC1, redC2 := profileID(red, "C1"), profileID(blue, "C1"), profileID(red, "C2")
	if redC1 == blueC1 {
		t.Fatalf("C1 has profile %s in both tenants", redC1)
	}
	tier := func(tctx context.Context, customer string) string {
		p := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(tctx, &profilev1.GetProfileRequest{Profile: byCustomer(customer)}))
		return p.GetProfile().GetAttributes().GetFields()["tier"].GetStringValue()
	}
	check("red C1's tier", tier(red, "C1"), "gold")
	check("blue C1's tier", tier(blue, "C1"), "silver")

	// QueryAudience streams only the tenant's own profiles.
	check("red's audience", audience(red, "", 2), "C1:aa01,aa03 C2:aa02")
	check("blue's audience", audience(blue, "", 2), "C1:aa01,aa03 C3:bb01")
	check("default's audience", audience(ctx, "", 0), "")
	check("blue's gold audience", audience(blue, `attributes.tier == "gold"`, 2), "")

	// ReportTokenFeedback in blue deactivates blue's aa01 only; red's aa02
	// is unknown to blue.
	fb := must[*profilev1.ReportTokenFeedbackResponse](t)(e.client.ReportTokenFeedback(blue, &profilev1.ReportTokenFeedbackRequest{Feedback: []*profilev1.TokenFeedback{
		{Token: "aa01", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: at(5)},
		{Token: "aa02", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: at(5)},
	}}))
	if fb.GetDeactivated() != 1 || fb.GetUnknown() != 1 {
		t.Errorf("feedback in blue: got %v, want aa01 deactivated and aa02 unknown", fb)
	}
	check("after blue's feedback, red C1", tokens(red, "C1"), "aa01:ACTIVE,aa03:ACTIVE")
	check("after blue's feedback, red C2", tokens(red, "C2"), "aa02:ACTIVE")
	check("after blue's feedback, blue C1", tokens(blue, "C1"), "aa01:INACTIVE,aa03:ACTIVE")

	// UnregisterPushToken in red: red's aa03 only; blue's bb01 is not
	// red's to unregister.
	must[*profilev1.UnregisterPushTokenResponse](t)(e.client.UnregisterPushToken(red, &profilev1.UnregisterPushTokenRequest{Token: "aa03", Platform: apns, AppId: "com.example"}))
	_, err := e.client.UnregisterPushToken(red, &profilev1.UnregisterPushTokenRequest{Token: "bb01", Platform: apns, AppId: "com.example"})
	wantStatus(t, err, codes.NotFound, "token")
	check("after red's unregister, red C1", tokens(red, "C1"), "aa01:ACTIVE,aa03:INACTIVE")
	check("after red's unregister, blue C1", tokens(blue, "C1"), "aa01:INACTIVE,aa03:ACTIVE")
	check("after red's unregister, blue C3", tokens(blue, "C3"), "bb01:ACTIVE")

	// DeleteProfile: blue cannot delete red's C2 by its id; red deleting
	// its C1 leaves blue's C1.
	_, err = e.client.DeleteProfile(blue, &profilev1.DeleteProfileRequest{Profile: byID(redC2)})
	wantStatus(t, err, codes.NotFound, "")
	check("after blue deleted red's C2 id, red C2", tokens(red, "C2"), "aa02:ACTIVE")
	del := must[*profilev1.DeleteProfileResponse](t)(e.client.DeleteProfile(red, &profilev1.DeleteProfileRequest{Profile: byCustomer("C1")}))
	if del.GetProfileId() != redC1 || del.GetTokensDeleted() != 2 {
		t.Errorf("delete in red: got %v, want profile %s with 2 tokens", del, redC1)
	}
	check("after red deleted C1, red C1", tokens(red, "C1"), "")
	check("after red deleted C1, blue C1", tokens(blue, "C1"), "aa01:INACTIVE,aa03:ACTIVE")
	if got := profileID(blue, "C1"); got != blueC1 {
		t.Errorf("blue C1 is profile %s, want %s", got, blueC1)
	}

	// The audiences after all that: each tenant's own changes only.
	check("red's final audience", audience(red, "", 1), "C2:aa02")
	check("blue's final audience", audience(blue, "", 2), "C1:aa03 C3:bb01")
	check("default's final audience", audience(ctx, "", 0), "")
}
