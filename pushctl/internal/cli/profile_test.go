package cli

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

const fullFCMToken = "dQw4w9WgXcQ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx_1fjKq6KaIUb7Go1nYQuCm5L1Vgl2qL0z7W0Xg6B3Yp4A9ZkN8cVn0tTxRw"

func sampleProfile() *profilev1.Profile {
	attrs, _ := structpb.NewStruct(map[string]any{"firstName": "Ada", "tier": "gold", "visits": 12, "vip": true, "tags": []any{"a", "b"}})
	return &profilev1.Profile{
		ProfileId:        "p-0001",
		Identities:       []*profilev1.Identity{{Namespace: "customer_id", Value: "C-1042"}, {Namespace: "email", Value: "ada@example.com"}},
		Attributes:       attrs,
		Consent:          &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_IN, UpdateTime: testTime},
		CreateTime:       testTime,
		UpdateTime:       testTime,
		ActiveTokenCount: 2,
	}
}

func TestProfileGetByIdentity(t *testing.T) {
	h := newHarness(t)
	var got *profilev1.GetProfileRequest
	h.profiles.get = func(_ context.Context, r *profilev1.GetProfileRequest) (*profilev1.GetProfileResponse, error) {
		got = r
		return &profilev1.GetProfileResponse{Profile: sampleProfile()}, nil
	}
	res := h.run(t, "profile", "get", "--identity", "customer_id=C-1042")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	wantReq := &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: "C-1042"}}}
	if !proto.Equal(got.GetProfile(), wantReq) {
		t.Errorf("ref: got %v, want %v", got.GetProfile(), wantReq)
	}
	want := `profile        p-0001
identities     customer_id=C-1042, email=ada@example.com
push consent   opted in (2024-04-30T09:15:00Z)
active tokens  2
created        2024-04-30T09:15:00Z
updated        2024-04-30T09:15:00Z

ATTRIBUTE  VALUE
firstName  "Ada"
tags       ["a","b"]
tier       "gold"
vip        true
visits     12
`
	if res.stdout != want {
		t.Errorf("stdout:\n got %s\nwant %s", res.stdout, want)
	}

	res = h.run(t, "profile", "get", "--id", "p-0001", "--json")
	var parsed profilev1.GetProfileResponse
	if err := protojson.Unmarshal([]byte(res.stdout), &parsed); err != nil || !proto.Equal(parsed.GetProfile(), sampleProfile()) {
		t.Errorf("--json: parse error %v, got %v", err, parsed.GetProfile())
	}
	if got.GetProfile().GetProfileId() != "p-0001" {
		t.Errorf("--id: got ref %v", got.GetProfile())
	}
}

func TestProfileRefUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"profile", "get"}, "profile get needs --id ID or --identity namespace=value"},
		{[]string{"profile", "get", "--id", "p", "--identity", "a=b"}, "give --id or --identity, not both"},
		{[]string{"profile", "tokens", "--identity", "C-1042"}, `--identity "C-1042": want namespace=value`},
		{[]string{"profile", "delete", "--identity", "=x"}, "want namespace=value"},
		{[]string{"profile", "upsert", "--attr", "x=1"}, "profile upsert needs --id or at least one --identity"},
		{[]string{"profile", "upsert", "--id", "p", "--attr-json", "x={"}, "--attr-json x:"},
		{[]string{"profile", "upsert", "--id", "p", "--consent", "maybe"}, `--consent "maybe" is not one of opted-in, opted-out`},
		{[]string{"token", "register", "--identity", "a=b", "--platform", "apns", "--app-id", "a"}, "token register needs --token"},
		{[]string{"token", "register", "--identity", "a=b", "--platform", "apns", "--app-id", "a", "--token", "t", "--time", "noon"}, `--time cannot read "noon"`},
		{[]string{"token", "unregister", "--platform", "fcm", "--app-id", "a", "--token", "t", "--reason", "bored"}, `--reason "bored" is not one of`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			res := runCLI(t, nil, mustTime("2024-05-01T00:00:00Z"), tt.args...)
			if res.code != ExitUsage || !strings.Contains(res.stderr, tt.want) {
				t.Errorf("got exit %d, stderr %q; want %d and %q", res.code, res.stderr, ExitUsage, tt.want)
			}
		})
	}
}

