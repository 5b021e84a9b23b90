package grpcapi_test

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	aud "github.com/pushmesh/pushmesh/profilesvc/internal/audience"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

// wantCap fails unless err is FailedPrecondition naming field in a
// BadRequest and in a PreconditionFailure of type limit.
func wantCap(t testing.TB, err error, field, limit string) {
	t.Helper()
	wantStatus(t, err, codes.FailedPrecondition, field)
	for _, d := range status.Convert(err).Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				if v.GetType() == limit && v.GetSubject() == field && v.GetDescription() != "" {
					return
				}
			}
		}
	}
	t.Fatalf("got details %v, want a PreconditionFailure %s on %q", status.Convert(err).Details(), limit, field)
}

// fcmToken is a typical FCM registration token, distinct for each i.
func fcmToken(i int) string {
	s := fmt.Sprintf("dXk%06d:APA91b", i)
	return s + strings.Repeat("x", 160-len(s))
}

func tokensOf(t testing.TB, e *env, ref *profilev1.ProfileRef) []*profilev1.PushToken {
	t.Helper()
	return must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctxFor(t), &profilev1.ListPushTokensRequest{Profile: ref, IncludeInactive: true})).GetTokens()
}

// TestOneCustomerWithTooManyTokens is the audit's case: a CRM export
// assigned hundreds of tokens to one customer between two small ones.
// Before the cap, that profile's ListPushTokens and every audience batch
// reaching it failed (30,000 tokens made a 7.4 MB reply), and resuming
// could never get past it. Now the rows past the cap are rejected with a
// reason, and the profile answers like any other.
func TestOneCustomerWithTooManyTokens(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{ImportBatchRows: 64})
	rows := []*profilev1.ImportRow{{CustomerId: "A", Platform: fcm, AppId: "app", Token: fcmToken(999_999), SourceTime: at(1)}}
	for i := 0; i < 300; i++ {
		rows = append(rows, &profilev1.ImportRow{CustomerId: "BIG", Platform: fcm, AppId: "app", Token: fcmToken(i), SourceTime: at(2)})
	}
	rows = append(rows, &profilev1.ImportRow{CustomerId: "Z", Platform: fcm, AppId: "app", Token: fcmToken(888_888), SourceTime: at(3)})
	resp := importAll(t, ctx, e.client, rows, 50)
	if resp.GetRows() != 302 || resp.GetCreated() != 102 || resp.GetRejected() != 200 || resp.GetProfilesCreated() != 3 {
		t.Fatalf("got %v, want 102 created and the 200 rows past the cap rejected", resp)
	}
	if n := len(resp.GetRejectedRows()); n != store.MaxRejectedRows {
		t.Fatalf("got %d rejected rows reported, want %d", n, store.MaxRejectedRows)
	}
	for i, rr := range resp.GetRejectedRows() {
		// BIG's rows are 1 to 300: the first 100 fit.
		if rr.GetIndex() != int64(101+i) || rr.GetField() != "token" || !strings.Contains(rr.GetReason(), "100 tokens") {
			t.Fatalf("rejected row %d: got %v, want row %d on token, saying the cap", i, rr, 101+i)
		}
	}
	if n := len(tokensOf(t, e, byCustomer("BIG"))); n != profile.MaxProfileTokens {
		t.Fatalf("BIG: got %d tokens, want %d", n, profile.MaxProfileTokens)
	}

	// Every audience member streams, BIG with its 100 tokens.
	var members []string
	for _, r := range queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{}) {
		for _, m := range r.GetMembers() {
			members = append(members, fmt.Sprint(len(m.GetTokens())))
		}
	}
	if got := strings.Join(members, ","); got != "1,100,1" {
		t.Fatalf("got members with %s tokens, want 1,100,1", got)
	}

	// RegisterPushToken: a new token for BIG, or one moving to it, is
	// refused and changes nothing.
	r := &profilev1.RegisterPushTokenRequest{Profile: byCustomer("BIG"), Platform: fcm, AppId: "app", Token: fcmToken(1000), SourceTime: at(10)}
	_, err := e.client.RegisterPushToken(ctx, r)
	wantCap(t, err, "token", "MaxProfileTokens")
	r.Token = fcmToken(999_999) // A's
	_, err = e.client.RegisterPushToken(ctx, r)
	wantCap(t, err, "token", "MaxProfileTokens")
	if a := tokensOf(t, e, byCustomer("A")); len(a) != 1 {
		t.Fatalf("A: got %d tokens, want its token kept", len(a))
	}
	// An import row for BIG is rejected even when it also sets
	// attributes: they are not merged either.
	attrs, _ := structpb.NewStruct(map[string]any{"tier": "gold"})
	resp = importAll(t, ctx, e.client, []*profilev1.ImportRow{{CustomerId: "BIG", Platform: fcm, AppId: "app", Token: fcmToken(1001), SourceTime: at(10), Attributes: attrs}}, 1)
	if resp.GetRejected() != 1 || resp.GetRejectedRows()[0].GetField() != "token" {
		t.Fatalf("got %v, want the row rejected on token", resp)
	}
	big := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer("BIG")}))
	if _, ok := big.GetProfile().GetAttributes().GetFields()["tier"]; ok {
		t.Fatalf("a rejected row merged its attributes: %v", big.GetProfile().GetAttributes())
	}

	// A token that moves away frees a place, exactly.
	moved := must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{Profile: byCustomer("A"), Platform: fcm, AppId: "app", Token: fcmToken(0), SourceTime: at(10)}))
	if moved.GetOutcome() != profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_MOVED {
		t.Fatalf("got %v, want the token moved to A", moved.GetOutcome())
	}
	r.Token = fcmToken(1002)
	must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, r))
	r.Token = fcmToken(1003)
	_, err = e.client.RegisterPushToken(ctx, r)
	wantCap(t, err, "token", "MaxProfileTokens")
}

