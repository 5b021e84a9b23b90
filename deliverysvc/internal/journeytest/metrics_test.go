package journeytest

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/metrictest"
)

// The journeys gauge counts a scheduled journey until it is cancelled, and
// a journey's accepted pushes are counted by platform.
func TestJourneyMetrics(t *testing.T) {
	mp, reader := metrictest.New(t)
	m := start(t, Options{MeterProvider: mp})
	ctx := context.Background()
	scheduled := attribute.String("pushmesh.journey.state", "scheduled")
	running := attribute.String("pushmesh.journey.state", "running")

	later := publish(t, m, &deliveryv1.Journey{Name: "later", AppIds: []string{ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "x"},
		StartTime: timestamppb.New(time.Now().Add(time.Hour))})
	if got := reader.Value("pushmesh.journeys.active", scheduled); got != 1 {
		t.Errorf("scheduled journeys: got %d, want 1", got)
	}
	must(m.Journeys.CancelJourney(ctx, &deliveryv1.CancelJourneyRequest{JourneyId: later.GetJourneyId()})).get(t)
	reader.WaitValue("pushmesh.journeys.active", 0, scheduled)

	must(m.Customer(ctx, "C-1", map[string]any{"tier": "gold"})).get(t)
	for _, d := range []struct {
		token    string
		platform commonv1.Platform
		app      string
	}{
		{APNsToken(1), commonv1.Platform_PLATFORM_APNS, ShopApp},
		{APNsToken(2), commonv1.Platform_PLATFORM_APNS, WalletApp},
		{FCMToken(3), commonv1.Platform_PLATFORM_FCM, ShopApp},
	} {
		if err := m.Device(ctx, "C-1", d.token, d.platform, d.app); err != nil {
			t.Fatal(err)
		}
	}
	run(t, m, &deliveryv1.Journey{Name: "now", AppIds: []string{ShopApp, WalletApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`}, Template: &deliveryv1.MessageTemplate{Title: "x"}})
	for platform, want := range map[string]int64{"apns": 2, "fcm": 1} {
		if got := reader.Value("pushmesh.journey.notifications.sent", attribute.String("pushmesh.platform", platform)); got != want {
			t.Errorf("journey pushes sent on %s: got %d, want %d", platform, got, want)
		}
	}
	// The runner ends a moment after its final state is stored.
	reader.WaitValue("pushmesh.journeys.active", 0, running)
}
