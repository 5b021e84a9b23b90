package apps

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/secret"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// fakeGateways answers with its function fields.
type fakeGateways struct {
	CheckFunc func(ctx context.Context, key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) error
	OpenFunc  func(key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) (Sender, error)
}

func (f *fakeGateways) Check(ctx context.Context, key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) error {
	return f.CheckFunc(ctx, key, env, c)
}
func (f *fakeGateways) Open(key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) (Sender, error) {
	return f.OpenFunc(key, env, c)
}

// fakeSender is a Sender whose calls and Close are observable.
type fakeSender struct {
	SendFunc func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt
	closed   atomic.Bool
	fp       string // fingerprint of the credentials it was opened with
}

func (f *fakeSender) Send(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
	return f.SendFunc(ctx, pushes)
}
func (f *fakeSender) Close() { f.closed.Store(true) }

type env struct {
	dir     string
	key     []byte
	svc     *Service
	store   *Store
	gw      *fakeGateways
	mu      sync.Mutex
	senders []*fakeSender
	close   func()
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{dir: t.TempDir(), key: bytes.Repeat([]byte{42}, 32)}
	e.gw = &fakeGateways{
		CheckFunc: func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error { return nil },
		OpenFunc: func(_ delivery.AppKey, _ commonv1.ApnsEnvironment, c creds.Credentials) (Sender, error) {
			s := &fakeSender{fp: c.Info().Fingerprint, SendFunc: func(context.Context, []delivery.Push) []delivery.Attempt { return nil }}
			e.mu.Lock()
			e.senders = append(e.senders, s)
			e.mu.Unlock()
			return s, nil
		},
	}
	e.open(t)
	t.Cleanup(func() { e.close() })
	return e
}

func (e *env) open(t *testing.T) {
	t.Helper()
	db, err := boltdb.Open(e.dir, "deliverysvc.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := buckets.Create(db); err != nil {
		t.Fatal(err)
	}
	box, _ := secret.NewBox(e.key)
	if e.store, err = OpenStore(db, box); err != nil {
		t.Fatal(err)
	}
	e.svc = NewService(e.store, e.gw, nil)
	e.close = func() { e.svc.Close(); db.Close() }
}

func p8(t *testing.T) string {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func saJSON(t *testing.T, email string) string {
	k, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	b, _ := json.Marshal(map[string]string{
		"type": "service_account", "project_id": "proj-1", "client_email": email,
		"private_key": string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "token_uri": "https://oauth2.googleapis.com/token",
	})
	return string(b)
}

var (
	apnsKey = delivery.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppID: "com.example.app"}
	fcmKey  = delivery.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.example.android"}
)

func apnsInput(pem string) RegisterInput {
	return RegisterInput{Key: apnsKey, DisplayName: "Example", Credentials: RawCredentials{APNs: &RawAPNs{KeyPEM: pem, KeyID: "KEY1234567", TeamID: "TEAM123456"}}}
}

