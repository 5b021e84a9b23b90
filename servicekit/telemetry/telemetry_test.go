package telemetry

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
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
