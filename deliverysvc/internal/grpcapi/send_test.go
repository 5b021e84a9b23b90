package grpcapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

const (
	bundleID    = "com.example.app"
	packageName = "com.example.android"
)

// started is an environment with one APNs and one FCM app.
func started(t *testing.T) (*testenv.Env, *testenv.APNsApp, *testenv.FCMApp) {
	t.Helper()
	env := testenv.Start(t, testenv.Options{})
	a, err := env.RegisterAPNsApp(context.Background(), bundleID, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, err := env.RegisterFCMApp(context.Background(), packageName, "proj-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	return env, a, f
}

func send(t *testing.T, env *testenv.Env, ctx context.Context, batches ...[]*deliveryv1.Message) *testenv.SendOutcome {
	t.Helper()
	out, err := env.Send(ctx, batches...)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if out.Err != nil {
		t.Fatalf("Send stream: %v", out.Err)
	}
	return out
}

func note() *deliveryv1.Notification {
	return &deliveryv1.Notification{Title: "Hello", Body: "Your order shipped", Data: map[string]string{"order": "42"}}
}

func TestSendToBothGateways(t *testing.T) {
	env, _, _ := started(t)
	ctx := context.Background()
	m := testenv.TokensMessage("order-42", note(),
		testenv.APNsTarget(testenv.APNsToken(1), bundleID),
		testenv.FCMTarget(testenv.FCMToken(1), packageName))
	m.JourneyId, m.MessageId = "journey-7", "msg-42"
	out := send(t, env, ctx, []*deliveryv1.Message{m})

	if len(out.Results) != 2 || len(out.Completed) != 1 || out.Completed[0] != "order-42" {
		t.Fatalf("got %d results, completed %v; want 2 and [order-42]", len(out.Results), out.Completed)
	}
	for _, r := range out.Results {
		if r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetGatewayId() == "" || r.GetAttempts() != 1 || r.GetTime() == nil {
			t.Errorf("got %v, want sent with a gateway id after 1 attempt", r)
		}
	}

	// What Apple and Google received.
	got := env.APNs.ReceivedFor(testenv.APNsToken(1))
	if len(got) != 1 || got[0].CollapseID != "msg-42" || got[0].Topic != bundleID {
		t.Fatalf("APNs received %+v, want one push collapsing on msg-42", got)
	}
	var payload struct {
		APS   map[string]any    `json:"aps"`
		PM    map[string]string `json:"pm"`
		Order string            `json:"order"`
	}
	if err := json.Unmarshal(got[0].Payload, &payload); err != nil {
		t.Fatal(err)
	}
	tp := payload.PM["tp"]
	if payload.PM["j"] != "journey-7" || payload.PM["m"] != "msg-42" || len(tp) != 55 || !strings.HasPrefix(tp, "00-") || payload.Order != "42" {
		t.Errorf("APNs payload: got %s", got[0].Payload)
	}
	fr := env.FCM.ReceivedFor(testenv.FCMToken(1))
	if len(fr) != 1 {
		t.Fatalf("FCM received %d messages, want 1", len(fr))
	}
	var fm struct {
		Data    map[string]string `json:"data"`
		Android struct {
			CollapseKey string `json:"collapse_key"`
		} `json:"android"`
	}
	if err := json.Unmarshal(fr[0].Message, &fm); err != nil {
		t.Fatal(err)
	}
	if fm.Data["pm_journey_id"] != "journey-7" || fm.Data["pm_message_id"] != "msg-42" || fm.Data["traceparent"] != tp || fm.Android.CollapseKey != "msg-42" {
		t.Errorf("FCM message: got %s", fr[0].Message)
	}

	// trackingsvc gets one SENT event per token, with tracking ids.
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := env.Events.WaitFor(wait, 2); err != nil {
		t.Fatal(err)
	}
	for _, ev := range env.Events.All() {
		if ev.GetType() != trackingv1.EventType_EVENT_TYPE_SENT || ev.GetJourneyId() != "journey-7" || ev.GetMessageId() != "msg-42" || ev.GetTraceparent() != tp || ev.GetToken() == "" {
			t.Errorf("tracking event: got %v", ev)
		}
	}
}

func TestSendToProfiles(t *testing.T) {
	env, _, _ := started(t)
	env.Profiles.ListPushTokensFunc = func(_ context.Context, req *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
		switch req.GetProfile().GetProfileId() {
		case "ada":
			return &profilev1.ListPushTokensResponse{Tokens: []*profilev1.PushToken{
				{Token: testenv.APNsToken(10), Platform: commonv1.Platform_PLATFORM_APNS, AppId: bundleID, ProfileId: "ada", State: profilev1.TokenState_TOKEN_STATE_ACTIVE},
				{Token: testenv.FCMToken(10), Platform: commonv1.Platform_PLATFORM_FCM, AppId: packageName, ProfileId: "ada", State: profilev1.TokenState_TOKEN_STATE_ACTIVE},
				{Token: testenv.FCMToken(11), Platform: commonv1.Platform_PLATFORM_FCM, AppId: packageName, ProfileId: "ada", State: profilev1.TokenState_TOKEN_STATE_INACTIVE},
				{Token: testenv.FCMToken(12), Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.unregistered", ProfileId: "ada", State: profilev1.TokenState_TOKEN_STATE_ACTIVE},
			}}, nil
		case "bob":
			return &profilev1.ListPushTokensResponse{}, nil
		}
		return nil, status.Error(codes.NotFound, "profile not found")
	}
	profile := func(key, id string) *deliveryv1.Message {
		return &deliveryv1.Message{IdempotencyKey: key, Notification: note(), Target: &deliveryv1.Message_Profile{Profile: &deliveryv1.ProfileTarget{ProfileId: id}}}
	}
	out := send(t, env, context.Background(), []*deliveryv1.Message{profile("k-ada", "ada"), profile("k-bob", "bob"), profile("k-eve", "eve")})

	ada := out.ByKey("k-ada")
	status := map[string]string{}
	for _, r := range ada {
		status[r.GetToken()] = r.GetStatus().String() + " " + r.GetExclusionReason().String()
		if r.GetProfileId() != "ada" {
			t.Errorf("result for %s: profile %q, want ada", r.GetToken(), r.GetProfileId())
		}
	}
	want := map[string]string{
		testenv.APNsToken(10): "SEND_STATUS_SENT EXCLUSION_REASON_UNSPECIFIED",
		testenv.FCMToken(10):  "SEND_STATUS_SENT EXCLUSION_REASON_UNSPECIFIED",
		testenv.FCMToken(12):  "SEND_STATUS_EXCLUDED EXCLUSION_REASON_APP_NOT_REGISTERED",
	}
	if fmt.Sprint(status) != fmt.Sprint(want) {
		t.Errorf("ada: got %v, want %v (the inactive token skipped)", status, want)
	}
	for _, key := range []string{"k-bob", "k-eve"} {
		r := out.ByKey(key)
		if len(r) != 1 || r[0].GetStatus() != deliveryv1.SendStatus_SEND_STATUS_EXCLUDED || r[0].GetExclusionReason() != commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN || r[0].GetToken() != "" {
			t.Errorf("%s: got %v, want one message-level EXCLUDED NO_ACTIVE_TOKEN", key, r)
		}
	}
}

func TestDeadTokensAreReportedNotRetried(t *testing.T) {
	env, _, _ := started(t)
	gone := time.UnixMilli(1_760_000_000_000)
	env.APNs.MarkUnregistered(testenv.APNsToken(1), gone)
	if err := env.APNs.SetTokenOutcome(testenv.APNsToken(2), apns.ReasonBadDeviceToken); err != nil {
		t.Fatal(err)
	}
	env.FCM.MarkUnregistered(testenv.FCMToken(1))
	out := send(t, env, context.Background(), []*deliveryv1.Message{testenv.TokensMessage("k", note(),
		testenv.APNsTarget(testenv.APNsToken(1), bundleID),
		testenv.APNsTarget(testenv.APNsToken(2), bundleID),
		testenv.FCMTarget(testenv.FCMToken(1), packageName))})
	want := map[string]commonv1.FailureReason{
		testenv.APNsToken(1): commonv1.FailureReason_FAILURE_REASON_UNREGISTERED,
		testenv.APNsToken(2): commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN,
		testenv.FCMToken(1):  commonv1.FailureReason_FAILURE_REASON_UNREGISTERED,
	}
	for _, r := range out.Results {
		if r.GetReason() != want[r.GetToken()] || r.GetAttempts() != 1 {
			t.Errorf("%s: got %v after %d attempts, want %v after 1", r.GetToken()[:12], r.GetReason(), r.GetAttempts(), want[r.GetToken()])
		}
	}
	if n := len(env.APNs.ReceivedFor(testenv.APNsToken(1))); n != 1 {
		t.Errorf("APNs got %d requests for the unregistered token, want 1", n)
	}
	wait, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.Feedback.WaitFor(wait, 3); err != nil {
		t.Fatal(err)
	}
	for _, fb := range env.Feedback.All() {
		if fb.GetToken() == testenv.APNsToken(1) {
			if fb.GetReason() != profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED || fb.GetGatewayTime().AsTime().Unix() != gone.Unix() {
				t.Errorf("feedback: got %v, want UNREGISTERED at the 410 timestamp %v", fb, gone)
			}
		}
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	env, _, _ := started(t)
	if err := env.APNs.SetFaults(apns.Faults{TooManyRequestsRate: 1, RetryAfter: time.Second}); err != nil {
		t.Fatal(err)
	}
	// Lift the fault once the first attempt has been refused.
	go func() {
		for env.APNs.Count().Rejected[apns.ReasonTooManyRequests] == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		env.APNs.SetFaults(apns.Faults{})
	}()
	out := send(t, env, context.Background(), []*deliveryv1.Message{testenv.TokensMessage("k", note(), testenv.APNsTarget(testenv.APNsToken(1), bundleID))})
	r := out.Results[0]
	if r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetAttempts() < 2 {
		t.Fatalf("got %v after %d attempts, want sent after a retry", r.GetStatus(), r.GetAttempts())
	}
	got := env.APNs.ReceivedFor(testenv.APNsToken(1))
	if gap := got[1].Time.Sub(got[0].Time); gap < time.Second {
		t.Errorf("the retry came %v after the 429, want at least its Retry-After of 1s", gap)
	}
}

func TestRetriesEndWithTheTTL(t *testing.T) {
	env, _, _ := started(t)
	// Both gateways answer 503 with Retry-After: 1s.
	env.APNs.SetAvailable(false)
	env.FCM.SetAvailable(false)
	m := testenv.TokensMessage("k", note(), testenv.APNsTarget(testenv.APNsToken(1), bundleID), testenv.FCMTarget(testenv.FCMToken(1), packageName))
	m.Ttl = durationpb.New(500 * time.Millisecond)
	out := send(t, env, context.Background(), []*deliveryv1.Message{m})
	for _, r := range out.Results {
		switch r.GetPlatform() {
		case commonv1.Platform_PLATFORM_APNS:
			// The next retry (after Retry-After) would pass the TTL.
			if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE || !strings.Contains(r.GetDetail(), "TTL") || r.GetAttempts() != 1 {
				t.Errorf("APNs: got %v %q after %d attempts, want GATEWAY_UNAVAILABLE giving up at the TTL after 1", r.GetReason(), r.GetDetail(), r.GetAttempts())
			}
		case commonv1.Platform_PLATFORM_FCM:
			// firebase retries 503s itself; the TTL cuts that short.
			if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_TTL_EXPIRED {
				t.Errorf("FCM: got %v %q, want TTL_EXPIRED", r.GetReason(), r.GetDetail())
			}
		}
	}
}

func TestCredentialErrorsSuspendUntilFixed(t *testing.T) {
	env, a, _ := started(t)
	ctx := context.Background()
	oneMsg := func(key string, i int) []*deliveryv1.Message {
		return []*deliveryv1.Message{testenv.TokensMessage(key, note(), testenv.APNsTarget(testenv.APNsToken(i), bundleID))}
	}
	// Apple no longer accepts the key (revoked in the developer account).
	_, stranger, err := env.APNs.NewProviderKey("TEAM999999", "KEY9999999")
	if err != nil {
		t.Fatal(err)
	}
	env.APNs.RegisterKey(a.TeamID, a.KeyID, &stranger.PublicKey)

	r := send(t, env, ctx, oneMsg("k1", 1)).Results[0]
	if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS || !strings.Contains(r.GetDetail(), "InvalidProviderToken") {
		t.Fatalf("got %v %q, want INVALID_CREDENTIALS naming InvalidProviderToken", r.GetReason(), r.GetDetail())
	}
	app, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey(bundleID)})
	if err != nil || app.GetApp().GetState() != deliveryv1.AppState_APP_STATE_SUSPENDED || app.GetApp().GetSuspendedReason() != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Fatalf("GetApp: got %v %v, want SUSPENDED for INVALID_CREDENTIALS", app.GetApp(), err)
	}
	before := env.APNs.Count().Received
	r = send(t, env, ctx, oneMsg("k2", 2)).Results[0]
	if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED || r.GetAttempts() != 0 {
		t.Errorf("while suspended: got %v after %d attempts, want APP_SUSPENDED without a send", r.GetReason(), r.GetAttempts())
	}
	if after := env.APNs.Count().Received; after != before {
		t.Errorf("APNs got %d requests while the app was suspended, want none", after-before)
	}

	// Validating without a fix answers the refusal and keeps it suspended.
	_, err = env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: apnsKey(bundleID)})
	if code, v := refusal(err); code != codes.FailedPrecondition || v.GetType() != "FAILURE_REASON_INVALID_CREDENTIALS" || !strings.Contains(v.GetDescription(), "InvalidProviderToken") {
		t.Errorf("ValidateApp before the fix: got %v, want FailedPrecondition naming InvalidProviderToken", err)
	}
	if app, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey(bundleID)}); err != nil || app.GetApp().GetState() != deliveryv1.AppState_APP_STATE_SUSPENDED {
		t.Errorf("GetApp after ValidateApp before the fix: got %v %v, want SUSPENDED", app.GetApp(), err)
	}
	// The key is restored at Apple: ValidateApp resumes the app.
	env.APNs.RegisterKey(a.TeamID, a.KeyID, &a.Key.PublicKey)
	v, err := env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: apnsKey(bundleID)})
	if err != nil || !v.GetValid() || v.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE {
		t.Fatalf("ValidateApp after the fix: got %v %v, want valid and ACTIVE", v, err)
	}
	if r := send(t, env, ctx, oneMsg("k3", 3)).Results[0]; r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
		t.Errorf("after ValidateApp: got %v %v, want sent", r.GetStatus(), r.GetReason())
	}

	// Suspended again, then fixed by new credentials.
	env.APNs.RegisterKey(a.TeamID, a.KeyID, &stranger.PublicKey)
	send(t, env, ctx, oneMsg("k4", 4))
	p8, _, err := env.APNs.NewProviderKey(a.TeamID, "KEY5555555")
	if err != nil {
		t.Fatal(err)
	}
	up, err := env.Apps.UpdateAppCredentials(ctx, &deliveryv1.UpdateAppCredentialsRequest{Key: apnsKey(bundleID), Credentials: testenv.APNsCredentials(p8, "KEY5555555", a.TeamID)})
	if err != nil || up.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE || up.GetApp().GetCredentials().GetKeyId() != "KEY5555555" {
		t.Fatalf("UpdateAppCredentials: got %v %v, want ACTIVE with the new key", up, err)
	}
	if r := send(t, env, ctx, oneMsg("k5", 5)).Results[0]; r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
		t.Errorf("after the update: got %v %v, want sent", r.GetStatus(), r.GetReason())
	}
	if got := env.APNs.ReceivedFor(testenv.APNsToken(5)); len(got) != 1 || got[0].KeyID != "KEY5555555" {
		t.Errorf("the push after the update: got %+v, want it signed with the new key", got)
	}
}

