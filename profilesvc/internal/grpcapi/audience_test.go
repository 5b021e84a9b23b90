package grpcapi_test

import (
	"context"
	"fmt"
	"maps"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

func queryAll(t testing.TB, ctx context.Context, c profilev1.ProfileServiceClient, req *profilev1.QueryAudienceRequest) []*profilev1.QueryAudienceResponse {
	t.Helper()
	stream, err := c.QueryAudience(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*profilev1.QueryAudienceResponse
	for {
		resp, err := stream.Recv()
		if isEOF(err) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, resp)
	}
}

func TestQueryAudienceOverGRPC(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	// 60 customers: tier gold for even ones, locale en for i%3 != 2; every
	// customer has an APNs token, multiples of 4 an FCM one too; C5 opted
	// out; C10 has no token at all.
	var rows []*profilev1.ImportRow
	for i := 0; i < 60; i++ {
		if i == 10 {
			continue
		}
		attrs, _ := structpb.NewStruct(map[string]any{
			"tier":      []string{"gold", "silver"}[i%2],
			"locale":    []string{"en-GB", "en-US", "fr-FR"}[i%3],
			"firstName": fmt.Sprintf("Ada%d", i),
		})
		rows = append(rows, &profilev1.ImportRow{CustomerId: fmt.Sprintf("C%d", i), Token: fmt.Sprintf("%04x", i), Platform: apns, AppId: "com.example.ios", SourceTime: at(1), Attributes: attrs,
			ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX, DeviceId: fmt.Sprintf("iphone-%d", i)})
		if i%4 == 0 {
			rows = append(rows, &profilev1.ImportRow{CustomerId: fmt.Sprintf("C%d", i), Token: fmt.Sprintf("fcm-%d", i), Platform: fcm, AppId: "com.example.android", SourceTime: at(1)})
		}
	}
	importAll(t, ctx, e.client, rows, 25)
	attrs, _ := structpb.NewStruct(map[string]any{"tier": "gold", "locale": "en-GB"})
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C10"}}, Attributes: attrs}))
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C4"}},
		Consent: &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_OUT, UpdateTime: at(2)}}))

	cond := `attributes.tier == "gold" && attributes.locale.startsWith("en")`
	// gold: even i; en: i%3 != 2 → i in {0,4,6,10,12,16,18,22,24,28,30,34,36,40,42,46,48,52,54,58}
	resps := queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{Condition: cond, BatchSize: 3})
	var members []*profilev1.AudienceMember
	for _, r := range resps {
		members = append(members, r.GetMembers()...)
	}
	last := resps[len(resps)-1].GetStats()
	if last.GetScanned() != 60 || last.GetQualified() != 20 || len(members) != 20 {
		t.Fatalf("got scanned %d qualified %d members %d, want 60, 20, 20", last.GetScanned(), last.GetQualified(), len(members))
	}
	excluded := map[commonv1.ExclusionReason]int64{}
	for _, x := range last.GetExcluded() {
		excluded[x.GetReason()] = x.GetCount()
	}
	if excluded[commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT] != 1 || excluded[commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN] != 1 {
		t.Fatalf("got exclusions %v, want one without consent (C4) and one without token (C10)", excluded)
	}
	var tokens int64
	for _, m := range members {
		tokens += int64(len(m.GetTokens()))
		if m.GetExcluded() {
			continue
		}
		if m.GetAttributes().GetFields()["tier"].GetStringValue() != "gold" || len(m.GetIdentities()) != 1 {
			t.Fatalf("member %s: got attributes %v identities %v", m.GetProfileId(), m.GetAttributes(), m.GetIdentities())
		}
		for _, tk := range m.GetTokens() {
			if tk.GetState() != profilev1.TokenState_TOKEN_STATE_ACTIVE || tk.GetProfileId() != m.GetProfileId() {
				t.Fatalf("member %s: got token %v", m.GetProfileId(), tk)
			}
			if tk.GetPlatform() == apns && (tk.GetApnsEnvironment() != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX || tk.GetDeviceId() == "") {
				t.Fatalf("member %s: got APNs token %v, want sandbox with its device id", m.GetProfileId(), tk)
			}
		}
	}
	if last.GetTokens() != tokens {
		t.Fatalf("got stats tokens %d, want %d streamed", last.GetTokens(), tokens)
	}
	for i := 1; i < len(members); i++ {
		if members[i-1].GetProfileId() >= members[i].GetProfileId() {
			t.Fatalf("members out of profile id order")
		}
	}

	// Count only: the same stats, no members.
	counted := queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{Condition: cond, BatchSize: 3, CountOnly: true})
	for _, r := range counted {
		if len(r.GetMembers()) != 0 {
			t.Fatalf("count only: got %d members, want none", len(r.GetMembers()))
		}
	}
	got := counted[len(counted)-1].GetStats()
	gotExcluded := map[commonv1.ExclusionReason]int64{}
	for _, x := range got.GetExcluded() {
		gotExcluded[x.GetReason()] = x.GetCount()
	}
	if got.GetScanned() != last.GetScanned() || got.GetQualified() != last.GetQualified() || got.GetTokens() != tokens || !maps.Equal(gotExcluded, excluded) {
		t.Fatalf("count only: got stats %v, want %v", got, last)
	}

	// Resume after the third message: exactly the members after it.
	resumed := queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{Condition: cond, BatchSize: 3, StartAfterProfileId: resps[2].GetResumeAfterProfileId()})
	var rest []string
	for _, r := range resumed {
		for _, m := range r.GetMembers() {
			rest = append(rest, m.GetProfileId())
		}
	}
	if len(rest) != 20-9 || rest[0] != members[9].GetProfileId() {
		t.Fatalf("resumed: got %d members starting %v, want 11 starting %s", len(rest), rest, members[9].GetProfileId())
	}

	// App filter and limit.
	android := queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{Condition: cond, AppIds: []string{"com.example.android"}, Limit: 5, RequireExplicitConsent: false})
	var n int
	for _, r := range android {
		for _, m := range r.GetMembers() {
			n++
			for _, tk := range m.GetTokens() {
				if tk.GetAppId() != "com.example.android" {
					t.Fatalf("got token of app %s, want only com.example.android", tk.GetAppId())
				}
			}
		}
	}
	if n != 5 {
		t.Fatalf("got %d members with limit 5, want 5", n)
	}

	// Explicit consent: nobody recorded consent except C4's opt-out.
	strict := queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{Condition: cond, RequireExplicitConsent: true})
	for _, r := range strict {
		for _, m := range r.GetMembers() {
			if !m.GetExcluded() {
				t.Fatalf("member %s reachable without explicit consent", m.GetProfileId())
			}
		}
	}
}