// TestTokenCapAcrossImportBatches: an import applies each batch on top of
// the previous one before that one commits; a token count changed by one
// batch must be the one the next batch checks.
func TestTokenCapAcrossImportBatches(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{ImportBatchRows: 8}) // batches of 1, 2, 4, 8, 8, ...
	var rows []*profilev1.ImportRow
	for i := 0; i < profile.MaxProfileTokens; i++ {
		rows = append(rows, &profilev1.ImportRow{CustomerId: "P", Platform: fcm, AppId: "app", Token: fcmToken(i), SourceTime: at(1)})
	}
	if resp := importAll(t, ctx, e.client, rows, 100); resp.GetCreated() != 100 {
		t.Fatalf("got %v, want P filled", resp)
	}
	// One import: P's tokens 0 and 1 move to Q (batches 1 and 2), then
	// rows of other customers, then three new tokens for P in later
	// batches: two fit, the third does not.
	rows = []*profilev1.ImportRow{
		{CustomerId: "Q", Platform: fcm, AppId: "app", Token: fcmToken(0), SourceTime: at(2)},
		{CustomerId: "Q", Platform: fcm, AppId: "app", Token: fcmToken(1), SourceTime: at(2)},
	}
	for i := 0; i < 20; i++ {
		rows = append(rows, &profilev1.ImportRow{CustomerId: fmt.Sprintf("F%d", i), Platform: fcm, AppId: "app", Token: fcmToken(500 + i), SourceTime: at(2)})
	}
	for i := 0; i < 3; i++ {
		rows = append(rows, &profilev1.ImportRow{CustomerId: "P", Platform: fcm, AppId: "app", Token: fcmToken(600 + i), SourceTime: at(2)})
	}
	resp := importAll(t, ctx, e.client, rows, 1)
	if resp.GetMoved() != 2 || resp.GetCreated() != 22 || resp.GetRejected() != 1 || resp.GetRejectedRows()[0].GetIndex() != 24 {
		t.Fatalf("got %v, want 2 moved, 22 created and row 24 rejected", resp)
	}
	if n := len(tokensOf(t, e, byCustomer("P"))); n != profile.MaxProfileTokens {
		t.Fatalf("P: got %d tokens, want %d", n, profile.MaxProfileTokens)
	}
}

// TestAttributeCap: attributes merged call after call stop at the cap.
// Before it, the 68th UpsertProfile of about 60 KB committed and answered
// with a 4.2 MB reply the client refused, and GetProfile failed from then
// on.
func TestAttributeCap(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	attrs := func(prefix string, n, size int) *structpb.Struct {
		m := map[string]any{}
		for k := 0; k < n; k++ {
			m[fmt.Sprintf("%s%03d", prefix, k)] = strings.Repeat("v", size)
		}
		s, _ := structpb.NewStruct(m)
		return s
	}
	first := must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "W"}}, Attributes: attrs("a", 60, 1000)}))
	id := first.GetProfile().GetProfileId()
	_, err := e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{ProfileId: id, Attributes: attrs("b", 60, 1000)})
	wantCap(t, err, "attributes", "MaxProfileAttributesBytes")
	got := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byID(id)}))
	if n := len(got.GetProfile().GetAttributes().GetFields()); n != 60 {
		t.Fatalf("got %d attributes, want the first call's 60", n)
	}

	// Deleting keys, or making values smaller, makes room.
	shrink := attrs("a", 60, 10)
	for k, v := range attrs("c", 3, 1000).GetFields() {
		shrink.Fields[k] = v
	}
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{ProfileId: id, Attributes: shrink}))
	del := attrs("b", 55, 1000)
	for k := 0; k < 60; k++ {
		del.Fields[fmt.Sprintf("a%03d", k)] = structpb.NewNullValue()
	}
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{ProfileId: id, Attributes: del}))
	// replace_attributes counts what the profile keeps after the call.
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{ProfileId: id, Attributes: attrs("d", 60, 1000), ReplaceAttributes: true}))

	// An import row over the cap is rejected on attributes; its token is
	// not registered.
	resp := importAll(t, ctx, e.client, []*profilev1.ImportRow{
		{CustomerId: "W", Platform: fcm, AppId: "app", Token: "tok-1", SourceTime: at(1), Attributes: attrs("e", 10, 1000)},
		{CustomerId: "W", Platform: fcm, AppId: "app", Token: "tok-2", SourceTime: at(1), Attributes: attrs("d", 60, 10)},
	}, 2)
	// The second row's values are older than the ones UpsertProfile wrote
	// (server time), so they change nothing and take no room.
	if resp.GetCreated() != 1 || resp.GetRejected() != 1 || resp.GetRejectedRows()[0].GetField() != "attributes" ||
		resp.GetRejectedRows()[0].GetIndex() != 0 || !strings.Contains(resp.GetRejectedRows()[0].GetReason(), "65536") {
		t.Fatalf("got %v, want row 0 rejected on attributes", resp)
	}
	if ts := tokensOf(t, e, byCustomer("W")); len(ts) != 1 || ts[0].GetToken() != "tok-2" {
		t.Fatalf("got tokens %v, want only tok-2", ts)
	}
}

