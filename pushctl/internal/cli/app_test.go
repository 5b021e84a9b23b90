package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/emulator/apns"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// writeP8 writes a real .p8 key (PKCS#8 ECDSA P-256 PEM) and returns its path.
func writeP8(t *testing.T) (path string, pemText string) {
	t.Helper()
	p8, _, err := apns.GenerateProviderKey()
	if err != nil {
		t.Fatal(err)
	}
	pemText = string(p8)
	path = filepath.Join(t.TempDir(), "AuthKey_ABC123DEFG.p8")
	if err := os.WriteFile(path, []byte(pemText), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, pemText
}

const serviceAccountJSON = `{"type":"service_account","project_id":"acme-push","private_key":"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n","client_email":"push@acme-push.iam.gserviceaccount.com","token_uri":"https://oauth2.googleapis.com/token"}`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

var testTime = timestamppb.New(mustTime("2024-04-30T09:15:00Z"))

func sampleApps() []*deliveryv1.App {
	return []*deliveryv1.App{
		{
			Key:             &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.acme.shop"},
			DisplayName:     "Acme iOS",
			ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX,
			State:           deliveryv1.AppState_APP_STATE_ACTIVE,
			Credentials:     &deliveryv1.CredentialsInfo{Fingerprint: "0a1b2c3d4e5f60718293a4b5c6d7e8f9", KeyId: "ABC123DEFG", TeamId: "TEAM123456"},
			CreateTime:      testTime, UpdateTime: testTime, ValidateTime: testTime,
		},
		{
			Key:             &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.acme.shop"},
			State:           deliveryv1.AppState_APP_STATE_SUSPENDED,
			SuspendedReason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS,
			SuspendedDetail: "THIRD_PARTY_AUTH_ERROR",
			Credentials:     &deliveryv1.CredentialsInfo{Fingerprint: "ffee", ProjectId: "acme-push", ClientEmail: "push@acme-push.iam.gserviceaccount.com"},
			CreateTime:      testTime,
		},
	}
}

func TestAppRegisterAPNsMapsFlagsToRequest(t *testing.T) {
	h := newHarness(t)
	p8, pemText := writeP8(t)
	var got *deliveryv1.RegisterAppRequest
	h.apps.register = func(ctx context.Context, r *deliveryv1.RegisterAppRequest) (*deliveryv1.RegisterAppResponse, error) {
		h.sawTenant(ctx)
		got = r
		return &deliveryv1.RegisterAppResponse{App: sampleApps()[0]}, nil
	}
	res := h.run(t, "--tenant", "acme", "app", "register", "--platform", "apns", "--app-id", "com.acme.shop",
		"--name", "Acme iOS", "--env", "sandbox", "--p8", p8, "--key-id", "ABC123DEFG", "--team-id", "TEAM123456", "--rate", "500")
	if res.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
	}
	want := &deliveryv1.RegisterAppRequest{
		Key:                &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.acme.shop"},
		DisplayName:        "Acme iOS",
		ApnsEnvironment:    commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX,
		Credentials:        &deliveryv1.Credentials{Kind: &deliveryv1.Credentials_ApnsToken{ApnsToken: &deliveryv1.ApnsTokenCredentials{PrivateKeyPem: pemText, KeyId: "ABC123DEFG", TeamId: "TEAM123456"}}},
		RateLimitPerSecond: 500,
	}
	if !proto.Equal(got, want) {
		t.Errorf("request:\n got %v\nwant %v", got, want)
	}
	if len(h.tenants) != 1 || h.tenants[0] != "acme" {
		t.Errorf("tenant seen by the server: got %v, want [acme]", h.tenants)
	}
	wantOut := `registered apns app com.acme.shop

app          com.acme.shop
platform     apns
name         Acme iOS
environment  sandbox
state        active
credentials  key ABC123DEFG team TEAM123456
fingerprint  0a1b2c3d4e5f60718293a4b5c6d7e8f9
rate limit   default
created      2024-04-30T09:15:00Z
updated      2024-04-30T09:15:00Z
validated    2024-04-30T09:15:00Z
`
	if res.stdout != wantOut {
		t.Errorf("stdout:\n got %q\nwant %q", res.stdout, wantOut)
	}
	if strings.Contains(res.stdout+res.stderr, "PRIVATE KEY") {
		t.Error("the private key was printed")
	}
}

