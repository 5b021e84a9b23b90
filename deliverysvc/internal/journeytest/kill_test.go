package journeytest

import (
	"context"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/emulator/apns"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// kill -9 mid-journey, then a restart: every targeted token is reached
// (checked in the emulators' logs), re-sends stay within the journey
// window and carry the same collapse id, and each token is counted once.
func TestKill9MidJourney(t *testing.T) {
	if testing.Short() {
		t.Skip("runs deliverysvc twice as a child process")
	}
	const (
		profiles = 3000
		fcmEvery = 4
		window   = 300
	)
	m, child := startWithChild(t, Options{JourneyWindow: window, MaxInFlight: 500, APNsConnections: 2})
	ctx := context.Background()
	apnsTokens, fcmTokens, err := Import(ctx, m, profiles, fcmEvery, 0)
	if err != nil {
		t.Fatal(err)
	}
	m.APNs.Reset()
	m.FCM.Reset()
	// A slower gateway and a cap, so the kill lands mid-journey.
	if err := m.APNs.SetFaults(apns.Faults{Latency: 2 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	pub := publish(t, m, &deliveryv1.Journey{
		Name: "kill -9", AppIds: []string{ShopApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{Title: "Hi {{firstName}}", Body: "Resumes after a crash"},
		Delivery: &deliveryv1.DeliveryOptions{MaxMessagesPerSecond: 1500},
	})
	waitFor(t, "a third of the journey", func() bool { return m.APNs.Count().Accepted >= profiles/3 })
	child.Kill()
	atKill := m.APNs.Count().Accepted + int64(len(m.FCM.Received()))
	total := len(apnsTokens) + len(fcmTokens)
	if atKill >= int64(total) {
		t.Fatalf("the journey finished (%d pushes) before the kill", atKill)
	}

	if _, err := m.StartDeliveryProcess(); err != nil {
		t.Fatal(err)
	}
	updates := watch(t, m, pub.GetJourneyId())
	final := updates[len(updates)-1]
	if final.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("after the restart the journey ended %v (%s), want COMPLETED", final.GetState(), final.GetError())
	}

	resent := 0
	for _, tok := range apnsTokens {
		got := m.APNs.ReceivedFor(tok)
		if len(got) == 0 {
			t.Fatalf("APNs token %s… never received the notification", tok[:12])
		}
		resent += len(got) - 1
		for _, d := range got {
			if d.CollapseID != pub.GetMessageId() {
				t.Fatalf("APNs token %s…: collapse id %q, want the message id %q on every copy", tok[:12], d.CollapseID, pub.GetMessageId())
			}
		}
	}
	for _, tok := range fcmTokens {
		got := m.FCM.ReceivedFor(tok)
		if len(got) == 0 {
			t.Fatalf("FCM token %s never received the notification", tok[:24])
		}
		resent += len(got) - 1
		for _, d := range got {
			// Both: the key merges copies still queued, the tag replaces
			// one the device already shows.
			if key, tag := FCMCollapse(d); key != pub.GetMessageId() || tag != pub.GetMessageId() {
				t.Fatalf("FCM token %s: collapse key %q and tag %q, want %q on every copy", tok[:24], key, tag, pub.GetMessageId())
			}
		}
	}
	if resent > window {
		t.Errorf("re-sent %d notifications, want at most the journey window (%d)", resent, window)
	}
	p := final.GetProgress()
	if p.GetSent() != int64(total) || p.GetTokensTargeted() != int64(total) || p.GetQualified() != profiles {
		t.Errorf("progress: sent %d, targeted %d, qualified %d; want %d, %d, %d (each counted once)",
			p.GetSent(), p.GetTokensTargeted(), p.GetQualified(), total, total, profiles)
	}
	t.Logf("killed after %d of %d pushes; %d re-sent after the restart (window %d)", atKill, total, resent, window)
}

// startWithChild starts a mesh whose deliverysvc runs as a child process, to
// be killed, with the apps registered.
func startWithChild(t *testing.T, opts Options) (*Mesh, *Process) {
	t.Helper()
	m := Start(t, opts)
	child, err := m.StartDeliveryProcess()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterApps(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m, child
}
