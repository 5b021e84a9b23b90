package grpcapi_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

func inTenant(ctx context.Context, tenant string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-pushmesh-tenant", tenant)
}

// badFields returns the code and the BadRequest fields of an error.
func badFields(err error) (codes.Code, []string) {
	st := status.Convert(err)
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return st.Code(), fields
}

// refusal returns the code of an error and the credentials violation of
// its PreconditionFailure (nil when it has none).
func refusal(err error) (codes.Code, *errdetails.PreconditionFailure_Violation) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				if v.GetSubject() == "credentials" {
					return st.Code(), v
				}
			}
		}
	}
	return st.Code(), nil
}

func apnsKey(app string) *deliveryv1.AppKey {
	return &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: app}
}

func TestAppServiceValidatesEveryField(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	p8, _, err := env.NewAPNsKey(testenv.TeamID, testenv.KeyID, "com.example.app")
	if err != nil {
		t.Fatal(err)
	}
	good := testenv.APNsCredentials(p8, testenv.KeyID, testenv.TeamID)
	for _, tc := range []struct {
		name  string
		req   *deliveryv1.RegisterAppRequest
		field string
	}{
		{"no key", &deliveryv1.RegisterAppRequest{Credentials: good}, "key.platform"},
		{"no app id", &deliveryv1.RegisterAppRequest{Key: apnsKey(""), Credentials: good}, "key.app_id"},
		{"bad app id", &deliveryv1.RegisterAppRequest{Key: apnsKey("com/example"), Credentials: good}, "key.app_id"},
		{"no credentials", &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app")}, "credentials"},
		{"bad p8", &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app"), Credentials: testenv.APNsCredentials([]byte("x"), testenv.KeyID, testenv.TeamID)}, "credentials.apns_token.private_key_pem"},
		{"bad key id", &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app"), Credentials: testenv.APNsCredentials(p8, "short", testenv.TeamID)}, "credentials.apns_token.key_id"},
		{"bad team id", &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app"), Credentials: testenv.APNsCredentials(p8, testenv.KeyID, "")}, "credentials.apns_token.team_id"},
		{"bad service account", &deliveryv1.RegisterAppRequest{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.x"}, Credentials: testenv.FCMCredentials([]byte(`{"type":"service_account"}`))}, "credentials.fcm_service_account.service_account_json"},
		{"rate limit", &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app"), Credentials: good, RateLimitPerSecond: -5}, "rate_limit_per_second"},
		{"display name", &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app"), Credentials: good, DisplayName: strings.Repeat("n", 201)}, "display_name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := env.Apps.RegisterApp(ctx, tc.req)
			code, fields := badFields(err)
			if code != codes.InvalidArgument || len(fields) == 0 || fields[0] != tc.field {
				t.Errorf("got %v %v, want InvalidArgument on %s", code, fields, tc.field)
			}
		})
	}
	for name, call := range map[string]func() error{
		"GetApp":    func() error { _, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey("")}); return err },
		"DeleteApp": func() error { _, err := env.Apps.DeleteApp(ctx, &deliveryv1.DeleteAppRequest{}); return err },
		"ValidateApp": func() error {
			_, err := env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: &deliveryv1.AppKey{AppId: "x"}})
			return err
		},
		"UpdateAppCredentials": func() error {
			_, err := env.Apps.UpdateAppCredentials(ctx, &deliveryv1.UpdateAppCredentialsRequest{Key: apnsKey("com.example.app")})
			return err
		},
		"ListApps": func() error {
			_, err := env.Apps.ListApps(ctx, &deliveryv1.ListAppsRequest{PageToken: "%%%"})
			return err
		},
	} {
		if code, fields := badFields(call()); code != codes.InvalidArgument || len(fields) == 0 {
			t.Errorf("%s with bad input: got %v %v, want InvalidArgument naming a field", name, code, fields)
		}
	}
	if _, err := env.Apps.ListApps(inTenant(ctx, "Not A Tenant"), &deliveryv1.ListAppsRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad tenant: got %v, want InvalidArgument", err)
	}
}

func TestAppLifecycle(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := inTenant(context.Background(), "acme")
	a, err := env.RegisterAPNsApp(ctx, "com.example.app", 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := env.RegisterFCMApp(ctx, "com.example.android", "proj-1", 2000)
	if err != nil {
		t.Fatal(err)
	}
	info := a.App.GetCredentials()
	if a.App.GetState() != deliveryv1.AppState_APP_STATE_ACTIVE || len(info.GetFingerprint()) != 32 || info.GetKeyId() != testenv.KeyID ||
		info.GetTeamId() != testenv.TeamID || a.App.GetValidateTime() == nil || a.App.GetApnsEnvironment() != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX {
		t.Errorf("registered APNs app: got %v", a.App)
	}
	if fi := f.App.GetCredentials(); fi.GetProjectId() != "proj-1" || !strings.HasSuffix(fi.GetClientEmail(), "@proj-1.iam.gserviceaccount.com") || f.App.GetRateLimitPerSecond() != 2000 {
		t.Errorf("registered FCM app: got %v", f.App)
	}
	got, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey("com.example.app")})
	if err != nil || got.GetApp().GetCredentials().GetFingerprint() != info.GetFingerprint() {
		t.Errorf("GetApp: got %v, %v", got, err)
	}
	list, err := env.Apps.ListApps(ctx, &deliveryv1.ListAppsRequest{})
	if err != nil || len(list.GetApps()) != 2 || list.GetApps()[0].GetKey().GetPlatform() != commonv1.Platform_PLATFORM_APNS {
		t.Errorf("ListApps: got %v, %v; want the APNs app then the FCM app", list, err)
	}
	if _, err := env.Apps.RegisterApp(ctx, &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app"), Credentials: testenv.APNsCredentials(a.P8, a.KeyID, a.TeamID)}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second registration: got %v, want AlreadyExists", err)
	}
	// Another tenant sees none of it.
	other := inTenant(context.Background(), "beta")
	if _, err := env.Apps.GetApp(other, &deliveryv1.GetAppRequest{Key: apnsKey("com.example.app")}); status.Code(err) != codes.NotFound {
		t.Errorf("GetApp in another tenant: got %v, want NotFound", err)
	}
	if _, err := env.Apps.DeleteApp(ctx, &deliveryv1.DeleteAppRequest{Key: apnsKey("com.example.app")}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey("com.example.app")}); status.Code(err) != codes.NotFound {
		t.Errorf("after DeleteApp: got %v, want NotFound", err)
	}
	code, fields := badFields(func() error {
		_, err := env.Apps.DeleteApp(ctx, &deliveryv1.DeleteAppRequest{Key: apnsKey("com.example.app")})
		return err
	}())
	if code != codes.NotFound || len(fields) != 1 || fields[0] != "key" {
		t.Errorf("deleting twice: got %v %v, want NotFound on key", code, fields)
	}
}

