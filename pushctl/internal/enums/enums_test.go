package enums

import (
	"strings"
	"testing"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

func TestLabelAndWord(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{Label(commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN), "bad device token"},
		{Label(commonv1.Platform_PLATFORM_APNS), "apns"},
		{Label(deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED), "completed"},
		{Label(deliveryv1.FcmPriority_FCM_PRIORITY_HIGH), "high"},
		{Label(commonv1.Platform_PLATFORM_UNSPECIFIED), "-"},
		{Label(commonv1.Platform(42)), "42"},
		{Word(commonv1.FailureReason(0).Descriptor(), 4), "device-token-not-for-topic"},
		{strings.Join(Words(commonv1.ApnsEnvironment(0).Descriptor()), ","), "sandbox,production"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	ed := commonv1.FailureReason(0).Descriptor()
	for _, in := range []string{"bad-device-token", "BAD_DEVICE_TOKEN", "Bad Device Token", " bad_device_token ", "FAILURE_REASON_BAD_DEVICE_TOKEN"} {
		n, err := Parse(ed, in)
		if err != nil || n != 1 {
			t.Errorf("Parse(%q): got %d, %v; want 1", in, n, err)
		}
	}
	for _, in := range []string{"", "unspecified", "FAILURE_REASON_UNSPECIFIED", "bad", "1"} {
		if n, err := Parse(ed, in); err == nil {
			t.Errorf("Parse(%q): got %d, want an error", in, n)
		}
	}
	_, err := Parse(commonv1.Platform(0).Descriptor(), "web")
	if err == nil || err.Error() != `"web" is not one of apns, fcm` {
		t.Errorf("error: got %v", err)
	}
}
