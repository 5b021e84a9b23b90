package instruments

import (
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

func TestSetKeepsEveryError(t *testing.T) {
	in := New(sdkmetric.NewMeterProvider(), "test")
	in.Counter("pushmesh.ok", "{x}", "fine")
	in.Gauge("1 not a name", "{x}", "refused by the SDK")
	in.Histogram("pushmesh.ok.duration", "s", "fine", 0.1, 1)
	if in.Err == nil {
		t.Fatal("an invalid instrument name gave no error")
	}
	good := New(sdkmetric.NewMeterProvider(), "test")
	good.Counter("pushmesh.a", "{x}", "a")
	good.Gauge("pushmesh.b", "{x}", "b")
	good.Histogram("pushmesh.c", "s", "c", 0.1, 1)
	if good.Err != nil {
		t.Fatalf("valid instruments: %v", good.Err)
	}
}