func TestFCMCredentialErrorsSuspend(t *testing.T) {
	env, _, _ := started(t)
	ctx := context.Background()
	if err := env.FCM.SetTokenOutcome(testenv.FCMToken(1), fcm.ErrThirdPartyAuthError); err != nil {
		t.Fatal(err)
	}
	r := send(t, env, ctx, []*deliveryv1.Message{testenv.TokensMessage("k1", note(), testenv.FCMTarget(testenv.FCMToken(1), packageName))}).Results[0]
	if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
		t.Fatalf("got %v, want INVALID_CREDENTIALS", r.GetReason())
	}
	r = send(t, env, ctx, []*deliveryv1.Message{testenv.TokensMessage("k2", note(), testenv.FCMTarget(testenv.FCMToken(2), packageName))}).Results[0]
	if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED {
		t.Errorf("next message: got %v, want APP_SUSPENDED", r.GetReason())
	}
}

func TestIdempotentResendSurvivesARestart(t *testing.T) {
	env, _, _ := started(t)
	ctx := context.Background()
	batch := []*deliveryv1.Message{testenv.TokensMessage("once", note(),
		testenv.APNsTarget(testenv.APNsToken(1), bundleID), testenv.FCMTarget(testenv.FCMToken(1), packageName))}
	first := send(t, env, ctx, batch)
	if err := env.StopService(); err != nil {
		t.Fatal(err)
	}
	if err := env.StartService(); err != nil {
		t.Fatal(err)
	}
	apnsBefore, fcmBefore := env.APNs.Count().Received, env.FCM.Count().Received
	again := send(t, env, ctx, batch, batch)
	if len(again.Results) != 4 {
		t.Fatalf("got %d results for two resends, want 4", len(again.Results))
	}
	ids := map[string]string{}
	for _, r := range first.Results {
		ids[r.GetToken()] = r.GetGatewayId()
	}
	for _, r := range again.Results {
		if !r.GetDuplicate() || r.GetGatewayId() != ids[r.GetToken()] || r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
			t.Errorf("resend: got %v, want the first outcome marked duplicate", r)
		}
	}
	if env.APNs.Count().Received != apnsBefore || env.FCM.Count().Received != fcmBefore {
		t.Errorf("the gateways got %d APNs and %d FCM requests for resends, want none",
			env.APNs.Count().Received-apnsBefore, env.FCM.Count().Received-fcmBefore)
	}
	// Another tenant has its own keys.
	other := send(t, env, inTenant(ctx, "acme"), []*deliveryv1.Message{testenv.TokensMessage("once", note(), testenv.APNsTarget(testenv.APNsToken(1), bundleID))})
	if r := other.Results[0]; r.GetDuplicate() || r.GetReason() != commonv1.FailureReason_FAILURE_REASON_APP_NOT_FOUND {
		t.Errorf("same key in another tenant: got %v, want a fresh message (its app is not registered there)", r)
	}
}