func TestAppRegisterFCMReadsServiceAccount(t *testing.T) {
	h := newHarness(t)
	sa := writeFile(t, "sa.json", serviceAccountJSON)
	var got *deliveryv1.RegisterAppRequest
	h.apps.register = func(ctx context.Context, r *deliveryv1.RegisterAppRequest) (*deliveryv1.RegisterAppResponse, error) {
		got = r
		return &deliveryv1.RegisterAppResponse{App: sampleApps()[1]}, nil
	}
	res := h.run(t, "app", "register", "--platform", "android", "--app-id", "com.acme.shop", "--service-account", sa)
	if res.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", res.code, res.stderr)
	}
	if got.GetKey().GetPlatform() != commonv1.Platform_PLATFORM_FCM {
		t.Errorf("platform: got %v, want FCM", got.GetKey().GetPlatform())
	}
	if got.GetCredentials().GetFcmServiceAccount().GetServiceAccountJson() != serviceAccountJSON {
		t.Errorf("service account JSON not sent as read")
	}
}

func TestAppRegisterUsageErrors(t *testing.T) {
	p8, _ := writeP8(t)
	sa := writeFile(t, "sa.json", serviceAccountJSON)
	notPEM := writeFile(t, "key.p8", "not a key")
	notSA := writeFile(t, "sa.json", `{"hello":1}`)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no platform", []string{"--app-id", "a"}, "needs --platform"},
		{"bad platform", []string{"--platform", "webpush", "--app-id", "a"}, `--platform "webpush" is not one of apns, fcm`},
		{"apns without key id", []string{"--platform", "apns", "--app-id", "a", "--p8", p8, "--team-id", "T"}, "needs --key-id"},
		{"apns with service account", []string{"--platform", "apns", "--app-id", "a", "--service-account", sa}, "--service-account is for FCM apps"},
		{"fcm with p8", []string{"--platform", "fcm", "--app-id", "a", "--p8", p8}, "are for APNs apps"},
		{"env on fcm", []string{"--platform", "fcm", "--app-id", "a", "--env", "sandbox", "--service-account", sa}, "--env is for APNs apps only"},
		{"bad env", []string{"--platform", "apns", "--app-id", "a", "--env", "staging"}, `--env "staging" is not one of sandbox, production`},
		{"missing p8 file", []string{"--platform", "apns", "--app-id", "a", "--p8", "/nonexistent.p8", "--key-id", "K", "--team-id", "T"}, "no such file"},
		{"p8 not PEM", []string{"--platform", "apns", "--app-id", "a", "--p8", notPEM, "--key-id", "K", "--team-id", "T"}, "not a .p8 key"},
		{"not a service account", []string{"--platform", "fcm", "--app-id", "a", "--service-account", notSA}, "not a service-account JSON key file"},
		{"negative rate", []string{"--platform", "fcm", "--app-id", "a", "--service-account", sa, "--rate", "-1"}, "--rate must not be negative"},
		{"unknown flag", []string{"--platfrom", "fcm"}, "unknown flag --platfrom"},
		{"positional argument", []string{"extra"}, "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			called := false
			h.apps.register = func(context.Context, *deliveryv1.RegisterAppRequest) (*deliveryv1.RegisterAppResponse, error) {
				called = true
				return &deliveryv1.RegisterAppResponse{}, nil
			}
			res := h.run(t, append([]string{"app", "register"}, tt.args...)...)
			if res.code != ExitUsage {
				t.Errorf("exit: got %d, want %d (stderr %q)", res.code, ExitUsage, res.stderr)
			}
			if !strings.Contains(res.stderr, tt.want) {
				t.Errorf("stderr: got %q, want it to contain %q", res.stderr, tt.want)
			}
			if !strings.Contains(res.stderr, "Run 'pushctl help app register' for usage.") {
				t.Errorf("stderr: got %q, want a pointer to the help", res.stderr)
			}
			if called {
				t.Error("the service was called despite the usage error")
			}
		})
	}
}

func TestAppListPagesAndRendersTable(t *testing.T) {
	h := newHarness(t)
	apps := sampleApps()
	var tokens []string
	h.apps.list = func(_ context.Context, r *deliveryv1.ListAppsRequest) (*deliveryv1.ListAppsResponse, error) {
		tokens = append(tokens, r.GetPageToken())
		if r.GetPageToken() == "" {
			return &deliveryv1.ListAppsResponse{Apps: apps[:1], NextPageToken: "p2"}, nil
		}
		return &deliveryv1.ListAppsResponse{Apps: apps[1:]}, nil
	}
	res := h.run(t, "app", "list")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if got, want := strings.Join(tokens, ","), ",p2"; got != want {
		t.Errorf("page tokens: got %q, want %q", got, want)
	}
	want := `PLATFORM  APP            NAME      ENV      STATE      CREDENTIALS                                               VALIDATED
apns      com.acme.shop  Acme iOS  sandbox  active     key ABC123DEFG team TEAM123456                            2024-04-30T09:15:00Z
fcm       com.acme.shop  -         -        suspended  project acme-push push@acme-push.iam.gserviceaccount.com  -
`
	if res.stdout != want {
		t.Errorf("table:\n got %s\nwant %s", res.stdout, want)
	}

	res = h.run(t, "app", "list", "--json")
	var parsed deliveryv1.ListAppsResponse
	if err := protojson.Unmarshal([]byte(res.stdout), &parsed); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, res.stdout)
	}
	if len(parsed.GetApps()) != 2 || !proto.Equal(parsed.GetApps()[1], apps[1]) {
		t.Errorf("--json apps: got %v, want both pages", parsed.GetApps())
	}
}