func TestCredentialsAreEncryptedAtRest(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	keyPEM := p8(t)
	const email = "sender-7f3a@proj-1.iam.gserviceaccount.com"
	sa := saJSON(t, email)
	if _, err := e.svc.Register(ctx, apnsInput(keyPEM)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Register(ctx, RegisterInput{Key: fcmKey, Credentials: RawCredentials{FCM: &RawFCM{JSON: sa}}}); err != nil {
		t.Fatal(err)
	}
	// Both suspended, by gateways whose words name the credentials: the
	// APNs check names the team (and here the key), the FCM token endpoint
	// the service account.
	e.gw.CheckFunc = func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error {
		return &creds.RejectedError{Reason: commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH, Detail: `APNs answered 400 TopicDisallowed: team TEAM123456 (key KEY1234567) may not push to topic "com.example.app"`}
	}
	if _, err := e.svc.Validate(ctx, apnsKey); !errors.Is(err, creds.ErrRejected) {
		t.Fatalf("Validate: got %v, want the rejection", err)
	}
	fcmApp, err := e.svc.App(ctx, fcmKey)
	if err != nil {
		t.Fatal(err)
	}
	e.senders[len(e.senders)-1].SendFunc = func(context.Context, []delivery.Push) []delivery.Attempt {
		return []delivery.Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: "OAuth2 token exchange refused (400): invalid_grant: account " + email + " of project proj-1 not found"}}
	}
	fcmApp.Sender.Send(ctx, make([]delivery.Push, 1))
	if err := e.svc.Suspend(ctx, fcmKey, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, "OAuth2 token exchange refused (400): invalid_grant: account "+email+" of project proj-1 not found"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []delivery.AppKey{apnsKey, fcmKey} {
		if a, _ := e.svc.Get(ctx, k); a.State != StateSuspended || !strings.Contains(a.SuspendedDetail, "[") {
			t.Errorf("%s: got %v %q, want suspended with a redacted detail", k.AppID, a.State, a.SuspendedDetail)
		}
	}
	e.close()

	raw, err := os.ReadFile(filepath.Join(e.dir, "deliverysvc.db"))
	if err != nil {
		t.Fatal(err)
	}
	var saFields struct {
		PrivateKey string `json:"private_key"`
	}
	json.Unmarshal([]byte(sa), &saFields)
	secrets := map[string]string{"client email": email, "team id": "TEAM123456", "key id": "KEY1234567", "project id": "proj-1"}
	for name, p := range map[string]string{"APNs key": keyPEM, "FCM key": saFields.PrivateKey} {
		block, _ := pem.Decode([]byte(p))
		secrets[name+" DER"] = string(block.Bytes[len(block.Bytes)-40:])
		for i, line := range strings.Split(strings.TrimSpace(p), "\n") {
			if i > 0 && len(line) >= 40 {
				secrets[name+" PEM line"] = line[:40]
				break
			}
		}
	}
	for name, s := range secrets {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("the data file holds the %s in clear", name)
		}
	}
	if !bytes.Contains(raw, []byte("com.example.app")) {
		t.Fatal("the data file does not even hold the app id: is this the right file?")
	}
	if !bytes.Contains(raw, []byte("TopicDisallowed: team [team id] (key [key id])")) || !bytes.Contains(raw, []byte("account [client email] of project [project id]")) {
		t.Error("the data file does not hold the suspended details, redacted")
	}

	// The right key reads them back; another key cannot start.
	e.open(t)
	app, c, err := e.store.Get(tenant.Default, apnsKey)
	if err != nil || c.APNs.KeyPEM != keyPEM || app.Credentials.TeamID != "TEAM123456" {
		t.Errorf("reading back: got %v, key equal=%v, team %q", err, c.APNs != nil && c.APNs.KeyPEM == keyPEM, app.Credentials.TeamID)
	}
	e.close()
	e.key = bytes.Repeat([]byte{7}, 32)
	db, _ := boltdb.Open(e.dir, "deliverysvc.db")
	defer db.Close()
	box, _ := secret.NewBox(e.key)
	if _, err := OpenStore(db, box); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("another key: got %v, want a key mismatch error", err)
	}
	e.close = func() {}
}

func fieldsOf(t *testing.T, err error) []string {
	t.Helper()
	var ve *fault.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a validation error", err)
	}
	var out []string
	for _, v := range ve.Violations {
		out = append(out, v.Field)
	}
	return out
}