func TestPayloadLimitsOverGRPC(t *testing.T) {
	env, _, _ := started(t)
	big := &deliveryv1.Notification{Title: "Big", Body: strings.Repeat("x", 4200)}
	out := send(t, env, context.Background(), []*deliveryv1.Message{testenv.TokensMessage("k", big,
		testenv.APNsTarget(testenv.APNsToken(1), bundleID), testenv.FCMTarget(testenv.FCMToken(1), packageName))})
	for _, r := range out.Results {
		if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE || !strings.Contains(r.GetDetail(), "4096") || r.GetAttempts() != 0 {
			t.Errorf("%v: got %v %q, want PAYLOAD_TOO_LARGE naming 4096, not sent", r.GetPlatform(), r.GetReason(), r.GetDetail())
		}
	}
	if env.APNs.Count().Received != 1 || env.FCM.Count().Received != 1 { // the registration checks only
		t.Errorf("gateways received %d + %d requests, want only the two registration checks", env.APNs.Count().Received, env.FCM.Count().Received)
	}
	voip := testenv.TokensMessage("v", big, testenv.APNsTarget(testenv.APNsToken(2), bundleID))
	voip.Apns = &deliveryv1.ApnsOptions{PushType: deliveryv1.ApnsPushType_APNS_PUSH_TYPE_VOIP}
	if r := send(t, env, context.Background(), []*deliveryv1.Message{voip}).Results[0]; r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
		t.Errorf("VoIP push of 4.2 KB: got %v %q, want sent (the VoIP limit is 5120)", r.GetReason(), r.GetDetail())
	}
}

