package grpcapi_test

import (
	"context"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	"github.com/pushmesh/pushmesh/emulator/apns"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// The rotation tests hold a push at the APNs emulator (its latency is drawn
// when a request arrives, so later SetFaults calls do not shorten it),
// revoke the key it is signed with, and rotate the app's credentials while
// it waits. This is how a rotation happens in practice: the old key is
// revoked in the developer account, then the new one is installed.

// heldPushWait is how long the tests give a push to reach the emulator
// before they revoke its key.
const heldPushWait = 300 * time.Millisecond

// sendAsync sends one message to an APNs token and delivers the outcome on
// the returned channel.
func sendAsync(t *testing.T, env *testenv.Env, key string, token int) <-chan *testenv.SendOutcome {
	t.Helper()
	done := make(chan *testenv.SendOutcome, 1)
	go func() {
		out, err := env.Send(context.Background(), []*deliveryv1.Message{testenv.TokensMessage(key, note(), testenv.APNsTarget(testenv.APNsToken(token), bundleID))})
		if err == nil && out.Err != nil {
			err = out.Err
		}
		if err != nil {
			t.Errorf("Send %s: %v", key, err)
		}
		done <- out
	}()
	return done
}

// revokeAPNsKey makes Apple refuse the app's current key from now on.
func revokeAPNsKey(t *testing.T, env *testenv.Env, a *testenv.APNsApp) {
	t.Helper()
	_, stranger, err := env.APNs.NewProviderKey("TEAM999999", "KEY9999999")
	if err != nil {
		t.Fatal(err)
	}
	env.APNs.RegisterKey(a.TeamID, a.KeyID, &stranger.PublicKey)
}

// checkDeliveredAfterRotation checks that the in-flight message was refused
// for the revoked key, then retried with the new key and delivered; that
// the app is active with the new key; and that the next message is sent.
func checkDeliveredAfterRotation(t *testing.T, env *testenv.Env, out *testenv.SendOutcome, revoked time.Time, newKeyID string) {
	t.Helper()
	ctx := context.Background()
	if out == nil || len(out.Results) != 1 {
		t.Fatalf("in-flight message: got %v, want one result", out)
	}
	got := env.APNs.ReceivedFor(testenv.APNsToken(1))
	if len(got) == 0 || !got[0].Time.Before(revoked) {
		t.Fatalf("the in-flight push reached APNs at %v, after the key was revoked at %v: the test did not hold it (a slow machine?)", got, revoked)
	}
	if got[0].Reason != apns.ReasonInvalidProviderToken {
		t.Errorf("the in-flight push's first answer: got %d %s, want 403 InvalidProviderToken (signed with the revoked key)", got[0].Status, got[0].Reason)
	}
	last := got[len(got)-1]
	if r := out.Results[0]; r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetAttempts() < 2 || r.GetGatewayId() != last.ApnsID {
		t.Errorf("in-flight message: got %v %v %q after %d attempts, want sent by a retry", r.GetStatus(), r.GetReason(), r.GetDetail(), r.GetAttempts())
	}
	if last.Status != 200 || last.KeyID != newKeyID {
		t.Errorf("the in-flight push's last attempt: got %d %s signed with %q, want 200 signed with %s", last.Status, last.Reason, last.KeyID, newKeyID)
	}

	app, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: apnsKey(bundleID)})
	if err != nil || app.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE || app.GetApp().GetCredentials().GetKeyId() != newKeyID {
		t.Fatalf("GetApp after the rotation: got %v %v, want ACTIVE with %s", app.GetApp(), err, newKeyID)
	}
	next := <-sendAsync(t, env, "next", 2)
	if r := next.Results[0]; r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetAttempts() != 1 {
		t.Errorf("next message: got %v %v %q after %d attempts, want sent at once", r.GetStatus(), r.GetReason(), r.GetDetail(), r.GetAttempts())
	}
	if got := env.APNs.ReceivedFor(testenv.APNsToken(2)); len(got) != 1 || got[0].KeyID != newKeyID {
		t.Errorf("next message: APNs got %+v, want one push signed with %s", got, newKeyID)
	}
}

