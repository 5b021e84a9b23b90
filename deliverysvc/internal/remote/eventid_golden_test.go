package remote

import (
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// EventID must never change for the same outcome: trackingsvc deduplicates
// by it, so a changed id would count an outcome re-recorded after an
// upgrade (a resend after a crash) twice.
func TestEventIDIsStable(t *testing.T) {
	r := delivery.Result{
		IdempotencyKey: "journey-1/profile-2/token-3",
		Target: delivery.Target{
			Platform: commonv1.Platform_PLATFORM_APNS, AppID: "com.example.shop",
			Token: "a1b2c3", ProfileID: "p-42",
		},
		Status: delivery.StatusSent,
		Time:   time.Unix(1_700_000_000, 0),
	}
	const want = "pm-30b9c7d87b38be240ec5b76f9b43585b"
	if got := EventID("tenant-a", &r); got != want {
		t.Fatalf("EventID = %q, want %q", got, want)
	}
}