// TestIdentityCap: a profile keeps at most 100 identities.
func TestIdentityCap(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	idns := func(from, n int) []*profilev1.Identity {
		var out []*profilev1.Identity
		for i := from; i < from+n; i++ {
			out = append(out, &profilev1.Identity{Namespace: "email", Value: fmt.Sprintf("u%d@example.com", i)})
		}
		return out
	}
	p := must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{Identities: idns(0, 60)}))
	id := p.GetProfile().GetProfileId()
	// Identities the profile has already do not count twice.
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{ProfileId: id, Identities: idns(20, 80)}))
	_, err := e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{ProfileId: id, Identities: idns(100, 1)})
	wantCap(t, err, "identities", "MaxProfileIdentities")
	_, err = e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: idns(100, 1)[0]}}})
	wantStatus(t, err, codes.NotFound, "profile.identity")
	_, err = e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{Identities: idns(200, 101)})
	wantStatus(t, err, codes.InvalidArgument, "identities")
}

// TestTokenHistoryKeepsTheNewestMoves: a token moving back and forth keeps
// its newest MaxTokenHistory moves.
func TestTokenHistoryKeepsTheNewestMoves(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{ImportBatchRows: 16})
	var rows []*profilev1.ImportRow
	for i := 0; i < 45; i++ {
		rows = append(rows, &profilev1.ImportRow{CustomerId: []string{"A", "B"}[i%2], Platform: fcm, AppId: "app", Token: "shared", SourceTime: at(i)})
	}
	if resp := importAll(t, ctx, e.client, rows, 5); resp.GetMoved() != 44 {
		t.Fatalf("got %v, want 44 moves", resp)
	}
	l := must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer("A"), IncludeHistory: true}))
	h := l.GetTokens()[0].GetHistory()
	if len(h) != profile.MaxTokenHistory || !proto.Equal(h[len(h)-1].GetTime(), at(44)) || !proto.Equal(h[0].GetTime(), at(44-profile.MaxTokenHistory+1)) {
		t.Fatalf("got %d moves from %v to %v, want the newest %d", len(h), h[0].GetTime(), h[len(h)-1].GetTime(), profile.MaxTokenHistory)
	}
	for i := 1; i < len(h); i++ {
		if h[i].GetFromProfileId() != h[i-1].GetToProfileId() || h[i].GetFromProfileId() == "" {
			t.Fatalf("move %d: got from %q after a move to %q", i, h[i].GetFromProfileId(), h[i-1].GetToProfileId())
		}
	}
}

