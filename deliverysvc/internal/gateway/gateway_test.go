package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"firebase.google.com/go/v4/messaging"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

const (
	teamID   = "TEAM123456"
	keyID    = "KEY1234567"
	bundleID = "com.example.app"
	project  = "proj-1"
)

type emulators struct {
	apns *apns.Server
	fcm  *fcm.Server
	gw   *Gateways
}

func start(t *testing.T) *emulators {
	t.Helper()
	ca, err := tlsca.New()
	if err != nil {
		t.Fatal(err)
	}
	a, err := apns.Start(apns.Options{CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	f, err := fcm.Start(fcm.Options{CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	gw, err := New(Config{APNsURL: a.URL(), FCMEndpoint: f.URL() + "/v1", ExtraCAPEM: ca.CertPEM(), FCMLinger: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &emulators{apns: a, fcm: f, gw: gw}
}

func (e *emulators) apnsCreds(t *testing.T, team, kid, topic string) creds.Credentials {
	t.Helper()
	p8, _, err := e.apns.NewProviderKey(team, kid)
	if err != nil {
		t.Fatal(err)
	}
	if topic != "" {
		e.apns.RegisterTopic(team, topic)
	}
	c, err := creds.ParseAPNs(string(p8), kid, team, "c")
	if err != nil {
		t.Fatal(err)
	}
	return creds.Credentials{APNs: c}
}

func (e *emulators) fcmCreds(t *testing.T) creds.Credentials {
	t.Helper()
	sa, _, err := e.fcm.NewServiceAccount(project)
	if err != nil {
		t.Fatal(err)
	}
	c, err := creds.ParseFCM(string(sa), "c")
	if err != nil {
		t.Fatal(err)
	}
	return creds.Credentials{FCM: c}
}

// openWithTimeout opens a sender on gateways like e's whose RequestTimeout
// is timeout; the test closes it.
func (e *emulators) openWithTimeout(t *testing.T, key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials, timeout time.Duration) apps.Sender {
	t.Helper()
	gw, err := New(Config{
		APNsURL: e.apns.URL(), FCMEndpoint: e.fcm.URL() + "/v1", ExtraCAPEM: e.gw.cfg.ExtraCAPEM,
		FCMLinger: time.Millisecond, RequestTimeout: timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	return openSender(t, gw, key, env, c)
}

// openSender opens a sender on gw for the app; the test closes it.
func openSender(t *testing.T, gw *Gateways, key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) apps.Sender {
	t.Helper()
	s, err := gw.Open(key, env, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

var (
	apnsKey = delivery.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppID: bundleID}
	fcmKey  = delivery.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppID: "com.example.android"}
	sandbox = commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX
)

func TestCheckAPNs(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if err := e.gw.Check(ctx, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID)); err != nil {
		t.Errorf("registered key and topic: got %v, want accepted", err)
	}

	// A key Apple does not know: 403 InvalidProviderToken.
	unknown := e.apnsCreds(t, teamID, "KEY0000001", bundleID)
	e.apns.RegisterKey(teamID, "KEY0000001", &e.apnsCreds(t, "TEAM999999", "KEY9999999", "").APNs.Key.PublicKey)
	var rej *creds.RejectedError
	if err := e.gw.Check(ctx, apnsKey, sandbox, unknown); !errors.As(err, &rej) ||
		rej.Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS || !strings.Contains(rej.Detail, "403 InvalidProviderToken") {
		t.Errorf("unknown key: got %v, want rejected with 403 InvalidProviderToken", err)
	}
	// A team that may not push to the topic.
	other := e.apnsCreds(t, "TEAM777777", "KEY7777777", "com.other.app")
	if err := e.gw.Check(ctx, apnsKey, sandbox, other); !errors.As(err, &rej) ||
		rej.Reason != commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH || !strings.Contains(rej.Detail, "TopicDisallowed") {
		t.Errorf("foreign topic: got %v, want rejected as SENDER_MISMATCH naming TopicDisallowed", err)
	}
	// A gateway that is down cannot say.
	e.apns.SetAvailable(false)
	if err := e.gw.Check(ctx, apnsKey, sandbox, e.apnsCreds(t, teamID, "KEY2222222", bundleID)); !errors.Is(err, creds.ErrUnavailable) {
		t.Errorf("gateway down: got %v, want ErrUnavailable", err)
	}
}

func TestCheckFCM(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	good := e.fcmCreds(t)
	before := e.fcm.Count()
	if err := e.gw.Check(ctx, fcmKey, 0, good); err != nil {
		t.Fatalf("registered service account: got %v, want accepted", err)
	}
	after := e.fcm.Count()
	if after.TokensIssued != before.TokensIssued+1 || after.Validated != before.Validated+1 || after.Delivered != before.Delivered {
		t.Errorf("got %d token exchanges, %d dry runs, %d deliveries; want one exchange and one validate_only send, nothing delivered",
			after.TokensIssued-before.TokensIssued, after.Validated-before.Validated, after.Delivered-before.Delivered)
	}

	// A service account the token endpoint does not know: invalid_grant.
	stranger := e.fcmCreds(t)
	stranger.FCM.JSON = []byte(strings.Replace(string(stranger.FCM.JSON), stranger.FCM.ClientEmail, "nobody@proj-1.iam.gserviceaccount.com", 1))
	var rej *creds.RejectedError
	if err := e.gw.Check(ctx, fcmKey, 0, stranger); !errors.As(err, &rej) || !strings.Contains(rej.Detail, "invalid_grant") {
		t.Errorf("unknown service account: got %v, want rejected naming invalid_grant", err)
	}
	// A refusal on the send itself.
	e.fcm.SetTokenOutcome(checkFCMToken, fcm.ErrSenderIDMismatch)
	if err := e.gw.Check(ctx, fcmKey, 0, good); !errors.As(err, &rej) || rej.Reason != commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH {
		t.Errorf("sender mismatch: got %v, want rejected as SENDER_MISMATCH", err)
	}
}

// A service account whose token_uri is neither Google's nor on the
// configured FCM endpoint's host is refused before any request: the
// exchange would POST to it and quote its answer (an internal address
// read through deliverysvc).
func TestFCMTokenURIMustBeGoogleOrTheEndpoint(t *testing.T) {
	e := start(t)
	var hits atomic.Int32
	internal := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprint(w, `{"secret":"internal"}`)
	}))
	defer internal.Close()
	good := e.fcmCreds(t)
	elsewhere, err := creds.ParseFCM(strings.Replace(string(good.FCM.JSON), good.FCM.TokenURI, internal.URL+"/token", 1), "c")
	if err != nil {
		t.Fatal(err)
	}
	var rej *creds.RejectedError
	if err := e.gw.Check(context.Background(), fcmKey, 0, creds.Credentials{FCM: elsewhere}); !errors.As(err, &rej) || !strings.Contains(rej.Detail, "token_uri") {
		t.Errorf("check: got %v, want rejected naming token_uri", err)
	}
	if _, err := e.gw.Open(fcmKey, 0, creds.Credentials{FCM: elsewhere}); err == nil || !strings.Contains(err.Error(), "token_uri") {
		t.Errorf("open: got %v, want an error naming token_uri", err)
	}
	if hits.Load() != 0 {
		t.Errorf("the other host got %d requests, want none", hits.Load())
	}
	// Talking to Google (no FCMEndpoint), only Google's token endpoints pass.
	google, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, uri := range append([]string{good.FCM.TokenURI}, GoogleTokenURIs...) {
		err := google.checkTokenURI(uri)
		if want := slices.Contains(GoogleTokenURIs, uri); (err == nil) != want {
			t.Errorf("without an FCM endpoint, %s: got %v, want accepted %v", uri, err, want)
		}
	}
}

func apnsPush(token string) delivery.Push {
	return delivery.Push{
		Target: delivery.Target{Token: token, Platform: commonv1.Platform_PLATFORM_APNS, AppID: bundleID},
		APNs:   &delivery.APNsPush{Topic: bundleID, PushType: "alert", Payload: []byte(`{"aps":{"alert":"hi"}}`), CollapseID: "m1", Expiration: time.Now().Add(time.Hour)},
	}
}

func TestAPNsAnswersAreClassified(t *testing.T) {
	e := start(t)
	s := openSender(t, e.gw, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID))
	token := func(i int) string { return strings.Repeat("0", 62) + string(rune('a'+i/10)) + string(rune('0'+i%10)) }
	gone := time.UnixMilli(1_700_000_000_000)
	cases := []struct {
		outcome string
		want    commonv1.FailureReason
	}{
		{"", commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED},
		{apns.ReasonBadDeviceToken, commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN},
		{apns.ReasonUnregistered, commonv1.FailureReason_FAILURE_REASON_UNREGISTERED},
		{apns.ReasonExpiredToken, commonv1.FailureReason_FAILURE_REASON_EXPIRED_TOKEN},
		{apns.ReasonDeviceTokenNotForTopic, commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC},
		{apns.ReasonTooManyRequests, commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED},
		{apns.ReasonInternalServerError, commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE},
		{apns.ReasonServiceUnavailable, commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE},
		{apns.ReasonPayloadTooLarge, commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE},
		{apns.ReasonBadCollapseID, commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE},
	}
	pushes := make([]delivery.Push, len(cases))
	for i, c := range cases {
		pushes[i] = apnsPush(token(i))
		switch c.outcome {
		case "":
		case apns.ReasonUnregistered:
			e.apns.MarkUnregistered(token(i), gone)
		default:
			if err := e.apns.SetTokenOutcome(token(i), c.outcome); err != nil {
				t.Fatal(err)
			}
		}
	}
	attempts := s.Send(context.Background(), pushes)
	for i, c := range cases {
		a := attempts[i]
		if a.Reason != c.want {
			t.Errorf("%q: got %v (%s), want %v", c.outcome, a.Reason, a.Detail, c.want)
		}
		if c.outcome == "" && a.GatewayID == "" {
			t.Errorf("accepted push has no apns-id")
		}
		if c.outcome != "" && !strings.Contains(a.Detail, c.outcome) {
			t.Errorf("%q: detail %q does not name the reason", c.outcome, a.Detail)
		}
		if c.outcome == apns.ReasonUnregistered && !a.GatewayTime.Equal(gone.Truncate(time.Second)) {
			t.Errorf("410 timestamp: got %v, want %v", a.GatewayTime, gone)
		}
	}
	// The push that was accepted arrived as sent.
	got := e.apns.ReceivedFor(token(0))
	if len(got) != 1 || got[0].CollapseID != "m1" || got[0].Topic != bundleID || got[0].PushType != "alert" || got[0].Priority != "" {
		t.Errorf("received: got %+v, want one alert with collapse id m1 and the default priority", got)
	}
}

func TestAPNsRetryAfterAndCredentials(t *testing.T) {
	e := start(t)
	c := e.apnsCreds(t, teamID, keyID, bundleID)
	s := openSender(t, e.gw, apnsKey, sandbox, c)
	if err := e.apns.SetFaults(apns.Faults{TooManyRequestsRate: 1, RetryAfter: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	a := s.Send(context.Background(), []delivery.Push{apnsPush(strings.Repeat("1", 64))})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED || a.RetryAfter != 3*time.Second {
		t.Errorf("429: got %v with Retry-After %v, want RATE_LIMITED with 3s", a.Reason, a.RetryAfter)
	}
	e.apns.SetFaults(apns.Faults{})

	// Apple no longer knows the key: 403.
	e.apns.RegisterKey(teamID, keyID, &e.apnsCreds(t, "TEAM999999", "KEY9999999", "").APNs.Key.PublicKey)
	a = s.Send(context.Background(), []delivery.Push{apnsPush(strings.Repeat("1", 64))})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS || !strings.Contains(a.Detail, "InvalidProviderToken") {
		t.Errorf("unknown key: got %v %q, want INVALID_CREDENTIALS naming InvalidProviderToken", a.Reason, a.Detail)
	}
}

func TestAPNsNetworkErrors(t *testing.T) {
	e := start(t)
	s := openSender(t, e.gw, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID))
	if err := e.apns.SetFaults(apns.Faults{DropEvery: 1, DropMode: "close"}); err != nil {
		t.Fatal(err)
	}
	token := strings.Repeat("2", 64)
	a := s.Send(context.Background(), []delivery.Push{apnsPush(token)})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_NETWORK {
		t.Errorf("dropped connection: got %v %q, want NETWORK", a.Reason, a.Detail)
	}
	if strings.Contains(a.Detail, token) {
		t.Errorf("network error detail quotes the device token: %q", a.Detail)
	}
}

func fcmPush(token string) delivery.Push {
	ttl := time.Hour
	return delivery.Push{
		Target: delivery.Target{Token: token, Platform: commonv1.Platform_PLATFORM_FCM, AppID: fcmKey.AppID},
		FCM:    fcmMessage(token, ttl),
	}
}

func TestFCMAnswersAreClassified(t *testing.T) {
	e := start(t)
	s := openSender(t, e.gw, fcmKey, 0, e.fcmCreds(t))
	cases := []struct {
		outcome string
		want    commonv1.FailureReason
	}{
		{"", commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED},
		{fcm.ErrUnregistered, commonv1.FailureReason_FAILURE_REASON_UNREGISTERED},
		{fcm.ErrInvalidArgument, commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN},
		{fcm.ErrSenderIDMismatch, commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH},
		{fcm.ErrQuotaExceeded, commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED},
		{fcm.ErrInternal, commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE},
		{fcm.ErrThirdPartyAuthError, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS},
	}
	pushes := make([]delivery.Push, len(cases))
	for i, c := range cases {
		token := "device-" + string(rune('a'+i))
		pushes[i] = fcmPush(token)
		if c.outcome != "" {
			if err := e.fcm.SetTokenOutcome(token, c.outcome); err != nil {
				t.Fatal(err)
			}
		}
	}
	attempts := s.Send(context.Background(), pushes)
	for i, c := range cases {
		if a := attempts[i]; a.Reason != c.want {
			t.Errorf("%q: got %v (%s), want %v", c.outcome, a.Reason, a.Detail, c.want)
		} else if c.outcome == "" && !strings.HasPrefix(a.GatewayID, "projects/proj-1/messages/") {
			t.Errorf("accepted message: gateway id %q, want the FCM message name", a.GatewayID)
		}
	}
	// QUOTA_EXCEEDED carries the Retry-After.
	if err := e.fcm.SetFaults(fcm.Faults{TooManyRequestsRate: 1, RetryAfter: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	a := s.Send(context.Background(), []delivery.Push{fcmPush("device-q")})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED || a.RetryAfter != 2*time.Second {
		t.Errorf("quota: got %v Retry-After %v, want RATE_LIMITED 2s", a.Reason, a.RetryAfter)
	}
	e.fcm.SetFaults(fcm.Faults{})
	// Revoked access tokens: a credentials problem.
	e.fcm.RevokeAccessTokens()
	if a := s.Send(context.Background(), []delivery.Push{fcmPush("device-r")})[0]; a.Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Errorf("revoked token: got %v %q, want INVALID_CREDENTIALS", a.Reason, a.Detail)
	}
}

func TestFCMChunksOfAtMost500(t *testing.T) {
	e := start(t)
	spans := tracetest.NewSpanRecorder()
	e.gw.tracer = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)).Tracer(tracerName)
	s := openSender(t, e.gw, fcmKey, 0, e.fcmCreds(t))
	pushes := make([]delivery.Push, 1201)
	for i := range pushes {
		pushes[i] = fcmPush("device-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)))
	}
	for _, a := range s.Send(context.Background(), pushes) {
		if a.Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
			t.Fatalf("got %v %s, want every message sent", a.Reason, a.Detail)
		}
	}
	if got := e.fcm.Count().Delivered; got != 1201 {
		t.Errorf("emulator delivered %d, want 1201", got)
	}
	// A chunk's span may end just after its results are handed back: wait
	// for the spans rather than read them once.
	var total int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		total = 0
		for _, sp := range spans.Ended() {
			if sp.Name() != "fcm.send_each" {
				continue
			}
			for _, kv := range sp.Attributes() {
				if kv.Key == "pushmesh.messages" {
					total += int(kv.Value.AsInt64())
				}
			}
		}
		if total >= 1201 || time.Now().After(deadline) {
			break
		}
	}
	for _, sp := range spans.Ended() {
		if sp.Name() != "fcm.send_each" {
			continue
		}
		for _, kv := range sp.Attributes() {
			if kv.Key == "pushmesh.messages" {
				if n := kv.Value.AsInt64(); n > 500 {
					t.Errorf("a SendEach call had %d messages, want at most 500", n)
				}
			}
		}
		if len(sp.Events()) > 0 {
			t.Errorf("chunk span has events %v: a chunk was refused", sp.Events())
		}
	}
	if total != 1201 {
		t.Errorf("SendEach calls covered %d messages, want 1201", total)
	}
}

// Messages of several callers share a SendEach chunk, inside which firebase
// retries a 503 itself after its Retry-After: that must never take a
// message past its own deadline because a longer-lived one shares the
// chunk.
func TestFCMChunkKeepsEachDeadline(t *testing.T) {
	e := start(t)
	s := openSender(t, e.gw, fcmKey, 0, e.fcmCreds(t))
	short, long := fcmPush("device-short-ttl"), fcmPush("device-long-ttl")
	short.Deadline = time.Now().Add(300 * time.Millisecond)
	long.Deadline = time.Now().Add(time.Hour)
	// UNAVAILABLE with Retry-After: 1 s, so firebase's retry would come
	// after the short deadline.
	if err := e.fcm.SetTokenOutcome(short.Target.Token, fcm.ErrUnavailable); err != nil {
		t.Fatal(err)
	}
	got := s.Send(context.Background(), []delivery.Push{short, long})
	if got[0].Reason == commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
		t.Errorf("short-lived message: sent, want a failure")
	}
	if got[1].Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
		t.Errorf("long-lived message: %v %s, want sent", got[1].Reason, got[1].Detail)
	}
	for _, d := range e.fcm.ReceivedFor(short.Target.Token) {
		if d.Time.After(short.Deadline) {
			t.Errorf("the short-lived message was sent again at %s, after its deadline %s", d.Time.Format(time.StampMilli), short.Deadline.Format(time.StampMilli))
		}
	}
}

