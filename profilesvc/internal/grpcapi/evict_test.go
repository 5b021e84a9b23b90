package grpcapi_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

// fillProfile imports n tokens for customer c, token i (fcmToken(i)) last
// seen at 1000-i, so that the order in which tokens were last seen is not
// the order of their numbers; device ids are set for the tokens devices
// names.
func fillProfile(t testing.TB, ctx context.Context, e *env, c string, n int, devices map[int]string) {
	t.Helper()
	var rows []*profilev1.ImportRow
	for i := 0; i < n; i++ {
		rows = append(rows, &profilev1.ImportRow{CustomerId: c, Platform: fcm, AppId: "app", Token: fcmToken(i), SourceTime: at(1000 - i), DeviceId: devices[i]})
	}
	if resp := importAll(t, ctx, e.client, rows, 50); resp.GetCreated() != int64(n) {
		t.Fatalf("got %v, want %d tokens created", resp, n)
	}
}

// deadToken reports token i of app "app" dead as a gateway would.
func deadToken(t testing.TB, ctx context.Context, e *env, i int, reason profilev1.FeedbackReason, gatewayTime int) {
	t.Helper()
	resp := must[*profilev1.ReportTokenFeedbackResponse](t)(e.client.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{
		Feedback: []*profilev1.TokenFeedback{{Token: fcmToken(i), Platform: fcm, AppId: "app", Reason: reason, GatewayTime: at(gatewayTime)}}}))
	if resp.GetDeactivated() != 1 {
		t.Fatalf("token %d: got %v, want it deactivated", i, resp)
	}
}

// tokenSet is the tokens of a profile by token string, checked against
// ListPushTokens' own count.
func tokenSet(t testing.TB, e *env, c string) map[string]*profilev1.PushToken {
	t.Helper()
	list := tokensOf(t, e, byCustomer(c))
	set := make(map[string]*profilev1.PushToken, len(list))
	for _, tok := range list {
		set[tok.GetToken()] = tok
	}
	if len(set) != len(list) {
		t.Fatalf("%s: ListPushTokens lists %d tokens, %d distinct", c, len(list), len(set))
	}
	return set
}

// wantTokens checks that the tokens of c are exactly MaxProfileTokens,
// that the inactive ones are the tokens numbered inactive, and that gone
// are not among them.
func wantTokens(t testing.TB, e *env, c string, inactive, gone []int) map[string]*profilev1.PushToken {
	t.Helper()
	set := tokenSet(t, e, c)
	if len(set) != profile.MaxProfileTokens {
		t.Fatalf("%s: got %d tokens, want %d", c, len(set), profile.MaxProfileTokens)
	}
	var gotInactive []string
	for tok, pt := range set {
		if pt.GetState() != profilev1.TokenState_TOKEN_STATE_ACTIVE {
			gotInactive = append(gotInactive, tok)
		}
	}
	var want []string
	for _, i := range inactive {
		want = append(want, fcmToken(i))
	}
	slices.Sort(gotInactive)
	slices.Sort(want)
	if !slices.Equal(gotInactive, want) {
		t.Fatalf("%s: got inactive tokens %q, want %q", c, gotInactive, want)
	}
	for _, i := range gone {
		if _, ok := set[fcmToken(i)]; ok {
			t.Fatalf("%s: token %d still listed, want it evicted", c, i)
		}
	}
	return set
}

// audienceTokens returns the tokens the audience streams for the member
// with profile id.
func audienceTokens(t testing.TB, ctx context.Context, e *env, id string) map[string]bool {
	t.Helper()
	for _, r := range queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{}) {
		for _, m := range r.GetMembers() {
			if m.GetProfileId() == id {
				out := map[string]bool{}
				for _, tok := range m.GetTokens() {
					out[tok.GetToken()] = true
				}
				return out
			}
		}
	}
	t.Fatalf("profile %s not in the audience", id)
	return nil
}

