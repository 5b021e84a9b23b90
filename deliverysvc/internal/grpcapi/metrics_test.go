package grpcapi_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/metrictest"
)

var (
	onAPNs = attribute.String("pushmesh.platform", "apns")
	onFCM  = attribute.String("pushmesh.platform", "fcm")
)

func reason(r string) attribute.KeyValue  { return attribute.String("pushmesh.failure_reason", r) }
func outcome(o string) attribute.KeyValue { return attribute.String("pushmesh.outcome", o) }

// startedWithMetrics is started with the service's metrics read back
// through reader.
func startedWithMetrics(t *testing.T) (*testenv.Env, *testenv.APNsApp, *metrictest.Reader) {
	t.Helper()
	mp, reader := metrictest.New(t)
	env := testenv.Start(t, testenv.Options{MeterProvider: mp})
	a, err := env.RegisterAPNsApp(context.Background(), bundleID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.RegisterFCMApp(context.Background(), packageName, "proj-1", 0); err != nil {
		t.Fatal(err)
	}
	return env, a, reader
}

// Sends through both gateways are counted by platform, dead tokens by
// reason, and each gateway request is timed with its outcome.
func TestMetricsCountSendsAndFailures(t *testing.T) {
	env, _, reader := startedWithMetrics(t)
	// The credential checks of the registrations were gateway requests too.
	okBefore := map[string]uint64{"apns": reader.Count("pushmesh.gateway.request.duration", onAPNs, outcome("ok")), "fcm": reader.Count("pushmesh.gateway.request.duration", onFCM, outcome("ok"))}
	rejectedBefore := reader.Count("pushmesh.gateway.request.duration", outcome("rejected"))

	env.APNs.MarkUnregistered(testenv.APNsToken(9), time.Now().Add(-time.Hour))
	env.FCM.MarkUnregistered(testenv.FCMToken(9))
	var batch []*deliveryv1.Message
	for i := range 3 {
		batch = append(batch, testenv.TokensMessage(fmt.Sprintf("a%d", i), note(), testenv.APNsTarget(testenv.APNsToken(i), bundleID)))
	}
	for i := range 2 {
		batch = append(batch, testenv.TokensMessage(fmt.Sprintf("f%d", i), note(), testenv.FCMTarget(testenv.FCMToken(i), packageName)))
	}
	// One message to two dead tokens: its results come as one batch.
	batch = append(batch, testenv.TokensMessage("dead", note(),
		testenv.APNsTarget(testenv.APNsToken(9), bundleID), testenv.FCMTarget(testenv.FCMToken(9), packageName)))
	send(t, env, context.Background(), batch)

	for _, c := range []struct {
		name  string
		attrs []attribute.KeyValue
		want  int64
	}{
		{"pushmesh.notifications.sent", []attribute.KeyValue{onAPNs}, 3},
		{"pushmesh.notifications.sent", []attribute.KeyValue{onFCM}, 2},
		{"pushmesh.notifications.failed", []attribute.KeyValue{onAPNs, reason("unregistered")}, 1},
		{"pushmesh.notifications.failed", []attribute.KeyValue{onFCM, reason("unregistered")}, 1},
		{"pushmesh.notifications.failed", nil, 2},
		{"pushmesh.delivery.in_flight", nil, 0},
		{"pushmesh.delivery.in_flight.limit", nil, delivery.DefaultMaxInFlight},
	} {
		if got := reader.Value(c.name, c.attrs...); got != c.want {
			t.Errorf("%s %v: got %d, want %d", c.name, c.attrs, got, c.want)
		}
	}
	if got := reader.Count("pushmesh.gateway.request.duration", onAPNs, outcome("ok")) - okBefore["apns"]; got != 3 {
		t.Errorf("APNs requests answered ok: got %d, want 3", got)
	}
	if got := reader.Count("pushmesh.gateway.request.duration", onFCM, outcome("ok")) - okBefore["fcm"]; got != 2 {
		t.Errorf("FCM requests answered ok: got %d, want 2", got)
	}
	if got := reader.Count("pushmesh.gateway.request.duration", outcome("rejected")) - rejectedBefore; got != 2 {
		t.Errorf("requests rejected (410 and 404 for the dead tokens): got %d, want 2", got)
	}
	// The dead tokens' verdicts reached profilesvc: nothing waits.
	reader.WaitValue("pushmesh.outbox.backlog", 0, attribute.String("pushmesh.outbox", "feedback"))
	if len(env.Feedback.All()) != 2 {
		t.Errorf("got %d verdicts at profilesvc, want 2", len(env.Feedback.All()))
	}
}

// Outcomes wait in the tracking outbox while trackingsvc is down, and the
// backlog gauge says so until it is back.
func TestMetricsOutboxBacklog(t *testing.T) {
	env, _, reader := startedWithMetrics(t)
	tracking := attribute.String("pushmesh.outbox", "tracking")
	reader.WaitValue("pushmesh.outbox.backlog", 0, tracking)

	env.Events.SetDown(true)
	var batch []*deliveryv1.Message
	for i := range 10 {
		batch = append(batch, testenv.TokensMessage(fmt.Sprintf("m%d", i), note(), testenv.APNsTarget(testenv.APNsToken(i), bundleID)))
	}
	send(t, env, context.Background(), batch)
	if got := reader.Value("pushmesh.outbox.backlog", tracking); got != 10 {
		t.Errorf("while trackingsvc is down: backlog %d, want the 10 outcomes", got)
	}
	env.Events.SetDown(false)
	reader.WaitValue("pushmesh.outbox.backlog", 0, tracking)
}

// An app whose credentials the gateway refuses shows in the suspended
// gauge until it is validated again; its sends fail by reason.
func TestMetricsSuspendedApps(t *testing.T) {
	env, a, reader := startedWithMetrics(t)
	ctx := context.Background()
	oneMsg := func(key string, i int) []*deliveryv1.Message {
		return []*deliveryv1.Message{testenv.TokensMessage(key, note(), testenv.APNsTarget(testenv.APNsToken(i), bundleID))}
	}
	if got := reader.Value("pushmesh.apps.suspended"); got != 0 {
		t.Fatalf("before: %d apps suspended, want 0", got)
	}
	// Apple no longer accepts the key.
	_, stranger, err := env.APNs.NewProviderKey("TEAM999999", "KEY9999999")
	if err != nil {
		t.Fatal(err)
	}
	env.APNs.RegisterKey(a.TeamID, a.KeyID, &stranger.PublicKey)
	send(t, env, ctx, oneMsg("k1", 1))
	send(t, env, ctx, oneMsg("k2", 2))

	if got := reader.Value("pushmesh.apps.suspended", onAPNs, reason("invalid_credentials")); got != 1 {
		t.Errorf("suspended: got %d (points %v), want 1 APNs app for invalid_credentials", got, reader.Attributes("pushmesh.apps.suspended"))
	}
	if got := reader.Value("pushmesh.notifications.failed", onAPNs, reason("invalid_credentials")); got != 1 {
		t.Errorf("failed for invalid_credentials: got %d, want 1", got)
	}
	if got := reader.Value("pushmesh.notifications.failed", onAPNs, reason("app_suspended")); got != 1 {
		t.Errorf("failed for app_suspended: got %d, want 1", got)
	}

	env.APNs.RegisterKey(a.TeamID, a.KeyID, &a.Key.PublicKey)
	if _, err := env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: apnsKey(bundleID)}); err != nil {
		t.Fatal(err)
	}
	if got := reader.Value("pushmesh.apps.suspended"); got != 0 {
		t.Errorf("after ValidateApp: %d apps suspended, want 0", got)
	}
}

// An invalid message fails without a platform.
func TestMetricsInvalidMessage(t *testing.T) {
	env, _, reader := startedWithMetrics(t)
	// A token without a platform.
	m := testenv.TokensMessage("bad", note(), &deliveryv1.TokenTarget{Token: "t", AppId: packageName})
	out := send(t, env, context.Background(), []*deliveryv1.Message{m})
	if len(out.Results) != 1 || out.Results[0].GetStatus() != deliveryv1.SendStatus_SEND_STATUS_FAILED {
		t.Fatalf("got %v, want one failed result", out.Results)
	}
	unspecified := attribute.String("pushmesh.platform", "unspecified")
	if got := reader.Value("pushmesh.notifications.failed", unspecified, reason("invalid_message")); got != 1 {
		t.Errorf("got %d invalid messages counted, want 1 (points %v)", got, reader.Attributes("pushmesh.notifications.failed"))
	}
}
