// Package instruments declares OpenTelemetry metric instruments for a
// service: a list of declarations checked once, without pulling in the
// exporters (servicekit/telemetry installs those).
package instruments

import (
	"errors"

	"go.opentelemetry.io/otel/metric"
)

// Set declares a service's instruments on one meter and keeps the
// first errors, so that a list of declarations is checked once (Err) instead
// of after each.
type Set struct {
	Meter metric.Meter
	Err   error
}

// New declares instruments in mp's meter named scope.
func New(mp metric.MeterProvider, scope string) *Set {
	return &Set{Meter: mp.Meter(scope)}
}

// Counter declares an Int64Counter.
func (in *Set) Counter(name, unit, description string) metric.Int64Counter {
	c, err := in.Meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(description))
	in.Err = errors.Join(in.Err, err)
	return c
}

// Gauge declares an Int64ObservableGauge, read by a callback the caller
// registers.
func (in *Set) Gauge(name, unit, description string) metric.Int64ObservableGauge {
	g, err := in.Meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(description))
	in.Err = errors.Join(in.Err, err)
	return g
}

// Histogram declares a Float64Histogram with the given bucket boundaries.
func (in *Set) Histogram(name, unit, description string, boundaries ...float64) metric.Float64Histogram {
	h, err := in.Meter.Float64Histogram(name, metric.WithUnit(unit), metric.WithDescription(description),
		metric.WithExplicitBucketBoundaries(boundaries...))
	in.Err = errors.Join(in.Err, err)
	return h
}