// TestFullProfileEvictsItsLeastRecentlySeenInactiveToken: a profile that
// has seen 100 tokens (rotations, reinstalls) used to refuse every new
// one, so the customer's new device silently stopped being reachable. A
// new token (registered, imported, or moved from another profile) now
// evicts the profile's least recently seen inactive token, and only a
// profile whose tokens are all active refuses it.
func TestFullProfileEvictsItsLeastRecentlySeenInactiveToken(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	// Tokens 50 and 51 are registered for the same device, 50 later: 51
	// is REPLACED.
	fillProfile(t, ctx, e, "P", profile.MaxProfileTokens, map[int]string{50: "phone", 51: "phone"})
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{
		Profile: byCustomer("Q"), Platform: fcm, AppId: "app", Token: fcmToken(700), SourceTime: at(1)}))
	// Dead tokens, last seen at: 51 949 (replaced), 40 960 (unregistered
	// by the app), 20 980 and 10 990 (reported by the gateway, 10 first).
	deadToken(t, ctx, e, 10, profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, 1500)
	deadToken(t, ctx, e, 20, profilev1.FeedbackReason_FEEDBACK_REASON_BAD_DEVICE_TOKEN, 2000)
	must[*profilev1.UnregisterPushTokenResponse](t)(e.client.UnregisterPushToken(ctx, &profilev1.UnregisterPushTokenRequest{
		Token: fcmToken(40), Platform: fcm, AppId: "app", Reason: profilev1.InactiveReason_INACTIVE_REASON_UNINSTALLED}))
	wantTokens(t, e, "P", []int{10, 20, 40, 51}, nil)

	// RegisterPushToken: 51 goes; 50 stays the device's current token.
	reg := &profilev1.RegisterPushTokenRequest{Profile: byCustomer("P"), Platform: fcm, AppId: "app", Token: fcmToken(1000), SourceTime: at(3000)}
	out := must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, reg))
	if out.GetOutcome() != profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_CREATED {
		t.Fatalf("got %v, want the token created", out.GetOutcome())
	}
	set := wantTokens(t, e, "P", []int{10, 20, 40}, []int{51})
	if set[fcmToken(1000)] == nil || set[fcmToken(50)].GetDeviceId() != "phone" {
		t.Fatalf("got %v and %v, want the new token and token 50 on its device", set[fcmToken(1000)], set[fcmToken(50)])
	}

	// An import row creating a token: 40 goes.
	resp := importAll(t, ctx, e.client, []*profilev1.ImportRow{{CustomerId: "P", Platform: fcm, AppId: "app", Token: fcmToken(1001), SourceTime: at(3000)}}, 1)
	if resp.GetCreated() != 1 || resp.GetRejected() != 0 {
		t.Fatalf("got %v, want the row's token created", resp)
	}
	wantTokens(t, e, "P", []int{10, 20}, []int{40, 51})

	// An import row moving Q's token to P: 20 goes, Q has none left.
	resp = importAll(t, ctx, e.client, []*profilev1.ImportRow{{CustomerId: "P", Platform: fcm, AppId: "app", Token: fcmToken(700), SourceTime: at(3000)}}, 1)
	if resp.GetMoved() != 1 || resp.GetRejected() != 0 {
		t.Fatalf("got %v, want the token moved", resp)
	}
	wantTokens(t, e, "P", []int{10}, []int{20, 40, 51})
	if n := len(tokenSet(t, e, "Q")); n != 0 {
		t.Fatalf("Q: got %d tokens, want none", n)
	}

	// The one consequence: token 20's gateway invalidation (at 2000) went
	// with it, so a stale registration (at 1200) creates it afresh, active,
	// evicting 10, the last inactive token.
	stale := &profilev1.RegisterPushTokenRequest{Profile: byCustomer("P"), Platform: fcm, AppId: "app", Token: fcmToken(20), SourceTime: at(1200)}
	out = must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, stale))
	if out.GetOutcome() != profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_CREATED ||
		out.GetToken().GetState() != profilev1.TokenState_TOKEN_STATE_ACTIVE || out.GetToken().GetGatewayInvalidTime() != nil {
		t.Fatalf("got %v, want token 20 created afresh, active", out)
	}
	wantTokens(t, e, "P", nil, []int{10, 40, 51})

	// Every token of P is active: a new one is refused, by either path,
	// and changes nothing.
	reg.Token = fcmToken(1002)
	_, err := e.client.RegisterPushToken(ctx, reg)
	wantCap(t, err, "token", "MaxProfileTokens")
	resp = importAll(t, ctx, e.client, []*profilev1.ImportRow{{CustomerId: "P", Platform: fcm, AppId: "app", Token: fcmToken(1003), SourceTime: at(3000)}}, 1)
	if resp.GetRejected() != 1 || resp.GetRejectedRows()[0].GetField() != "token" {
		t.Fatalf("got %v, want the row rejected on token", resp)
	}
	set = wantTokens(t, e, "P", nil, []int{10, 40, 51, 1002, 1003})

	// The audience streams P with its 100 tokens, the new ones included.
	id := set[fcmToken(1000)].GetProfileId()
	streamed := audienceTokens(t, ctx, e, id)
	if len(streamed) != profile.MaxProfileTokens || !streamed[fcmToken(1000)] || !streamed[fcmToken(1001)] || !streamed[fcmToken(700)] || !streamed[fcmToken(20)] {
		t.Fatalf("got %d tokens streamed, want the 100 of P with the new ones", len(streamed))
	}
}