func TestRegisterValidation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	good := p8(t)
	for _, tc := range []struct {
		name  string
		in    RegisterInput
		field string
	}{
		{"no platform", RegisterInput{Key: delivery.AppKey{AppID: "com.x"}, Credentials: apnsInput(good).Credentials}, "key.platform"},
		{"no app id", RegisterInput{Key: delivery.AppKey{Platform: commonv1.Platform_PLATFORM_APNS}, Credentials: apnsInput(good).Credentials}, "key.app_id"},
		{"bad app id", RegisterInput{Key: delivery.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppID: "com x"}, Credentials: apnsInput(good).Credentials}, "key.app_id"},
		{"no credentials", RegisterInput{Key: apnsKey}, "credentials"},
		{"FCM credentials for APNs", RegisterInput{Key: apnsKey, Credentials: RawCredentials{FCM: &RawFCM{JSON: "{}"}}}, "credentials.fcm_service_account"},
		{"bad key", apnsInput("nope"), "credentials.apns_token.private_key_pem"},
		{"environment on FCM", RegisterInput{Key: fcmKey, APNsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX, Credentials: RawCredentials{FCM: &RawFCM{JSON: saJSON(t, "a@b")}}}, "apns_environment"},
		{"negative rate", func() RegisterInput { in := apnsInput(good); in.RateLimit = -1; return in }(), "rate_limit_per_second"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.svc.Register(ctx, tc.in)
			if got := fieldsOf(t, err); got[0] != tc.field {
				t.Errorf("got fields %v, want %s first", got, tc.field)
			}
		})
	}

	if _, err := e.svc.Register(ctx, apnsInput(good)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Register(ctx, apnsInput(good)); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("second registration: got %v, want ErrAlreadyExists", err)
	}
	// The same bundle id is a different app on FCM, and in another tenant.
	if _, err := e.svc.Register(tenant.With(ctx, "acme"), apnsInput(good)); err != nil {
		t.Errorf("same app in another tenant: got %v, want registered", err)
	}
	if _, err := e.svc.Get(tenant.With(ctx, "beta"), apnsKey); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetApp in a third tenant: got %v, want ErrNotFound", err)
	}
}

func TestRegisterLiveCheck(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.gw.CheckFunc = func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error {
		return &creds.RejectedError{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: "APNs answered 403 InvalidProviderToken"}
	}
	_, err := e.svc.Register(ctx, apnsInput(p8(t)))
	var rej *creds.RejectedError
	if !errors.As(err, &rej) || !errors.Is(err, creds.ErrRejected) || !strings.Contains(rej.Detail, "InvalidProviderToken") {
		t.Errorf("rejected: got %v, want a RejectedError naming the gateway's reason", err)
	}
	e.gw.CheckFunc = func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error {
		return errors.New("dial tcp: connection refused")
	}
	if _, err := e.svc.Register(ctx, apnsInput(p8(t))); !errors.Is(err, creds.ErrUnavailable) {
		t.Errorf("unreachable gateway: got %v, want ErrUnavailable", err)
	}
	if _, err := e.svc.Get(ctx, apnsKey); !errors.Is(err, ErrNotFound) {
		t.Errorf("after failed checks: got %v, want nothing stored", err)
	}
}