func sampleTokens() []*profilev1.PushToken {
	return []*profilev1.PushToken{
		{
			Token: fullAPNsToken, Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.acme.shop", DeviceId: "iphone-1",
			ProfileId: "p-0001", State: profilev1.TokenState_TOKEN_STATE_ACTIVE, SourceTime: testTime,
			History: []*profilev1.TokenMove{
				{ToProfileId: "p-0009", Time: timestamppb.New(mustTime("2024-03-01T08:00:00Z")), Source: "import"},
				{FromProfileId: "p-0009", ToProfileId: "p-0001", Time: testTime, Source: "ios-sdk"},
			},
		},
		{
			Token: fullFCMToken, Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.acme.shop",
			ProfileId: "p-0001", State: profilev1.TokenState_TOKEN_STATE_INACTIVE, InactiveReason: profilev1.InactiveReason_INACTIVE_REASON_UNREGISTERED,
			SourceTime: timestamppb.New(mustTime("2024-02-01T08:00:00Z")),
		},
	}
}

func TestProfileTokensTableShortensTokensAndShowsHistory(t *testing.T) {
	h := newHarness(t)
	var got *profilev1.ListPushTokensRequest
	h.profiles.list = func(_ context.Context, r *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
		got = r
		return &profilev1.ListPushTokensResponse{Tokens: sampleTokens()}, nil
	}
	res := h.run(t, "profile", "tokens", "--id", "p-0001", "--history", "--inactive", "--app", "com.acme.shop", "--app", "com.acme.other")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if !got.GetIncludeHistory() || !got.GetIncludeInactive() || strings.Join(got.GetAppIds(), ",") != "com.acme.shop,com.acme.other" {
		t.Errorf("request: got %v", got)
	}
	want := `TOKEN        PLATFORM  APP            DEVICE    STATE     REASON        SOURCE TIME
a1b2c3…f9e8  apns      com.acme.shop  iphone-1  active    -             2024-04-30T09:15:00Z
  2024-03-01T08:00:00Z  registered to p-0009 (import)
  2024-04-30T09:15:00Z  moved from p-0009 to p-0001 (ios-sdk)
dQw4w9…TxRw  fcm       com.acme.shop  -         inactive  unregistered  2024-02-01T08:00:00Z
`
	if res.stdout != want {
		t.Errorf("table:\n got %s\nwant %s", res.stdout, want)
	}
	for _, tok := range []string{fullAPNsToken, fullFCMToken} {
		if strings.Contains(res.stdout, tok) {
			t.Errorf("the table shows the full token %s", tok)
		}
	}
}

func TestProfileTokensEmpty(t *testing.T) {
	h := newHarness(t)
	h.profiles.list = func(context.Context, *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
		return &profilev1.ListPushTokensResponse{}, nil
	}
	res := h.run(t, "profile", "tokens", "--identity", "customer_id=C-1")
	if res.code != 0 || res.stdout != "profile customer_id=C-1 has no active tokens\n" {
		t.Errorf("got exit %d, stdout %q", res.code, res.stdout)
	}
}

func TestProfileUpsertTypesAttributes(t *testing.T) {
	h := newHarness(t)
	var got *profilev1.UpsertProfileRequest
	h.profiles.upsert = func(_ context.Context, r *profilev1.UpsertProfileRequest) (*profilev1.UpsertProfileResponse, error) {
		got = r
		return &profilev1.UpsertProfileResponse{Profile: sampleProfile(), Created: true}, nil
	}
	res := h.run(t, "profile", "upsert", "--identity", "customer_id=C-1042", "--identity", "email=ada@example.com",
		"--attr", "firstName=Ada", "--attr", "visits=12", "--attr", "vip=true", "--attr", "zip=02134", "--attr", "note=a=b",
		"--attr-json", `tags=["a","b"]`, "--attr-json", `code="007"`, "--unset", "legacy", "--consent", "opted-in")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	attrs, _ := structpb.NewStruct(map[string]any{
		"firstName": "Ada", "visits": 12, "vip": true, "zip": "02134", "note": "a=b", "tags": []any{"a", "b"}, "code": "007", "legacy": nil,
	})
	want := &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C-1042"}, {Namespace: "email", Value: "ada@example.com"}},
		Attributes: attrs,
		Consent:    &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_IN, UpdateTime: timestamppb.New(h.now)},
	}
	if !proto.Equal(got, want) {
		t.Errorf("request:\n got %v\nwant %v", got, want)
	}
	if !strings.HasPrefix(res.stdout, "created profile p-0001\n\n") {
		t.Errorf("stdout: got %q", res.stdout)
	}
}