func TestBadMessagesAndBatches(t *testing.T) {
	env, _, _ := started(t)
	ctx := context.Background()
	bad := testenv.TokensMessage("bad", note(), &deliveryv1.TokenTarget{Token: "t", AppId: packageName})
	good := testenv.TokensMessage("good", note(), testenv.FCMTarget(testenv.FCMToken(1), packageName))
	out := send(t, env, ctx, []*deliveryv1.Message{bad, good})
	if r := out.ByKey("bad"); len(r) != 1 || r[0].GetReason() != commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE ||
		!strings.Contains(r[0].GetDetail(), "messages[0].tokens.tokens[0].platform") {
		t.Errorf("bad message: got %v, want INVALID_MESSAGE naming messages[0].tokens.tokens[0].platform", r)
	}
	if r := out.ByKey("good"); len(r) != 1 || r[0].GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
		t.Errorf("good message next to it: got %v, want sent", r)
	}

	// A batch with a message lacking its key ends the stream, after the
	// batches before it completed.
	first := []*deliveryv1.Message{testenv.TokensMessage("first", note(), testenv.FCMTarget(testenv.FCMToken(2), packageName))}
	broken := []*deliveryv1.Message{good, {Target: good.Target}}
	res, err := env.Send(ctx, first, broken)
	if err != nil {
		t.Fatal(err)
	}
	code, fields := badFields(res.Err)
	if code != codes.InvalidArgument || len(fields) != 1 || fields[0] != "messages[1].idempotency_key" {
		t.Errorf("got %v %v, want InvalidArgument on messages[1].idempotency_key", code, fields)
	}
	if r := res.ByKey("first"); len(r) != 1 || r[0].GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
		t.Errorf("the batch before: got %v, want sent and reported", r)
	}
}

