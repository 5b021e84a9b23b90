// Package metrictest gives tests a real OpenTelemetry SDK meter provider
// whose measurements they read back, without touching the global provider
// (which parallel tests would share).
package metrictest

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// WaitTimeout bounds WaitValue and WaitCount. It is generous, for a loaded
// 2-core machine under the race detector: an outbox whose remote was down
// retries after a backoff of up to 10 s (outbox.Config.RetryMax's default)
// before its backlog can drain.
const WaitTimeout = time.Minute

// Reader reads what a provider from New recorded.
type Reader struct {
	t      testing.TB
	reader *sdkmetric.ManualReader
}

// New returns an SDK meter provider with a manual reader, shut down by
// t.Cleanup. Give the provider to the code under test; read with the Reader.
func New(t testing.TB) (*sdkmetric.MeterProvider, *Reader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return mp, &Reader{t: t, reader: reader}
}

// Collect reads every instrument now (observable gauges run their
// callbacks).
func (r *Reader) Collect() metricdata.ResourceMetrics {
	r.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		r.t.Fatalf("metrictest: collect: %v", err)
	}
	return rm
}

// Metric returns the instrument named name, and whether it recorded
// anything.
func (r *Reader) Metric(name string) (metricdata.Metrics, bool) {
	r.t.Helper()
	rm := r.Collect()
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

// Value is the sum of the int64 counter or gauge points of name whose
// attributes include every one of attrs (none: all points); 0 when there
// are none.
func (r *Reader) Value(name string, attrs ...attribute.KeyValue) int64 {
	r.t.Helper()
	m, ok := r.Metric(name)
	if !ok {
		return 0
	}
	var n int64
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, attrs) {
				n += p.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if matches(p.Attributes, attrs) {
				n += p.Value
			}
		}
	default:
		r.t.Fatalf("metrictest: %s is a %T, not an int64 counter or gauge", name, m.Data)
	}
	return n
}

// Count is the number of measurements in the float64 histogram points of
// name whose attributes include every one of attrs.
func (r *Reader) Count(name string, attrs ...attribute.KeyValue) uint64 {
	r.t.Helper()
	m, ok := r.Metric(name)
	if !ok {
		return 0
	}
	d, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		r.t.Fatalf("metrictest: %s is a %T, not a float64 histogram", name, m.Data)
	}
	var n uint64
	for _, p := range d.DataPoints {
		if matches(p.Attributes, attrs) {
			n += p.Count
		}
	}
	return n
}

// Attributes lists the attribute sets name has points for.
func (r *Reader) Attributes(name string) []attribute.Set {
	r.t.Helper()
	m, ok := r.Metric(name)
	if !ok {
		return nil
	}
	var out []attribute.Set
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			out = append(out, p.Attributes)
		}
	}
	return out
}

// WaitValue waits up to WaitTimeout for Value(name, attrs...) to be want,
// and fails the test with the last value if it never is: what is counted
// after an RPC returns (outbox forwarding, say) comes a little later.
func (r *Reader) WaitValue(name string, want int64, attrs ...attribute.KeyValue) {
	r.t.Helper()
	r.wait(name, attrs, want, func() int64 { return r.Value(name, attrs...) })
}

// WaitCount is WaitValue for Count.
func (r *Reader) WaitCount(name string, want uint64, attrs ...attribute.KeyValue) {
	r.t.Helper()
	r.wait(name, attrs, int64(want), func() int64 { return int64(r.Count(name, attrs...)) })
}

func (r *Reader) wait(name string, attrs []attribute.KeyValue, want int64, get func() int64) {
	r.t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for {
		got := get()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s %v: got %d, want %d (points: %v)", name, attrs, got, want, r.Attributes(name))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func matches(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		v, ok := set.Value(kv.Key)
		if !ok || v != kv.Value {
			return false
		}
	}
	return true
}