// TestLargestRepliesOfACappedProfile fills a profile to every cap with
// every field at its longest and checks its replies against the sizes the
// caps were chosen for (profile.MaxProfileTokens): far under gRPC's 4 MiB.
func TestLargestRepliesOfACappedProfile(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	// 100 identities of the longest namespace and value.
	var idns []*profilev1.Identity
	for i := 0; i < profile.MaxProfileIdentities; i++ {
		idns = append(idns, &profilev1.Identity{Namespace: fmt.Sprintf("%064d", i), Value: strings.Repeat("v", profile.MaxIdentityLen)})
	}
	idns[0] = &profilev1.Identity{Namespace: "customer_id", Value: "BIG"}
	// 64 KiB of attributes in the form that grows most as a
	// google.protobuf.Struct: a list of booleans (1 byte each encoded, 4
	// in the Struct).
	flags := make([]any, profile.MaxProfileAttributesBytes-1-1-3)
	for i := range flags {
		flags[i] = false
	}
	attrs, err := structpb.NewStruct(map[string]any{"f": flags})
	if err != nil {
		t.Fatal(err)
	}
	must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{Identities: idns, Attributes: attrs}))
	// 100 tokens of the longest token, app id, device id and details,
	// each moved back and forth more than MaxTokenHistory times.
	app := strings.Repeat("a", profile.MaxAppIDLen)
	token := func(i int) string { return fmt.Sprintf("%04d", i) + strings.Repeat("t", profile.MaxTokenLen-4) }
	field := strings.Repeat("d", profile.MaxDeviceFieldLen)
	for i := 0; i < profile.MaxProfileTokens; i++ {
		must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{
			Profile: byCustomer("BIG"), Platform: fcm, AppId: app, Token: token(i), SourceTime: at(0),
			DeviceId: fmt.Sprintf("%0256d", i), Device: &commonv1.DeviceInfo{Model: field, OsVersion: field, AppVersion: field, Locale: field, TimeZone: field},
			Source: strings.Repeat("s", profile.MaxSourceLen),
		}))
	}
	var rows []*profilev1.ImportRow
	for i := 0; i < profile.MaxProfileTokens; i++ {
		for m := 1; m <= profile.MaxTokenHistory+2; m++ { // the last to BIG
			rows = append(rows, &profilev1.ImportRow{CustomerId: []string{"BIG", "OTHER"}[m%2], Platform: fcm, AppId: app, Token: token(i), SourceTime: at(m)})
		}
	}
	if resp := importAll(t, ctx, e.client, rows, 400); resp.GetMoved() != int64(len(rows)) {
		t.Fatalf("got %v, want every row a move", resp)
	}

	list := must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer("BIG"), IncludeInactive: true, IncludeHistory: true}))
	if len(list.GetTokens()) != profile.MaxProfileTokens || len(list.GetTokens()[0].GetHistory()) != profile.MaxTokenHistory {
		t.Fatalf("got %d tokens with %d moves, want the profile at its caps", len(list.GetTokens()), len(list.GetTokens()[0].GetHistory()))
	}
	get := must[*profilev1.GetProfileResponse](t)(e.client.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer("BIG")}))
	var member *profilev1.AudienceMember
	for _, r := range queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{}) {
		for _, m := range r.GetMembers() {
			if len(m.GetTokens()) == profile.MaxProfileTokens {
				member = m
			}
		}
	}
	if member == nil {
		t.Fatal("the capped profile did not stream with its tokens")
	}
	const mib = 1 << 20
	for _, c := range []struct {
		name string
		msg  proto.Message
		max  float64
	}{
		{"ListPushTokens", list, 0.95 * mib},
		{"audience member", member, 0.9 * mib},
		{"GetProfile", get, 0.4 * mib},
	} {
		size := proto.Size(c.msg)
		t.Logf("%s: %d bytes (%.2f MiB)", c.name, size, float64(size)/mib)
		if float64(size) > c.max {
			t.Errorf("%s: got %d bytes, want at most %.0f", c.name, size, c.max)
		}
	}
}

// TestAudienceBatchesStayUnderTheMessageLimit: members whose attributes
// grow fourfold as a google.protobuf.Struct (booleans in a list) used to be
// packed by their stored size, up to 2 MiB of it a batch: messages of up
// to 8 MB, which a client refuses (4 MiB by default), failing the query
// for every member before and after them. Each message now stays under
// audience.MaxBatchBytes, which this client enforces.
func TestAudienceBatchesStayUnderTheMessageLimit(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	flags := make([]any, 8<<10) // 8 KiB stored, 32 KiB as a Struct
	for i := range flags {
		flags[i] = i%2 == 0
	}
	attrs, err := structpb.NewStruct(map[string]any{"f": flags})
	if err != nil {
		t.Fatal(err)
	}
	const n = 40 // 1.3 MB of members, one message before
	for i := 0; i < n; i++ {
		must[*profilev1.UpsertProfileResponse](t)(e.client.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
			Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: fmt.Sprintf("C%02d", i)}}, Attributes: attrs}))
		must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{
			Profile: byCustomer(fmt.Sprintf("C%02d", i)), Platform: fcm, AppId: "app", Token: fcmToken(i), SourceTime: at(1)}))
	}
	stream, err := e.client.QueryAudience(ctx, &profilev1.QueryAudienceRequest{}, grpc.MaxCallRecvMsgSize(aud.MaxBatchBytes+1024))
	if err != nil {
		t.Fatal(err)
	}
	members := 0
	for {
		r, err := stream.Recv()
		if isEOF(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		members += len(r.GetMembers())
	}
	if members != n {
		t.Fatalf("got %d members, want %d", members, n)
	}
}