func TestOutcomesWaitForTracking(t *testing.T) {
	env, _, _ := started(t)
	env.Events.SetDown(true)
	var batch []*deliveryv1.Message
	for i := 0; i < 40; i++ {
		target := testenv.APNsTarget(testenv.APNsToken(i), bundleID)
		if i%2 == 1 {
			target = testenv.FCMTarget(testenv.FCMToken(i), packageName)
		}
		batch = append(batch, testenv.TokensMessage(fmt.Sprintf("m%d", i), note(), target))
	}
	out := send(t, env, context.Background(), batch)
	if len(out.Results) != 40 {
		t.Fatalf("got %d results, want 40", len(out.Results))
	}
	time.Sleep(300 * time.Millisecond) // several failed forwarding rounds
	if n := len(env.Events.All()); n != 0 {
		t.Fatalf("tracking down, yet %d events arrived", n)
	}
	// A restart while trackingsvc is down loses nothing either.
	if err := env.StopService(); err != nil {
		t.Fatal(err)
	}
	if err := env.StartService(); err != nil {
		t.Fatal(err)
	}
	env.Events.SetDown(false)
	wait, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := env.Events.WaitFor(wait, 40); err != nil {
		t.Fatalf("after tracking came back: got %d events, want 40: %v", len(env.Events.All()), err)
	}
	time.Sleep(200 * time.Millisecond) // any duplicate would arrive by now
	if n, rep := len(env.Events.All()), env.Events.Repeats(); n != 40 || rep != 0 {
		t.Errorf("got %d distinct events and %d repeats, want 40 and 0", n, rep)
	}
}