func TestRejectedCredentials(t *testing.T) {
	env := testenv.Start(t, testenv.Options{})
	ctx := context.Background()
	// The team may not push to this bundle id.
	p8, _, err := env.APNs.NewProviderKey(testenv.TeamID, testenv.KeyID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Apps.RegisterApp(ctx, &deliveryv1.RegisterAppRequest{Key: apnsKey("com.not.ours"), Credentials: testenv.APNsCredentials(p8, testenv.KeyID, testenv.TeamID)})
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "TopicDisallowed") {
		t.Fatalf("got %v, want FailedPrecondition naming TopicDisallowed", err)
	}
	if _, v := refusal(err); v.GetType() != "FAILURE_REASON_SENDER_MISMATCH" || !strings.Contains(v.GetDescription(), "TopicDisallowed") {
		t.Errorf("got details %v, want a PreconditionFailure with the reason", st.Details())
	}
	// An unknown service account fails the token exchange.
	sa, _, err := env.FCM.NewServiceAccount("proj-1")
	if err != nil {
		t.Fatal(err)
	}
	forged := strings.Replace(string(sa), "firebase-adminsdk-", "someone-else-", 1)
	_, err = env.Apps.RegisterApp(ctx, &deliveryv1.RegisterAppRequest{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.x"}, Credentials: testenv.FCMCredentials([]byte(forged))})
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "invalid_grant") {
		t.Errorf("unknown service account: got %v, want FailedPrecondition naming invalid_grant", err)
	}
	// A gateway that is down: try again later.
	env.APNs.SetAvailable(false)
	env.APNs.RegisterTopic(testenv.TeamID, "com.example.app")
	_, err = env.Apps.RegisterApp(ctx, &deliveryv1.RegisterAppRequest{Key: apnsKey("com.example.app"), Credentials: testenv.APNsCredentials(p8, testenv.KeyID, testenv.TeamID)})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("gateway down: got %v, want Unavailable", err)
	}
}

