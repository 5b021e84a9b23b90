package grpcapi_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

func importAll(t testing.TB, ctx context.Context, c profilev1.ProfileServiceClient, rows []*profilev1.ImportRow, perMsg int) *profilev1.ImportTokensResponse {
	t.Helper()
	stream, err := c.ImportTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(rows); i += perMsg {
		if err := stream.Send(&profilev1.ImportTokensRequest{Rows: rows[i:min(len(rows), i+perMsg)]}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// crmRows makes n rows over a small universe of customers and tokens, with
// equal timestamps, device ids, environments and attributes, so that the
// order of rows matters unless the rules really converge.
func crmRows(seed uint64, n int) []*profilev1.ImportRow {
	rng := rand.New(rand.NewPCG(seed, 9))
	rows := make([]*profilev1.ImportRow, n)
	for i := range rows {
		r := &profilev1.ImportRow{
			CustomerId: fmt.Sprintf("C%03d", rng.IntN(n/5+1)),
			AppId:      []string{"com.example.ios", "com.example.android"}[rng.IntN(2)],
			SourceTime: at(rng.IntN(30)),
		}
		if rng.IntN(2) == 0 {
			r.Platform, r.Token = apns, fmt.Sprintf("%08x", rng.IntN(n/3+1))
			r.ApnsEnvironment = commonv1.ApnsEnvironment(rng.IntN(3))
		} else {
			r.Platform, r.Token = fcm, fmt.Sprintf("fcm:%d", rng.IntN(n/3+1))
		}
		if rng.IntN(4) == 0 {
			r.DeviceId = fmt.Sprintf("install-%d", rng.IntN(20))
		}
		if rng.IntN(3) == 0 {
			r.Attributes, _ = structpb.NewStruct(map[string]any{"tier": []string{"gold", "silver", "bronze"}[rng.IntN(3)], "score": float64(rng.IntN(5))})
		}
		rows[i] = r
	}
	return rows
}

// apiState renders the whole observable state of the given customers
// through the API, without what differs between runs by design (generated
// profile ids, server clock times, and histories, which record the order
// registrations arrived in).
func apiState(t testing.TB, ctx context.Context, c profilev1.ProfileServiceClient, rows []*profilev1.ImportRow) string {
	t.Helper()
	customers := map[string]bool{}
	for _, r := range rows {
		customers[r.GetCustomerId()] = true
	}
	var lines []string
	for cust := range customers {
		p := must[*profilev1.GetProfileResponse](t)(c.GetProfile(ctx, &profilev1.GetProfileRequest{Profile: byCustomer(cust)}))
		attrs, _ := p.GetProfile().GetAttributes().MarshalJSON()
		lines = append(lines, fmt.Sprintf("%s attrs=%s active=%d", cust, attrs, p.GetProfile().GetActiveTokenCount()))
		l := must[*profilev1.ListPushTokensResponse](t)(c.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer(cust), IncludeInactive: true}))
		for _, tk := range l.GetTokens() {
			lines = append(lines, fmt.Sprintf("  %s %v/%s/%s env=%v device=%q source=%v state=%v reason=%v gw=%v",
				cust, tk.GetPlatform(), tk.GetAppId(), tk.GetToken(), tk.GetApnsEnvironment(), tk.GetDeviceId(),
				tk.GetSourceTime().AsTime().UnixNano(), tk.GetState(), tk.GetInactiveReason(), tk.GetGatewayInvalidTime()))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestImportTwiceAndShuffled(t *testing.T) {
	ctx := ctxFor(t)
	rows := crmRows(3, 500)

	e := newEnv(t, store.Options{ImportBatchRows: 40})
	first := importAll(t, ctx, e.client, rows, 37)
	if first.GetRows() != 500 || first.GetRejected() != 0 || first.GetCreated() == 0 || first.GetMoved() == 0 || first.GetUpdated() == 0 || first.GetProfilesCreated() == 0 {
		t.Fatalf("got %v, want 500 rows with creations, updates, moves and new profiles", first)
	}
	if sum := first.GetCreated() + first.GetUpdated() + first.GetMoved() + first.GetUnchanged(); sum != 500 {
		t.Fatalf("got created+updated+moved+unchanged = %d, want 500", sum)
	}
	want := apiState(t, ctx, e.client, rows)

	second := importAll(t, ctx, e.client, rows, 37)
	if second.GetUnchanged() != 500 || second.GetCreated()+second.GetUpdated()+second.GetMoved()+second.GetProfilesCreated() != 0 {
		t.Fatalf("the same file again: got %v, want all 500 unchanged", second)
	}
	if got := apiState(t, ctx, e.client, rows); got != want {
		t.Fatalf("state changed on the second import:\ngot:\n%s\nwant:\n%s", got, want)
	}

	for seed := uint64(1); seed <= 3; seed++ {
		shuffled := slices.Clone(rows)
		rand.New(rand.NewPCG(seed, 5)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		other := newEnv(t, store.Options{ImportBatchRows: int(seed) * 60})
		importAll(t, ctx, other.client, shuffled, 50)
		if got := apiState(t, ctx, other.client, rows); got != want {
			t.Fatalf("shuffled import %d diverged:\ngot:\n%s\nwant:\n%s", seed, got, want)
		}
	}
}

func TestImportRejectsBadRowsWithoutLosingGoodOnes(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{ImportBatchRows: 10})
	good := func(i int) *profilev1.ImportRow {
		return &profilev1.ImportRow{CustomerId: fmt.Sprintf("C%d", i), Token: fmt.Sprintf("%04x", i), Platform: apns, AppId: "com.example", SourceTime: at(1)}
	}
	bad := []struct {
		row   func(*profilev1.ImportRow)
		field string
	}{
		{func(r *profilev1.ImportRow) { r.Token = "not hex" }, "token"},
		{func(r *profilev1.ImportRow) { r.Token = "" }, "token"},
		{func(r *profilev1.ImportRow) { r.Platform = 0 }, "platform"},
		{func(r *profilev1.ImportRow) { r.AppId = "" }, "app_id"},
		{func(r *profilev1.ImportRow) { r.CustomerId = "" }, "customer_id"},
		{func(r *profilev1.ImportRow) { r.SourceTime = nil }, "source_time"},
		{func(r *profilev1.ImportRow) { r.ApnsEnvironment = 7 }, "apns_environment"},
		{func(r *profilev1.ImportRow) { r.DeviceId = "tab\there" }, "device_id"},
		{func(r *profilev1.ImportRow) {
			r.Attributes = &structpb.Struct{Fields: map[string]*structpb.Value{"": structpb.NewBoolValue(true)}}
		}, "attributes."},
	}
	var rows []*profilev1.ImportRow
	wantRejected := map[int64]string{}
	for i := 0; i < 300; i++ {
		r := good(i)
		if i%3 == 1 {
			b := bad[(i/3)%len(bad)]
			b.row(r)
			wantRejected[int64(i)] = b.field
		}
		rows = append(rows, r)
	}
	resp := importAll(t, ctx, e.client, rows, 7)
	if resp.GetRows() != 300 || resp.GetRejected() != 100 || resp.GetCreated() != 200 || resp.GetProfilesCreated() != 200 {
		t.Fatalf("got %v, want 300 rows, 100 rejected, 200 created", resp)
	}
	if len(resp.GetRejectedRows()) != 100 {
		t.Fatalf("got %d rejected rows reported, want 100", len(resp.GetRejectedRows()))
	}
	for _, rr := range resp.GetRejectedRows() {
		if want, ok := wantRejected[rr.GetIndex()]; !ok || rr.GetField() != want || rr.GetReason() == "" {
			t.Errorf("rejected row %d: got field %q reason %q, want field %q", rr.GetIndex(), rr.GetField(), rr.GetReason(), want)
		}
	}
	for i := 0; i < 300; i += 3 {
		l := must[*profilev1.ListPushTokensResponse](t)(e.client.ListPushTokens(ctx, &profilev1.ListPushTokensRequest{Profile: byCustomer(fmt.Sprintf("C%d", i))}))
		if len(l.GetTokens()) != 1 {
			t.Fatalf("customer C%d: got %d tokens, want its good row imported", i, len(l.GetTokens()))
		}
	}
}

func TestImportReportsOnlyTheFirstHundredRejects(t *testing.T) {
	ctx := ctxFor(t)
	e := newEnv(t, store.Options{})
	var rows []*profilev1.ImportRow
	for i := 0; i < 250; i++ {
		rows = append(rows, &profilev1.ImportRow{CustomerId: "C", Token: "zz", Platform: apns, AppId: "a", SourceTime: at(1)})
	}
	resp := importAll(t, ctx, e.client, rows, 100)
	if resp.GetRejected() != 250 || len(resp.GetRejectedRows()) != 100 || resp.GetRejectedRows()[99].GetIndex() != 99 {
		t.Fatalf("got %d rejected, %d reported, want 250 and the first 100", resp.GetRejected(), len(resp.GetRejectedRows()))
	}
}