// The old key is revoked and the new one installed while a push signed with
// the old key waits at Apple; its 403 comes back after the swap.
func TestRotationAfterAnInFlightPushIsRefused(t *testing.T) {
	env, a, _ := started(t)
	ctx := context.Background()
	newP8, _, err := env.APNs.NewProviderKey(a.TeamID, "KEY3333333")
	if err != nil {
		t.Fatal(err)
	}

	if err := env.APNs.SetFaults(apns.Faults{Latency: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	done := sendAsync(t, env, "in-flight", 1)
	time.Sleep(heldPushWait)
	// Only the held push waits: the live check and the retry answer at once.
	if err := env.APNs.SetFaults(apns.Faults{}); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	revokeAPNsKey(t, env, a)
	up, err := env.Apps.UpdateAppCredentials(ctx, &deliveryv1.UpdateAppCredentialsRequest{Key: apnsKey(bundleID), Credentials: testenv.APNsCredentials(newP8, "KEY3333333", a.TeamID)})
	if err != nil || up.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE {
		t.Fatalf("UpdateAppCredentials: got %v %v, want ACTIVE", up.GetApp(), err)
	}
	if n := len(env.APNs.ReceivedFor(testenv.APNsToken(1))); n != 0 {
		t.Fatalf("the in-flight push was answered before the rotation ended (%d answers): the test did not hold it", n)
	}
	checkDeliveredAfterRotation(t, env, <-done, revoked, "KEY3333333")
}

// The in-flight push's 403 comes back while the new credentials' live check
// is still waiting at Apple.
func TestRotationWhileItsLiveCheckWaits(t *testing.T) {
	env, a, _ := started(t)
	ctx := context.Background()
	newP8, _, err := env.APNs.NewProviderKey(a.TeamID, "KEY4444444")
	if err != nil {
		t.Fatal(err)
	}

	if err := env.APNs.SetFaults(apns.Faults{Latency: 700 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	done := sendAsync(t, env, "in-flight", 1)
	time.Sleep(heldPushWait)
	// The live check waits longer than the held push.
	if err := env.APNs.SetFaults(apns.Faults{Latency: 1200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	revokeAPNsKey(t, env, a)
	up, err := env.Apps.UpdateAppCredentials(ctx, &deliveryv1.UpdateAppCredentialsRequest{Key: apnsKey(bundleID), Credentials: testenv.APNsCredentials(newP8, "KEY4444444", a.TeamID)})
	if err != nil || up.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE {
		t.Fatalf("UpdateAppCredentials: got %v %v, want ACTIVE", up.GetApp(), err)
	}
	got := env.APNs.ReceivedFor(testenv.APNsToken(1))
	if len(got) == 0 || got[0].Reason != apns.ReasonInvalidProviderToken {
		t.Fatalf("the in-flight push was not refused during the live check (answers %+v): the test's timing did not hold", got)
	}
	if err := env.APNs.SetFaults(apns.Faults{}); err != nil {
		t.Fatal(err)
	}
	checkDeliveredAfterRotation(t, env, <-done, revoked, "KEY4444444")
}

// A key revoked with no rotation still suspends the app: only failures of
// replaced credentials are ignored.
func TestRevokedKeyWithoutRotationStillSuspends(t *testing.T) {
	env, a, _ := started(t)
	revokeAPNsKey(t, env, a)
	out := <-sendAsync(t, env, "k1", 1)
	if r := out.Results[0]; r.GetReason() != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS || r.GetAttempts() != 1 {
		t.Errorf("got %v after %d attempts, want INVALID_CREDENTIALS after 1", r.GetReason(), r.GetAttempts())
	}
	app, err := env.Apps.GetApp(context.Background(), &deliveryv1.GetAppRequest{Key: apnsKey(bundleID)})
	if err != nil || app.GetApp().GetState() != deliveryv1.AppState_APP_STATE_SUSPENDED {
		t.Errorf("GetApp: got %v %v, want SUSPENDED", app.GetApp(), err)
	}
}