func TestProfileDeleteNotFound(t *testing.T) {
	h := newHarness(t)
	h.profiles.del = func(context.Context, *profilev1.DeleteProfileRequest) (*profilev1.DeleteProfileResponse, error) {
		return nil, status.Error(codes.NotFound, `no profile with identity customer_id="C-404"`)
	}
	res := h.run(t, "profile", "delete", "--identity", "customer_id=C-404")
	want := "pushctl: profilesvc: not found: no profile with identity customer_id=\"C-404\"\n"
	if res.code != ExitNotFound || res.stderr != want {
		t.Errorf("got exit %d, stderr %q; want %d, %q", res.code, res.stderr, ExitNotFound, want)
	}

	h.profiles.del = func(context.Context, *profilev1.DeleteProfileRequest) (*profilev1.DeleteProfileResponse, error) {
		return &profilev1.DeleteProfileResponse{ProfileId: "p-0001", TokensDeleted: 3}, nil
	}
	res = h.run(t, "profile", "delete", "--id", "p-0001")
	if res.code != 0 || res.stdout != "deleted profile p-0001 and 3 token(s)\n" {
		t.Errorf("got exit %d, stdout %q", res.code, res.stdout)
	}
}

func TestTokenRegisterMapsFlags(t *testing.T) {
	h := newHarness(t)
	var got *profilev1.RegisterPushTokenRequest
	h.profiles.register = func(_ context.Context, r *profilev1.RegisterPushTokenRequest) (*profilev1.RegisterPushTokenResponse, error) {
		got = r
		return &profilev1.RegisterPushTokenResponse{
			Token:          sampleTokens()[0],
			Outcome:        profilev1.RegistrationOutcome_REGISTRATION_OUTCOME_MOVED,
			ReplacedTokens: []string{"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff0001"},
		}, nil
	}
	res := h.run(t, "token", "register", "--identity", "customer_id=C-1042", "--platform", "apns", "--app-id", "com.acme.shop",
		"--token", fullAPNsToken, "--device-id", "iphone-1", "--time", "1714557600123", "--env", "production", "--source", "backfill")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	want := &profilev1.RegisterPushTokenRequest{
		Profile:         &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: "C-1042"}}},
		Token:           fullAPNsToken,
		Platform:        commonv1.Platform_PLATFORM_APNS,
		AppId:           "com.acme.shop",
		ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION,
		DeviceId:        "iphone-1",
		SourceTime:      timestamppb.New(mustTime("2024-05-01T10:00:00.123Z")),
		Source:          "backfill",
	}
	if !proto.Equal(got, want) {
		t.Errorf("request:\n got %v\nwant %v", got, want)
	}
	wantOut := `moved: token a1b2c3…f9e8 of profile p-0001

TOKEN        PLATFORM  APP            DEVICE    STATE   REASON  SOURCE TIME
a1b2c3…f9e8  apns      com.acme.shop  iphone-1  active  -       2024-04-30T09:15:00Z
replaced token ffffff…0001
`
	if res.stdout != wantOut {
		t.Errorf("stdout:\n got %s\nwant %s", res.stdout, wantOut)
	}
}

func TestTokenUnregister(t *testing.T) {
	h := newHarness(t)
	var got *profilev1.UnregisterPushTokenRequest
	h.profiles.unregister = func(_ context.Context, r *profilev1.UnregisterPushTokenRequest) (*profilev1.UnregisterPushTokenResponse, error) {
		got = r
		return &profilev1.UnregisterPushTokenResponse{Token: sampleTokens()[1]}, nil
	}
	res := h.run(t, "token", "unregister", "--platform", "fcm", "--app-id", "com.acme.shop", "--token", fullFCMToken, "--reason", "stale")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	want := &profilev1.UnregisterPushTokenRequest{Token: fullFCMToken, Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.acme.shop", Reason: profilev1.InactiveReason_INACTIVE_REASON_STALE}
	if !proto.Equal(got, want) {
		t.Errorf("request: got %v, want %v", got, want)
	}
	if strings.Contains(res.stdout, fullFCMToken) || !strings.Contains(res.stdout, "unregistered token dQw4w9…TxRw of profile p-0001") {
		t.Errorf("stdout: got %q", res.stdout)
	}
}
