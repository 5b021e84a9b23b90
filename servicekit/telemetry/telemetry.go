// Package telemetry sets up OpenTelemetry tracing and metrics from the
// standard OTEL_* environment variables.
//
// Traces: with OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, spans are exported over OTLP/gRPC;
// otherwise spans are not recorded (a recorded span nobody exports only
// costs CPU: deliverysvc makes one per push) but still get real ids, so
// trace ids propagate into push payloads and across services, and a
// caller's sampling decision is passed on.
//
// Metrics: with OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_METRICS_ENDPOINT) set, a global MeterProvider exports
// over OTLP/gRPC every OTEL_METRIC_EXPORT_INTERVAL (the SDK's default: 60 s),
// Go runtime metrics included; otherwise the global provider stays the
// no-op one, so instruments cost a function call and nothing is kept.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.opentelemetry.io/contrib/instrumentation/runtime"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Setup installs a global tracer provider, the W3C trace-context and
// baggage propagators and, when the environment asks for metric export, a
// global meter provider for service. The returned shutdown flushes pending
// spans and metrics; main must call it before exiting so they are not lost.
func Setup(ctx context.Context, service string) (shutdown func(context.Context) error, err error) {
	return setup(ctx, service, true)
}

// SetupTracing is Setup without metrics, for a short-lived command
// (pushctl): its traces join the services' (a journey's trace can start at
// the command that published it), while Go runtime and RPC metrics of a
// process that lives for one call would only add series nobody watches.
func SetupTracing(ctx context.Context, service string) (shutdown func(context.Context) error, err error) {
	return setup(ctx, service, false)
}

func setup(ctx context.Context, service string, withMetrics bool) (shutdown func(context.Context) error, err error) {
	// Later detectors win: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
	// override the service's own name.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if exportEnabled() {
		exp, err := otlptracegrpc.New(ctx) // endpoint, headers, TLS from OTEL_EXPORTER_OTLP_*
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	} else if os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		opts = append(opts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	}
	var mp *sdkmetric.MeterProvider
	if withMetrics {
		if mp, err = newMeterProvider(ctx, res); err != nil {
			return nil, err
		}
	}
	tp := sdktrace.NewTracerProvider(opts...) // sampler from OTEL_TRACES_SAMPLER
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	if mp != nil {
		// Instruments made from the global provider before this point
		// (package-level ones) are delegated to mp from now on.
		otel.SetMeterProvider(mp)
	}
	return func(ctx context.Context) error {
		err := errors.Join(tp.ForceFlush(ctx), tp.Shutdown(ctx))
		if mp != nil {
			// Shutdown exports what the periodic reader has not yet sent.
			err = errors.Join(err, mp.Shutdown(ctx))
		}
		return err
	}, nil
}

// newMeterProvider returns a meter provider exporting over OTLP/gRPC, with
// the Go runtime's metrics, or nil when the environment asks for no metric
// export: the global no-op provider then stays, and recording a measurement
// costs an empty call.
func newMeterProvider(ctx context.Context, res *resource.Resource) (*sdkmetric.MeterProvider, error) {
	if !metricExportEnabled() {
		return nil, nil
	}
	exp, err := otlpmetricgrpc.New(ctx) // endpoint, headers, TLS, temporality from OTEL_EXPORTER_OTLP_*
	if err != nil {
		return nil, fmt.Errorf("otlp metric exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(res),
		// Interval and timeout from OTEL_METRIC_EXPORT_INTERVAL and
		// OTEL_METRIC_EXPORT_TIMEOUT (default 60 s and 30 s).
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp)),
	)
	// go.memory.used, go.memory.gc.goal, go.goroutine.count…: what an
	// operator checks first when a service slows down.
	if err := runtime.Start(runtime.WithMeterProvider(mp)); err != nil {
		return nil, errors.Join(fmt.Errorf("runtime metrics: %w", err), mp.Shutdown(ctx))
	}
	return mp, nil
}

// exportEnabled reports whether the environment asks for OTLP span export.
func exportEnabled() bool {
	if os.Getenv("OTEL_TRACES_EXPORTER") == "none" || os.Getenv("OTEL_SDK_DISABLED") == "true" {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// metricExportEnabled reports whether the environment asks for OTLP metric
// export.
func metricExportEnabled() bool {
	if os.Getenv("OTEL_METRICS_EXPORTER") == "none" || os.Getenv("OTEL_SDK_DISABLED") == "true" {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") != ""
}