// TestQueryAudienceMemberFields: members carry only the attributes and
// identity namespaces asked for, while the condition still sees the whole
// profile; without a selection they carry everything.
func TestQueryAudienceMemberFields(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	attrs, _ := structpb.NewStruct(map[string]any{
		"tier": "gold", "locale": "fr-FR", "firstName": "Ada", "ltv": 1234.5,
		"address": map[string]any{"city": "Lyon"}, "segments": []any{"a", "b"},
	})
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C1"}, {Namespace: "email", Value: "ada@example.com"}},
		Attributes: attrs,
	}))
	importAll(t, ctx, e.client, []*profilev1.ImportRow{{CustomerId: "C1", Token: "abcd", Platform: apns, AppId: "com.example.ios", SourceTime: at(1)}}, 1)

	member := func(req *profilev1.QueryAudienceRequest) *profilev1.AudienceMember {
		t.Helper()
		req.Condition = `attributes.ltv > 1000.0 && "email" in identities`
		var got []*profilev1.AudienceMember
		for _, r := range queryAll(t, ctx, e.client, req) {
			got = append(got, r.GetMembers()...)
		}
		if len(got) != 1 || got[0].GetExcluded() || len(got[0].GetTokens()) != 1 {
			t.Fatalf("got members %v, want the one profile with its token", got)
		}
		return got[0]
	}
	keys := func(m *profilev1.AudienceMember) map[string]bool {
		out := map[string]bool{}
		for k := range m.GetAttributes().GetFields() {
			out[k] = true
		}
		for _, idn := range m.GetIdentities() {
			out["identity:"+idn.GetNamespace()] = true
		}
		return out
	}

	all := member(&profilev1.QueryAudienceRequest{})
	if want := 8; len(keys(all)) != want {
		t.Fatalf("no selection: got %v, want all 6 attributes and 2 identities", keys(all))
	}
	picked := member(&profilev1.QueryAudienceRequest{MemberFields: &profilev1.MemberFields{
		Attributes:         []string{"firstName", "address", "absent", "firstName"},
		IdentityNamespaces: []string{"email"},
	}})
	if got, want := keys(picked), map[string]bool{"firstName": true, "address": true, "identity:email": true}; !maps.Equal(got, want) {
		t.Fatalf("selection: got %v, want %v", got, want)
	}
	if picked.GetAttributes().GetFields()["address"].GetStructValue().GetFields()["city"].GetStringValue() != "Lyon" {
		t.Fatalf("selection: nested attribute lost: %v", picked.GetAttributes())
	}
	none := member(&profilev1.QueryAudienceRequest{MemberFields: &profilev1.MemberFields{}})
	if len(keys(none)) != 0 {
		t.Fatalf("empty selection: got %v, want nothing but the id and tokens", keys(none))
	}
}