func TestRotationAndSuspension(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, err := e.svc.Register(ctx, apnsInput(p8(t)))
	if err != nil {
		t.Fatal(err)
	}
	if first.APNsEnvironment != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION || first.State != StateActive {
		t.Errorf("registered: got %v %v, want production, active", first.APNsEnvironment, first.State)
	}
	live, err := e.svc.App(ctx, apnsKey)
	if err != nil || live.Suspended || live.Limiter.Limit() != rate.Limit(DefaultRateLimit) {
		t.Fatalf("App: got %+v, %v; want active with the default limit", live, err)
	}

	// The gateway refuses the credentials; the pipeline then suspends.
	old := e.senders[0]
	old.SendFunc = func(context.Context, []delivery.Push) []delivery.Attempt {
		return []delivery.Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: "APNs 403 InvalidProviderToken"}}
	}
	if a := live.Sender.Send(ctx, make([]delivery.Push, 1)); a[0].Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Errorf("a refusal of the current credentials: got %v, want it as the gateway said", a[0].Reason)
	}
	if err := e.svc.Suspend(ctx, apnsKey, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, "APNs 403 InvalidProviderToken"); err != nil {
		t.Fatal(err)
	}
	if a, _ := e.svc.App(ctx, apnsKey); !a.Suspended || a.SuspendedDetail != "APNs 403 InvalidProviderToken" {
		t.Errorf("after Suspend: got %+v, want suspended with the detail", a)
	}
	if got, _ := e.svc.Get(ctx, apnsKey); got.State != StateSuspended || got.SuspendedReason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Errorf("stored: got %v %v, want suspended INVALID_CREDENTIALS", got.State, got.SuspendedReason)
	}

	// A send in flight on the old sender while the credentials rotate.
	inSend, release := make(chan struct{}), make(chan struct{})
	old.SendFunc = func(context.Context, []delivery.Push) []delivery.Attempt {
		close(inSend)
		<-release
		return nil
	}
	go live.Sender.Send(ctx, nil)
	<-inSend

	newPEM := p8(t)
	updated, err := e.svc.UpdateCredentials(ctx, apnsKey, RawCredentials{APNs: &RawAPNs{KeyPEM: newPEM, KeyID: "KEY7654321", TeamID: "TEAM123456"}})
	if err != nil {
		t.Fatal(err)
	}
	if updated.State != StateActive || updated.Credentials.KeyID != "KEY7654321" || updated.Credentials.Fingerprint == first.Credentials.Fingerprint {
		t.Errorf("updated: got %v %q %s, want active with the new key", updated.State, updated.Credentials.KeyID, updated.Credentials.Fingerprint)
	}
	current, _ := e.svc.App(ctx, apnsKey)
	if current.Suspended || current.Sender == live.Sender || len(e.senders) != 2 || e.senders[1].fp != updated.Credentials.Fingerprint {
		t.Errorf("after rotation: got suspended=%v, new sender=%v; want active on a sender with the new key", current.Suspended, current.Sender != live.Sender)
	}
	if old.closed.Load() {
		t.Error("the old sender closed while a send was still using it")
	}
	close(release)
	waitUntil(t, "the old sender to close", old.closed.Load)

	// Validate suspends on rejection, answering the gateway's refusal as
	// Register does; it resumes on success.
	e.gw.CheckFunc = func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error {
		return &creds.RejectedError{Reason: commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH, Detail: "APNs answered 400 TopicDisallowed: team TEAM123456 may not push to topic \"com.example.app\""}
	}
	_, err = e.svc.Validate(ctx, apnsKey)
	var rej *creds.RejectedError
	if !errors.As(err, &rej) || !errors.Is(err, creds.ErrRejected) || rej.Reason != commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH || !strings.Contains(rej.Detail, "TopicDisallowed") {
		t.Errorf("Validate rejected: got %v, want a RejectedError naming TopicDisallowed", err)
	}
	got, _ := e.svc.Get(ctx, apnsKey)
	if got.State != StateSuspended || got.SuspendedReason != commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH {
		t.Errorf("after a rejected Validate: got %v %v, want suspended SENDER_MISMATCH", got.State, got.SuspendedReason)
	}
	if want := `APNs answered 400 TopicDisallowed: team [team id] may not push to topic "com.example.app"`; got.SuspendedDetail != want {
		t.Errorf("suspended detail: got %q, want %q (the team id redacted)", got.SuspendedDetail, want)
	}
	if a, _ := e.svc.App(ctx, apnsKey); !a.Suspended || strings.Contains(a.SuspendedDetail, "TEAM123456") {
		t.Errorf("live app after a rejected Validate: got %+v, want suspended without the team id", a)
	}
	// An unreachable gateway changes nothing.
	e.gw.CheckFunc = func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error {
		return errors.New("dial tcp: connection refused")
	}
	if _, err := e.svc.Validate(ctx, apnsKey); !errors.Is(err, creds.ErrUnavailable) {
		t.Errorf("Validate, gateway unreachable: got %v, want ErrUnavailable", err)
	}
	e.gw.CheckFunc = func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error { return nil }
	app, err := e.svc.Validate(ctx, apnsKey)
	if err != nil || app.State != StateActive || app.SuspendedDetail != "" {
		t.Errorf("Validate passed: got %v %q %v, want active", app.State, app.SuspendedDetail, err)
	}
	if a, _ := e.svc.App(ctx, apnsKey); a.Suspended {
		t.Error("live app still suspended after a passing Validate")
	}

	if err := e.svc.Delete(ctx, apnsKey); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.App(ctx, apnsKey); !errors.Is(err, delivery.ErrAppNotFound) {
		t.Errorf("after Delete: got %v, want ErrAppNotFound", err)
	}
	if err := e.svc.Delete(ctx, apnsKey); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: got %v, want ErrNotFound", err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestListPages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	key := p8(t)
	ids := []string{"com.c", "com.a", "com.b"}
	for _, id := range ids {
		in := apnsInput(key)
		in.Key.AppID = id
		if _, err := e.svc.Register(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.svc.Register(ctx, RegisterInput{Key: delivery.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.a"}, Credentials: RawCredentials{FCM: &RawFCM{JSON: saJSON(t, "x@y")}}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	token := ""
	for page := 0; page < 5; page++ {
		apps, next, err := e.svc.List(ctx, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range apps {
			got = append(got, platformSlug(a.Key.Platform)+"/"+a.Key.AppID)
		}
		if next == "" {
			break
		}
		token = next
	}
	want := "apns/com.a apns/com.b apns/com.c fcm/com.a"
	if strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	if _, _, err := e.svc.List(ctx, 0, "garbage!"); fieldsOf(t, err)[0] != "page_token" {
		t.Errorf("bad page token: got %v", err)
	}
	if apps, _, _ := e.svc.List(tenant.With(ctx, "other"), 0, ""); len(apps) != 0 {
		t.Errorf("other tenant lists %d apps, want 0", len(apps))
	}
}

func TestCustomRateLimit(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	in := apnsInput(p8(t))
	in.RateLimit = 50
	if _, err := e.svc.Register(ctx, in); err != nil {
		t.Fatal(err)
	}
	a, err := e.svc.App(ctx, apnsKey)
	if err != nil || a.Limiter.Limit() != 50 || a.Limiter.Burst() != 50 {
		t.Errorf("got limit %v burst %d (%v), want 50/s burst 50", a.Limiter.Limit(), a.Limiter.Burst(), err)
	}
}

// invalidCredentials answers a send of one push as APNs does a revoked key.
func invalidCredentials(context.Context, []delivery.Push) []delivery.Attempt {
	return []delivery.Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: "APNs 403 InvalidProviderToken"}}
}

func rotate(t *testing.T, e *env, keyID string) App {
	t.Helper()
	app, err := e.svc.UpdateCredentials(context.Background(), apnsKey, RawCredentials{APNs: &RawAPNs{KeyPEM: p8(t), KeyID: keyID, TeamID: "TEAM123456"}})
	if err != nil {
		t.Fatal(err)
	}
	return app
}

// The old key is revoked and the new one installed while a push is in
// flight with the old one: its refusal is retried, and does not suspend.
func TestRefusalOfReplacedCredentialsIsRetried(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.svc.Register(ctx, apnsInput(p8(t))); err != nil {
		t.Fatal(err)
	}
	live, _ := e.svc.App(ctx, apnsKey)
	inSend, release := make(chan struct{}), make(chan struct{})
	e.senders[0].SendFunc = func(context.Context, []delivery.Push) []delivery.Attempt {
		close(inSend)
		<-release
		return invalidCredentials(context.Background(), nil)
	}
	attempts := make(chan []delivery.Attempt, 1)
	go func() { attempts <- live.Sender.Send(ctx, make([]delivery.Push, 1)) }()
	<-inSend
	rotate(t, e, "KEY7654321")
	close(release)
	a := (<-attempts)[0]
	if delivery.ClassOf(a.Reason) != delivery.ClassRetryable || !strings.HasPrefix(a.Detail, "APNs 403 InvalidProviderToken; ") {
		t.Errorf("refusal of the replaced credentials: got %v %q, want retryable, quoting the gateway", a.Reason, a.Detail)
	}
	// Were the pipeline to call Suspend for it anyway, the new credentials
	// stay active.
	if err := e.svc.Suspend(ctx, apnsKey, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, "APNs 403 InvalidProviderToken"); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.svc.Get(ctx, apnsKey); got.State != StateActive {
		t.Errorf("after a refusal of the replaced credentials: got %v, want active", got.State)
	}

	// The new credentials refused: that suspends.
	current, _ := e.svc.App(ctx, apnsKey)
	e.senders[1].SendFunc = invalidCredentials
	if a := current.Sender.Send(ctx, make([]delivery.Push, 1)); a[0].Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Errorf("refusal of the current credentials: got %v, want INVALID_CREDENTIALS", a[0].Reason)
	}
	if err := e.svc.Suspend(ctx, apnsKey, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, "APNs 403 InvalidProviderToken"); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.svc.Get(ctx, apnsKey); got.State != StateSuspended {
		t.Errorf("after a refusal of the current credentials: got %v, want suspended", got.State)
	}
}

// A refusal that lands while new credentials are being checked is retried;
// a Suspend waiting for the check does not suspend the new credentials.
func TestRefusalDuringTheLiveCheck(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.svc.Register(ctx, apnsInput(p8(t))); err != nil {
		t.Fatal(err)
	}
	live, _ := e.svc.App(ctx, apnsKey)
	e.senders[0].SendFunc = invalidCredentials
	// Refused just before the rotation starts: the pipeline's Suspend for
	// it will wait for the rotation's lock.
	if a := live.Sender.Send(ctx, make([]delivery.Push, 1)); a[0].Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Fatalf("before the rotation: got %v, want INVALID_CREDENTIALS", a[0].Reason)
	}

	inCheck, passCheck := make(chan struct{}), make(chan error)
	e.gw.CheckFunc = func(context.Context, delivery.AppKey, commonv1.ApnsEnvironment, creds.Credentials) error {
		close(inCheck)
		return <-passCheck
	}
	rotated := make(chan error, 1)
	go func() {
		_, err := e.svc.UpdateCredentials(ctx, apnsKey, RawCredentials{APNs: &RawAPNs{KeyPEM: p8(t), KeyID: "KEY7654321", TeamID: "TEAM123456"}})
		rotated <- err
	}()
	<-inCheck
	if a := live.Sender.Send(ctx, make([]delivery.Push, 1)); delivery.ClassOf(a[0].Reason) != delivery.ClassRetryable {
		t.Errorf("during the live check: got %v, want retryable", a[0].Reason)
	}
	suspended := make(chan error, 1)
	go func() {
		suspended <- e.svc.Suspend(ctx, apnsKey, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, "APNs 403 InvalidProviderToken")
	}()
	time.Sleep(20 * time.Millisecond) // let Suspend reach the lock
	passCheck <- nil
	if err := <-rotated; err != nil {
		t.Fatal(err)
	}
	if err := <-suspended; err != nil {
		t.Fatal(err)
	}
	if got, _ := e.svc.Get(ctx, apnsKey); got.State != StateActive || got.Credentials.KeyID != "KEY7654321" {
		t.Errorf("after the rotation: got %v %s, want active with the new key", got.State, got.Credentials.KeyID)
	}
	if a, _ := e.svc.App(ctx, apnsKey); a.Suspended {
		t.Error("the live app is suspended after the rotation")
	}

	// A rotation whose new credentials are refused leaves the old ones in
	// place: their refusal suspends again.
	inCheck = make(chan struct{})
	go func() {
		_, err := e.svc.UpdateCredentials(ctx, apnsKey, RawCredentials{APNs: &RawAPNs{KeyPEM: p8(t), KeyID: "KEY1111111", TeamID: "TEAM123456"}})
		rotated <- err
	}()
	<-inCheck
	current, _ := e.svc.App(ctx, apnsKey)
	e.senders[1].SendFunc = invalidCredentials
	if a := current.Sender.Send(ctx, make([]delivery.Push, 1)); delivery.ClassOf(a[0].Reason) != delivery.ClassRetryable {
		t.Errorf("during the second live check: got %v, want retryable", a[0].Reason)
	}
	passCheck <- &creds.RejectedError{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: "APNs answered 403 InvalidProviderToken"}
	if err := <-rotated; !errors.Is(err, creds.ErrRejected) {
		t.Fatalf("rotation to refused credentials: got %v, want rejected", err)
	}
	if a := current.Sender.Send(ctx, make([]delivery.Push, 1)); a[0].Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Errorf("after the failed rotation: got %v, want INVALID_CREDENTIALS", a[0].Reason)
	}
	if err := e.svc.Suspend(ctx, apnsKey, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, "APNs 403 InvalidProviderToken"); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.svc.Get(ctx, apnsKey); got.State != StateSuspended || got.Credentials.KeyID != "KEY7654321" {
		t.Errorf("after the failed rotation: got %v %s, want suspended with the key in place", got.State, got.Credentials.KeyID)
	}
}
