package delivery

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/metrictest"
)

func result(status Status, p commonv1.Platform, reason commonv1.FailureReason) Result {
	return Result{Status: status, Target: Target{Platform: p}, Reason: reason}
}

const (
	apns = commonv1.Platform_PLATFORM_APNS
	fcm  = commonv1.Platform_PLATFORM_FCM
	none = commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED
	gone = commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
)

func TestCountResults(t *testing.T) {
	mp, reader := metrictest.New(t)
	m, err := metrics.New(mp)
	if err != nil {
		t.Fatal(err)
	}
	countResults(context.Background(), m, []Result{
		result(StatusSent, apns, none), result(StatusSent, apns, none),
		result(StatusFailed, apns, gone),
		result(StatusSent, apns, none), // a run that starts again
		result(StatusSent, fcm, none),
		result(StatusExcluded, fcm, none), // not a push
		result(StatusFailed, fcm, gone), result(StatusFailed, fcm, gone),
	})
	countResults(context.Background(), nil, []Result{result(StatusSent, apns, none)}) // no metrics: no panic
	platform := func(p string) attribute.KeyValue { return attribute.String("pushmesh.platform", p) }
	unregistered := attribute.String("pushmesh.failure_reason", "unregistered")
	for _, c := range []struct {
		name  string
		attrs []attribute.KeyValue
		want  int64
	}{
		{"pushmesh.notifications.sent", []attribute.KeyValue{platform("apns")}, 3},
		{"pushmesh.notifications.sent", []attribute.KeyValue{platform("fcm")}, 1},
		{"pushmesh.notifications.failed", []attribute.KeyValue{platform("apns"), unregistered}, 1},
		{"pushmesh.notifications.failed", []attribute.KeyValue{platform("fcm"), unregistered}, 2},
	} {
		if got := reader.Value(c.name, c.attrs...); got != c.want {
			t.Errorf("%s %v: got %d, want %d", c.name, c.attrs, got, c.want)
		}
	}
}

// BenchmarkRecordPerPush measures what the metrics add to each push, with a
// real SDK meter provider (a manual reader, never collected: collection
// runs once per export interval, off the hot path): counting its result
// (countResults, as finish does for every message) and timing its gateway
// request. Report per result: ns/op and allocs/op.
func BenchmarkRecordPerPush(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	m, err := metrics.New(mp)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	one := []Result{result(StatusSent, apns, none)}
	b.Run("result", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			countResults(ctx, m, one)
		}
	})
	b.Run("failed result", func(b *testing.B) {
		failed := []Result{result(StatusFailed, fcm, gone)}
		b.ReportAllocs()
		for b.Loop() {
			countResults(ctx, m, failed)
		}
	})
	b.Run("result in batch of 100", func(b *testing.B) {
		// A message to 60 APNs and 40 FCM tokens, 5 of them dead: its
		// results come grouped by app, as the pipeline sends them.
		batch := make([]Result, 0, 100)
		for i := range 100 {
			p := apns
			if i >= 60 {
				p = fcm
			}
			r := result(StatusSent, p, none)
			if i%20 == 0 {
				r = result(StatusFailed, p, gone)
			}
			batch = append(batch, r)
		}
		b.ReportAllocs()
		for b.Loop() {
			countResults(ctx, m, batch)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/result")
	})
	b.Run("gateway request", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.GatewayRequest(ctx, apns, metrics.GatewayOK, 3*time.Millisecond)
		}
	})
	b.Run("result and request, parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.GatewayRequest(ctx, apns, metrics.GatewayOK, 3*time.Millisecond)
				countResults(ctx, m, one)
			}
		})
	})
}