func TestRotationWithoutDowntime(t *testing.T) {
	env, a, _ := started(t)
	ctx := context.Background()
	p8, _, err := env.APNs.NewProviderKey(a.TeamID, "KEY2222222")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	results := make(chan *testenv.SendOutcome, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		var batches [][]*deliveryv1.Message
		for b := 0; b < 20; b++ {
			var batch []*deliveryv1.Message
			for i := 0; i < 25; i++ {
				n := b*25 + i
				batch = append(batch, testenv.TokensMessage(fmt.Sprint("r", n), note(), testenv.APNsTarget(testenv.APNsToken(n), bundleID)))
			}
			batches = append(batches, batch)
		}
		out, err := env.Send(ctx, batches...)
		if err != nil {
			t.Error(err)
		}
		results <- out
	}()
	for env.APNs.Count().Accepted < 100 {
		time.Sleep(time.Millisecond)
	}
	if _, err := env.Apps.UpdateAppCredentials(ctx, &deliveryv1.UpdateAppCredentialsRequest{Key: apnsKey(bundleID), Credentials: testenv.APNsCredentials(p8, "KEY2222222", a.TeamID)}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	out := <-results
	if out.Err != nil || len(out.Results) != 500 {
		t.Fatalf("got %d results, %v; want 500", len(out.Results), out.Err)
	}
	for _, r := range out.Results {
		if r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT {
			t.Fatalf("during the rotation: got %v %q, want every push sent", r.GetReason(), r.GetDetail())
		}
	}
	keys := map[string]int{}
	for _, d := range env.APNs.Received() {
		if d.Status == 200 {
			keys[d.KeyID]++
		}
	}
	if keys[a.KeyID] == 0 || keys["KEY2222222"] == 0 {
		t.Errorf("pushes by key: %v, want some signed with each key", keys)
	}
}

func TestCredentialsNeverInTheDataFile(t *testing.T) {
	env, a, f := started(t)
	if err := env.StopService(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(env.DataDir, "deliverysvc.db"))
	if err != nil {
		t.Fatal(err)
	}
	var sa struct {
		PrivateKey  string `json:"private_key"`
		ClientEmail string `json:"client_email"`
	}
	if err := json.Unmarshal(f.SAJSON, &sa); err != nil {
		t.Fatal(err)
	}
	needles := map[string]string{"client email": sa.ClientEmail, "FCM key id in JSON": `"private_key_id"`}
	for name, p := range map[string]string{"APNs .p8": string(a.P8), "FCM private key": sa.PrivateKey} {
		lines := strings.Split(strings.TrimSpace(p), "\n")
		for i, line := range lines[1 : len(lines)-1] {
			if len(line) >= 24 {
				needles[fmt.Sprintf("%s line %d", name, i)] = line[:24]
			}
		}
	}
	for name, needle := range needles {
		if bytes.Contains(raw, []byte(needle)) {
			t.Errorf("deliverysvc.db holds the %s in clear", name)
		}
	}
	if !bytes.Contains(raw, []byte(bundleID)) {
		t.Fatal("deliverysvc.db does not hold the app ids either: wrong file?")
	}
}

func TestBackpressureBoundsTheGateway(t *testing.T) {
	const maxInFlight, latency = 4, 30 * time.Millisecond
	env := testenv.Start(t, testenv.Options{MaxInFlight: maxInFlight})
	if _, err := env.RegisterAPNsApp(context.Background(), bundleID, 0); err != nil {
		t.Fatal(err)
	}
	env.APNs.Reset()
	if err := env.APNs.SetFaults(apns.Faults{Latency: latency}); err != nil {
		t.Fatal(err)
	}
	var batches [][]*deliveryv1.Message
	for b := 0; b < 4; b++ {
		var batch []*deliveryv1.Message
		for i := 0; i < 10; i++ {
			n := b*10 + i
			batch = append(batch, testenv.TokensMessage(fmt.Sprint("bp", n), note(), testenv.APNsTarget(testenv.APNsToken(n), bundleID)))
		}
		batches = append(batches, batch)
	}
	out := send(t, env, context.Background(), batches...)
	if len(out.Results) != 40 {
		t.Fatalf("got %d results, want 40", len(out.Results))
	}
	// APNs answers no sooner than the latency after a request arrives, so
	// requests arriving within one latency of each other were in flight
	// together: their count is a lower bound of the concurrency.
	got := env.APNs.Received()
	most := 0
	for i := range got {
		n := 0
		for j := i; j < len(got) && got[j].Time.Sub(got[i].Time) < latency; j++ {
			n++
		}
		most = max(most, n)
	}
	if most > maxInFlight {
		t.Errorf("%d pushes were in flight at once, want at most --max-in-flight %d", most, maxInFlight)
	}
	if len(got) != 40 {
		t.Errorf("APNs received %d pushes, want 40", len(got))
	}
}