// ValidateApp answers a refusal as RegisterApp does, suspends the app, and
// stores the gateway's words without the team id they name.
func TestValidateAppRefusal(t *testing.T) {
	// The app is registered at one APNs; deliverysvc then restarts on the
	// same data against another APNs that knows the key but not that the
	// team owns the bundle id, so its check names the team.
	first := testenv.Start(t, testenv.Options{DataDir: t.TempDir()})
	ctx := context.Background()
	a, err := first.RegisterAPNsApp(ctx, "com.example.app", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.StopService(); err != nil {
		t.Fatal(err)
	}
	env := testenv.Start(t, testenv.Options{DataDir: t.TempDir()})
	if err := env.StopService(); err != nil {
		t.Fatal(err)
	}
	env.DataDir, env.Config.CredentialsKey = first.DataDir, first.Config.CredentialsKey
	if err := env.StartService(); err != nil {
		t.Fatal(err)
	}
	env.APNs.RegisterKey(a.TeamID, a.KeyID, &a.Key.PublicKey)

	_, err = env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: apnsKey("com.example.app")})
	code, v := refusal(err)
	if code != codes.FailedPrecondition || v.GetType() != "FAILURE_REASON_SENDER_MISMATCH" || !strings.Contains(v.GetDescription(), "TopicDisallowed") || !strings.Contains(v.GetDescription(), a.TeamID) {
		t.Fatalf("ValidateApp: got %v, want FailedPrecondition with the gateway's reason", err)
	}
	got, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey("com.example.app")})
	app := got.GetApp()
	if err != nil || app.GetState() != deliveryv1.AppState_APP_STATE_SUSPENDED || app.GetSuspendedReason() != commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH ||
		!strings.Contains(app.GetSuspendedDetail(), "TopicDisallowed: team [team id] may not push") {
		t.Fatalf("GetApp after the refusal: got %v %v, want SUSPENDED for SENDER_MISMATCH, the team id redacted from the detail", app, err)
	}
	out, err := env.Send(ctx, []*deliveryv1.Message{testenv.TokensMessage("k", &deliveryv1.Notification{Title: "Hi"}, testenv.APNsTarget(testenv.APNsToken(1), "com.example.app"))})
	if err != nil || len(out.Results) != 1 {
		t.Fatalf("Send: got %v %v", out, err)
	}
	if r := out.Results[0]; r.GetReason() != commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED || strings.Contains(r.GetDetail(), a.TeamID) {
		t.Errorf("a message to the suspended app: got %v %q, want APP_SUSPENDED without the team id", r.GetReason(), r.GetDetail())
	}

	// The suspended state, and the outcome of that message, are on disk;
	// neither names the team.
	if err := env.StopService(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(env.DataDir, "deliverysvc.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(a.TeamID)) || bytes.Contains(raw, []byte(a.KeyID)) {
		t.Errorf("deliverysvc.db holds the team id or key id in clear")
	}
	if !bytes.Contains(raw, []byte("team [team id] may not push")) {
		t.Error("deliverysvc.db does not hold the suspended detail: wrong file?")
	}
	if err := env.StartService(); err != nil {
		t.Fatal(err)
	}

	// A gateway that cannot be asked changes nothing.
	env.APNs.RegisterTopic(a.TeamID, "com.example.app")
	env.APNs.SetAvailable(false)
	if _, err := env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: apnsKey("com.example.app")}); status.Code(err) != codes.Unavailable {
		t.Errorf("ValidateApp, gateway down: got %v, want Unavailable", err)
	}
	if got, _ := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey("com.example.app")}); got.GetApp().GetState() != deliveryv1.AppState_APP_STATE_SUSPENDED {
		t.Errorf("after ValidateApp with the gateway down: got %v, want still SUSPENDED", got.GetApp().GetState())
	}
	env.APNs.SetAvailable(true)
	ok, err := env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: apnsKey("com.example.app")})
	if err != nil || !ok.GetValid() || ok.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE || ok.GetApp().GetSuspendedDetail() != "" {
		t.Errorf("ValidateApp once the team owns the topic: got %v %v, want valid and ACTIVE", ok, err)
	}
}