// TestEvictionsAcrossImportBatchesKeepCountsExact: an import applies each
// batch on top of the previous one, often before that one commits. Tokens
// evicted in one batch must not be evicted (or uncounted) again by the
// next, a token created inactive in one batch must be the next batch's
// first choice, and the profile must end with exactly 100 tokens: no
// fewer (a count gone low would let it grow past the cap later) and no
// more.
func TestEvictionsAcrossImportBatchesKeepCountsExact(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{ImportBatchRows: 8}) // batches of 1, 2, 4, 8, 8, ...
	// Token 99 is the current token of device "tablet".
	fillProfile(t, ctx, e, "P", profile.MaxProfileTokens, map[int]string{99: "tablet"})
	// Dead tokens, last seen at 997, 987, ..., 947: evicted 53 first.
	dead := []int{3, 13, 23, 33, 43, 53}
	for _, i := range dead {
		deadToken(t, ctx, e, i, profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, 1500)
	}

	// One import, P's rows each in a batch of their own except for 1 and
	// 2: the new tokens 2000.. (rows 0, 3, 7, 15, 23, 31, 39, 47) and
	// token 3000 (row 1), registered for the tablet before token 99: it
	// would be REPLACED on arrival, so it is not stored on the full
	// profile (unchanged) and evicts nothing.
	pRows := map[int]*profilev1.ImportRow{
		1: {CustomerId: "P", Platform: fcm, AppId: "app", Token: fcmToken(3000), SourceTime: at(5), DeviceId: "tablet"},
	}
	for k, idx := range []int{0, 3, 7, 15, 23, 31, 39, 47} {
		pRows[idx] = &profilev1.ImportRow{CustomerId: "P", Platform: fcm, AppId: "app", Token: fcmToken(2000 + k), SourceTime: at(3000)}
	}
	var rows []*profilev1.ImportRow
	for idx := 0; idx < 48; idx++ {
		r := pRows[idx]
		if r == nil {
			r = &profilev1.ImportRow{CustomerId: fmt.Sprintf("F%02d", idx), Platform: fcm, AppId: "app", Token: fcmToken(5000 + idx), SourceTime: at(3000)}
		}
		rows = append(rows, r)
	}
	resp := importAll(t, ctx, e.client, rows, 1)
	// Evicted in order: 53 (row 0), 43 (row 3), 33, 23, 13, 3; rows 39
	// and 47 find every token active.
	if resp.GetCreated() != 45 || resp.GetUnchanged() != 1 || resp.GetRejected() != 2 || resp.GetProfilesCreated() != 39 ||
		resp.GetRejectedRows()[0].GetIndex() != 39 || resp.GetRejectedRows()[1].GetIndex() != 47 {
		t.Fatalf("got %v, want 45 created, row 1 unchanged and rows 39 and 47 rejected", resp)
	}
	set := wantTokens(t, e, "P", nil, append(dead, 3000, 2006, 2007))
	for k := 0; k < 6; k++ {
		if set[fcmToken(2000+k)] == nil {
			t.Fatalf("new token %d missing", 2000+k)
		}
	}

	// The count is exactly 100: one token made inactive lets exactly one
	// new token in.
	reg := &profilev1.RegisterPushTokenRequest{Profile: byCustomer("P"), Platform: fcm, AppId: "app", Token: fcmToken(4000), SourceTime: at(3100)}
	_, err := e.client.RegisterPushToken(ctx, reg)
	wantCap(t, err, "token", "MaxProfileTokens")
	must[*profilev1.UnregisterPushTokenResponse](t)(e.client.UnregisterPushToken(ctx, &profilev1.UnregisterPushTokenRequest{
		Token: fcmToken(2000), Platform: fcm, AppId: "app", Reason: profilev1.InactiveReason_INACTIVE_REASON_UNINSTALLED}))
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, reg))
	reg.Token = fcmToken(4001)
	_, err = e.client.RegisterPushToken(ctx, reg)
	wantStatus(t, err, codes.FailedPrecondition, "token")
	set = wantTokens(t, e, "P", nil, []int{2000, 4001})
	if streamed := audienceTokens(t, ctx, e, set[fcmToken(4000)].GetProfileId()); len(streamed) != profile.MaxProfileTokens || !streamed[fcmToken(4000)] {
		t.Fatalf("got %d tokens streamed, want P's 100 with token 4000", len(streamed))
	}
}
