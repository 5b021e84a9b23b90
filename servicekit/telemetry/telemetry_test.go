package telemetry

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

func TestSetupWithoutExporterStillPropagates(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	shutdown, err := Setup(context.Background(), "testsvc")
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())

	ctx, span := otel.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	if !span.SpanContext().IsValid() {
		t.Fatal("got an invalid span context, want real trace ids even without an exporter")
	}
	if span.IsRecording() {
		t.Error("got a recording span without an exporter, want spans that cost nothing to drop")
	}
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, carrier)
	if carrier.Get("traceparent") == "" {
		t.Errorf("got no traceparent, want the W3C propagator installed")
	}

	// A caller's decision to sample is passed on.
	sampled := propagation.MapCarrier{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	remote := otel.GetTextMapPropagator().Extract(context.Background(), sampled)
	_, child := otel.Tracer("test").Start(remote, "op")
	defer child.End()
	if !child.SpanContext().IsSampled() {
		t.Error("got an unsampled child of a sampled caller, want the caller's decision kept")
	}
}

func TestExportEnabled(t *testing.T) {
	tests := []struct {
		endpoint, exporter string
		want               bool
	}{
		{"", "", false},
		{"http://127.0.0.1:4317", "", true},
		{"http://127.0.0.1:4317", "none", false},
	}
	for _, tt := range tests {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tt.endpoint)
		t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
		t.Setenv("OTEL_TRACES_EXPORTER", tt.exporter)
		if got := exportEnabled(); got != tt.want {
			t.Errorf("endpoint=%q exporter=%q: got %v, want %v", tt.endpoint, tt.exporter, got, tt.want)
		}
	}
}

func TestMetricExportEnabled(t *testing.T) {
	tests := []struct {
		endpoint, metricsEndpoint, exporter, disabled string
		want                                          bool
	}{
		{"", "", "", "", false},
		{"http://127.0.0.1:4317", "", "", "", true},
		{"", "http://127.0.0.1:4317", "", "", true},
		{"http://127.0.0.1:4317", "", "none", "", false},
		{"http://127.0.0.1:4317", "", "", "true", false},
	}
	for _, tt := range tests {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tt.endpoint)
		t.Setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", tt.metricsEndpoint)
		t.Setenv("OTEL_METRICS_EXPORTER", tt.exporter)
		t.Setenv("OTEL_SDK_DISABLED", tt.disabled)
		if got := metricExportEnabled(); got != tt.want {
			t.Errorf("%+v: got %v, want %v", tt, got, tt.want)
		}
	}
}

func TestNoMetricExporterWithoutEndpoint(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "")
	mp, err := newMeterProvider(context.Background(), resource.Empty())
	if err != nil || mp != nil {
		t.Fatalf("got provider %v, err %v; want none without an endpoint", mp, err)
	}
	shutdown, err := Setup(context.Background(), "testsvc")
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	if _, ok := otel.GetMeterProvider().(*sdkmetric.MeterProvider); ok {
		t.Error("got an SDK meter provider installed without an endpoint, want the global no-op one kept")
	}
}

func TestMetricExporterWithEndpoint(t *testing.T) {
	// Nothing listens there: the exporter connects lazily, and the final
	// export at shutdown fails, which is not what is tested.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_METRICS_EXPORTER", "")
	mp, err := newMeterProvider(context.Background(), resource.Empty())
	if err != nil || mp == nil {
		t.Fatalf("got provider %v, err %v; want one exporting to the endpoint", mp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = mp.Shutdown(ctx)
}

// pushctl lives for one call: it exports traces with the services but no
// metrics, even where the environment asks the services for them.
func TestSetupTracingInstallsNoMeterProvider(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_METRICS_EXPORTER", "")
	shutdown, err := SetupTracing(context.Background(), "pushctl")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	defer shutdown(ctx)
	if _, ok := otel.GetMeterProvider().(*sdkmetric.MeterProvider); ok {
		t.Error("SetupTracing installed an SDK meter provider")
	}
}
