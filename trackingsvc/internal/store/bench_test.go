package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

// benchBatch makes n events of one journey like deliverysvc and apps send
// them: random ids, every type, times within the last minute.
func benchBatch(rng *rand.Rand, n int, now time.Time) []*trackingv1.Event {
	apps := []string{"com.acme.shop", "com.acme.wallet", "com.acme.news"}
	out := make([]*trackingv1.Event, n)
	for i := range out {
		typ := trackingv1.EventType(1 + rng.IntN(7))
		e := &trackingv1.Event{
			EventId:     fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64()),
			Type:        typ,
			EventTime:   timestamppb.New(now.Add(-time.Duration(rng.Int64N(int64(time.Minute))))),
			ReceiveTime: timestamppb.New(now),
			ProfileId:   fmt.Sprintf("p%07d", rng.IntN(1_000_000)),
			TokenHash:   fmt.Sprintf("%032x", rng.Uint64()),
			AppId:       apps[rng.IntN(len(apps))],
			Platform:    commonv1.Platform(1 + rng.IntN(2)),
			JourneyId:   "bench-journey",
			MessageId:   "bench-message",
		}
		switch typ {
		case trackingv1.EventType_EVENT_TYPE_ACTION:
			e.ActionId = "buy"
		case trackingv1.EventType_EVENT_TYPE_FAILED:
			e.FailureReason = commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
		case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
			e.ExclusionReason = commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT
		}
		out[i] = e
	}
	return out
}

// BenchmarkAppend measures durable appends of 20,000-event batches.
func BenchmarkAppend(b *testing.B) {
	db, err := boltdb.Open(b.TempDir(), "bench.db")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	st, err := Open(db, Options{})
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	const batch = 20_000
	batches := make([][]*trackingv1.Event, 30)
	for i := range batches {
		batches[i] = benchBatch(rng, batch, time.Now())
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := st.Append(context.Background(), "bench", batches[i%len(batches)]); err != nil {
			b.Fatal(err)
		}
		if i%len(batches) == len(batches)-1 {
			b.StopTimer()
			for j := range batches {
				batches[j] = benchBatch(rng, batch, time.Now())
			}
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
}