func fcmMessage(token string, ttl time.Duration) *messaging.Message {
	return &messaging.Message{
		Token:        token,
		Data:         map[string]string{"pm_message_id": "m1"},
		Notification: &messaging.Notification{Title: "Hi", Body: "there"},
		Android:      &messaging.AndroidConfig{CollapseKey: "m1", TTL: &ttl},
	}
}

// A gateway that does not answer is cut off by Config.RequestTimeout, and
// the message fails as a network error instead of waiting for the gateway.
func TestFCMRequestTimeout(t *testing.T) {
	e := start(t)
	s := e.openWithTimeout(t, fcmKey, 0, e.fcmCreds(t), 100*time.Millisecond)
	// The access token first, so the timed-out step is the send and not
	// the token exchange (which the same timeout bounds).
	if _, err := s.(*fcmSender).client.tokens.Token(); err != nil {
		t.Fatal(err)
	}
	if err := e.fcm.SetFaults(fcm.Faults{Latency: time.Minute}); err != nil {
		t.Fatal(err)
	}
	defer e.fcm.SetFaults(fcm.Faults{})
	// No TTL deadline: only the request timeout can end each attempt
	// (firebase retries a network error four times, 7 s of backoff; that,
	// not the 5 × 100 ms of timeouts, is the test's wall time, and a TTL
	// short enough to cut it would end the message as TTL_EXPIRED).
	done := make(chan delivery.Attempt, 1)
	go func() { done <- s.Send(context.Background(), []delivery.Push{fcmPush("device-slow")})[0] }()
	select {
	case a := <-done:
		if a.Reason != commonv1.FailureReason_FAILURE_REASON_NETWORK || !strings.HasPrefix(a.Detail, "FCM request failed") ||
			!strings.Contains(a.Detail, context.DeadlineExceeded.Error()) {
			t.Fatalf("a push the gateway never answered: got %v %q, want NETWORK, the send timed out", a.Reason, a.Detail)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the send waited for a gateway that does not answer")
	}
}

// With a sandbox URL of its own, each push goes to the host of its token's
// environment (the app's when the token names none), and the live check to
// the app's.
func TestAPNsEnvironmentsGoToTheirHosts(t *testing.T) {
	e := start(t) // e.apns serves production
	sandboxEmu, err := apns.Start(apns.Options{CA: e.apns.CA()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sandboxEmu.Close() })
	c := e.apnsCreds(t, teamID, keyID, bundleID)
	sandboxEmu.RegisterKey(teamID, keyID, &c.APNs.Key.PublicKey)
	sandboxEmu.RegisterTopic(teamID, bundleID)
	gw, err := New(Config{APNsURL: e.apns.URL(), APNsSandboxURL: sandboxEmu.URL(), ExtraCAPEM: e.gw.cfg.ExtraCAPEM})
	if err != nil {
		t.Fatal(err)
	}
	production := commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION
	if err := gw.Check(context.Background(), apnsKey, sandbox, c); err != nil {
		t.Fatalf("check: %v", err)
	}
	if n := len(sandboxEmu.Received()); n != 1 || len(e.apns.Received()) != 0 {
		t.Fatalf("the sandbox app's check reached the sandbox host %d times and production %d, want 1 and 0", n, len(e.apns.Received()))
	}
	sandboxEmu.Reset()

	s := openSender(t, gw, apnsKey, sandbox, c)
	pushes := []delivery.Push{apnsPush(fmt.Sprintf("%064x", 1)), apnsPush(fmt.Sprintf("%064x", 2)), apnsPush(fmt.Sprintf("%064x", 3))}
	pushes[1].Target.APNsEnvironment = production
	pushes[2].Target.APNsEnvironment = sandbox
	for _, a := range s.Send(context.Background(), pushes) {
		if a.Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
			t.Fatalf("push failed: %v %s", a.Reason, a.Detail)
		}
	}
	tokens := func(srv *apns.Server) (out []string) {
		for _, d := range srv.Received() {
			out = append(out, d.Token[62:])
		}
		slices.Sort(out)
		return out
	}
	if got := tokens(sandboxEmu); !slices.Equal(got, []string{"01", "03"}) {
		t.Errorf("the sandbox host got tokens …%v, want …01 (the app's environment) and …03", got)
	}
	if got := tokens(e.apns); !slices.Equal(got, []string{"02"}) {
		t.Errorf("the production host got tokens …%v, want …02", got)
	}
}
