package metrics

import (
	"errors"
	"testing"

	"go.opentelemetry.io/otel/metric/noop"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

func TestOutcomeOf(t *testing.T) {
	tests := []struct {
		status int
		err    error
		want   GatewayOutcome
	}{
		{200, nil, GatewayOK},
		{400, nil, GatewayRejected},
		{410, nil, GatewayRejected},
		{429, nil, GatewayThrottled},
		{503, nil, GatewayUnavailable},
		{0, errors.New("connection refused"), GatewayNetworkError},
	}
	for _, tt := range tests {
		if got := OutcomeOf(tt.status, tt.err); got != tt.want {
			t.Errorf("OutcomeOf(%d, %v): got %s, want %s", tt.status, tt.err, gatewayOutcomeNames[got], gatewayOutcomeNames[tt.want])
		}
	}
}

func TestNamesAndNil(t *testing.T) {
	if got := ReasonName(commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC); got != "device_token_not_for_topic" {
		t.Errorf("got %q", got)
	}
	m, err := New(noop.NewMeterProvider())
	if err != nil {
		t.Fatal(err)
	}
	// An unknown platform or reason is recorded without a table entry of
	// its own; a nil *Metrics records nothing.
	m.Failed(t.Context(), commonv1.Platform(9), commonv1.FailureReason(99), 1)
	var none *Metrics
	none.Sent(t.Context(), commonv1.Platform_PLATFORM_APNS, 1)
	if _, err := none.Observe(Sources{}); err != nil {
		t.Error(err)
	}
}