func TestAppGetShowsSuspension(t *testing.T) {
	h := newHarness(t)
	h.apps.get = func(_ context.Context, r *deliveryv1.GetAppRequest) (*deliveryv1.GetAppResponse, error) {
		return &deliveryv1.GetAppResponse{App: sampleApps()[1]}, nil
	}
	res := h.run(t, "app", "get", "--platform", "fcm", "--app-id", "com.acme.shop")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	if want := "suspended    invalid credentials: THIRD_PARTY_AUTH_ERROR\n"; !strings.Contains(res.stdout, want) {
		t.Errorf("stdout: got %q, want a line %q", res.stdout, want)
	}
}

func TestAppValidate(t *testing.T) {
	refused := func() error {
		st, _ := status.New(codes.FailedPrecondition, "credentials rejected by the gateway: APNs answered 403 InvalidProviderToken").WithDetails(
			&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{
				{Type: "FAILURE_REASON_INVALID_CREDENTIALS", Subject: "credentials", Description: "APNs answered 403 InvalidProviderToken"},
			}},
		)
		return st.Err()
	}
	tests := []struct {
		name     string
		valid    bool
		err      error
		wantCode int
		wantErr  string
	}{
		{"valid", true, nil, ExitOK, ""},
		{"refused", false, refused(), ExitFailed, "credentials of apns app com.acme.shop are not valid: APNs answered 403 InvalidProviderToken"},
		// deliverysvc before refusals answered FailedPrecondition.
		{"invalid, older deliverysvc", false, nil, ExitFailed, "credentials of apns app com.acme.shop are not valid: 403 InvalidProviderToken"},
		{"other precondition", false, status.Error(codes.FailedPrecondition, "something else"), ExitConflict, "failed precondition: something else"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.apps.validate = func(_ context.Context, r *deliveryv1.ValidateAppRequest) (*deliveryv1.ValidateAppResponse, error) {
				if tt.err != nil {
					return nil, tt.err
				}
				resp := &deliveryv1.ValidateAppResponse{App: sampleApps()[0], Valid: tt.valid}
				if !tt.valid {
					resp.Detail = "403 InvalidProviderToken"
				}
				return resp, nil
			}
			res := h.run(t, "app", "validate", "--platform", "apns", "--app-id", "com.acme.shop")
			if res.code != tt.wantCode {
				t.Errorf("exit: got %d, want %d", res.code, tt.wantCode)
			}
			if !strings.Contains(res.stderr, tt.wantErr) {
				t.Errorf("stderr: got %q, want %q", res.stderr, tt.wantErr)
			}
		})
	}
}

func TestAppUpdateCredentialsAndDelete(t *testing.T) {
	h := newHarness(t)
	p8, pemText := writeP8(t)
	var gotUpdate *deliveryv1.UpdateAppCredentialsRequest
	h.apps.update = func(_ context.Context, r *deliveryv1.UpdateAppCredentialsRequest) (*deliveryv1.UpdateAppCredentialsResponse, error) {
		gotUpdate = r
		return &deliveryv1.UpdateAppCredentialsResponse{App: sampleApps()[0]}, nil
	}
	res := h.run(t, "app", "update-credentials", "--platform", "apns", "--app-id", "com.acme.shop", "--p8", p8, "--key-id", "NEWKEY1234", "--team-id", "TEAM123456")
	if res.code != 0 {
		t.Fatalf("update: exit %d: %s", res.code, res.stderr)
	}
	if got := gotUpdate.GetCredentials().GetApnsToken(); got.GetKeyId() != "NEWKEY1234" || got.GetPrivateKeyPem() != pemText {
		t.Errorf("update credentials: got %v", got)
	}

	var gotDelete *deliveryv1.DeleteAppRequest
	h.apps.del = func(_ context.Context, r *deliveryv1.DeleteAppRequest) (*deliveryv1.DeleteAppResponse, error) {
		gotDelete = r
		return &deliveryv1.DeleteAppResponse{}, nil
	}
	res = h.run(t, "app", "delete", "--platform", "fcm", "--app-id", "com.acme.shop")
	if res.code != 0 || res.stdout != "deleted fcm app com.acme.shop\n" {
		t.Errorf("delete: exit %d, stdout %q", res.code, res.stdout)
	}
	if gotDelete.GetKey().GetPlatform() != commonv1.Platform_PLATFORM_FCM || gotDelete.GetKey().GetAppId() != "com.acme.shop" {
		t.Errorf("delete request: got %v", gotDelete)
	}
}
