package grpcapi_test

import (
	"io"
	"testing"

	"go.opentelemetry.io/otel/attribute"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
	"github.com/pushmesh/pushmesh/servicekit/metrictest"
)

type want struct {
	name  string
	attrs []attribute.KeyValue
	n     int64
}

func check(t *testing.T, reader *metrictest.Reader, wants ...want) {
	t.Helper()
	for _, w := range wants {
		if got := reader.Value(w.name, w.attrs...); got != w.n {
			t.Errorf("%s %v: got %d, want %d (points %v)", w.name, w.attrs, got, w.n, reader.Attributes(w.name))
		}
	}
}

var (
	onAPNs = attribute.String("pushmesh.platform", "apns")
	onFCM  = attribute.String("pushmesh.platform", "fcm")
)

func outcome(o string) attribute.KeyValue { return attribute.String("pushmesh.outcome", o) }
func reason(r string) attribute.KeyValue  { return attribute.String("pushmesh.inactive_reason", r) }

// Registrations are counted by outcome, and every way a token stops being
// active by its reason: rotation, UnregisterPushToken, gateway feedback.
func TestMetricsTokens(t *testing.T) {
	mp, reader := metrictest.New(t)
	e := newEnvMetered(t, store.Options{}, io.Discard, mp)
	ctx := ctxFor(t)
	register := func(req *profilev1.RegisterPushTokenRequest) {
		t.Helper()
		must[*profilev1.RegisterPushTokenResponse](t)(e.client.RegisterPushToken(ctx, req))
	}
	register(registerReq("A", "aa01", 1, ""))   // created
	register(registerReq("A", "aa01", 1, ""))   // unchanged
	register(registerReq("B", "aa01", 2, ""))   // moved
	register(registerReq("A", "bb01", 3, "d1")) // created
	register(registerReq("A", "bb02", 4, "d1")) // created; bb01 replaced
	register(&profilev1.RegisterPushTokenRequest{Profile: byCustomer("C"), Token: "fcm:1", Platform: fcm, AppId: "com.example", SourceTime: at(1)})
	check(t, reader,
		want{"pushmesh.tokens.registered", []attribute.KeyValue{onAPNs, outcome("created")}, 3},
		want{"pushmesh.tokens.registered", []attribute.KeyValue{onAPNs, outcome("unchanged")}, 1},
		want{"pushmesh.tokens.registered", []attribute.KeyValue{onAPNs, outcome("moved")}, 1},
		want{"pushmesh.tokens.registered", []attribute.KeyValue{onFCM, outcome("created")}, 1},
		want{"pushmesh.tokens.deactivated", []attribute.KeyValue{onAPNs, reason("replaced")}, 1},
	)

	unregister := &profilev1.UnregisterPushTokenRequest{Token: "bb02", Platform: apns, AppId: "com.example", Reason: profilev1.InactiveReason_INACTIVE_REASON_UNINSTALLED}
	must[*profilev1.UnregisterPushTokenResponse](t)(e.client.UnregisterPushToken(ctx, unregister))
	must[*profilev1.UnregisterPushTokenResponse](t)(e.client.UnregisterPushToken(ctx, unregister)) // already inactive: not counted again
	must[*profilev1.ReportTokenFeedbackResponse](t)(e.client.ReportTokenFeedback(ctx, &profilev1.ReportTokenFeedbackRequest{Feedback: []*profilev1.TokenFeedback{
		{Token: "aa01", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: at(10)},
		{Token: "fcm:1", Platform: fcm, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_BAD_DEVICE_TOKEN, GatewayTime: at(10)},
		{Token: "ffff", Platform: apns, AppId: "com.example", Reason: profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED, GatewayTime: at(10)}, // unknown
	}}))
	check(t, reader,
		want{"pushmesh.tokens.deactivated", []attribute.KeyValue{onAPNs, reason("uninstalled")}, 1},
		want{"pushmesh.tokens.deactivated", []attribute.KeyValue{onAPNs, reason("unregistered")}, 1},
		want{"pushmesh.tokens.deactivated", []attribute.KeyValue{onFCM, reason("bad_token")}, 1},
		want{"pushmesh.tokens.deactivated", nil, 4},
	)
}

// Import rows are counted by outcome, rejected ones included; the members
// an audience query streams are counted.
func TestMetricsImportAndAudience(t *testing.T) {
	mp, reader := metrictest.New(t)
	e := newEnvMetered(t, store.Options{}, io.Discard, mp)
	ctx := ctxFor(t)
	rows := []*profilev1.ImportRow{
		{CustomerId: "C1", Token: "aa01", Platform: apns, AppId: "com.example", SourceTime: at(1)},
		{CustomerId: "C2", Token: "fcm:2", Platform: fcm, AppId: "com.example", SourceTime: at(1)},
		{CustomerId: "C3", Token: "aa03", Platform: apns, AppId: "com.example"}, // no source time: rejected
	}
	importAll(t, ctx, e.client, rows, 2)
	importAll(t, ctx, e.client, rows, 2) // the same file again
	check(t, reader,
		want{"pushmesh.import.rows", []attribute.KeyValue{outcome("created")}, 2},
		want{"pushmesh.import.rows", []attribute.KeyValue{outcome("unchanged")}, 2},
		want{"pushmesh.import.rows", []attribute.KeyValue{outcome("rejected")}, 2},
	)

	members := 0
	for _, resp := range queryAll(t, ctx, e.client, &profilev1.QueryAudienceRequest{Platforms: []commonv1.Platform{apns, fcm}}) {
		members += len(resp.GetMembers())
	}
	if members != 2 {
		t.Fatalf("got %d members, want C1 and C2", members)
	}
	check(t, reader, want{"pushmesh.audience.members", nil, 2})
}
