package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkRegister measures the store alone (no gRPC): 50 goroutines
// register new tokens for 5,000 customers through the group commit.
func BenchmarkRegister(b *testing.B) {
	st, _ := openStore(b, b.TempDir(), Options{})
	ctx := context.Background()
	var seq atomic.Int64
	b.SetParallelism(25) // × GOMAXPROCS 2 = 50 concurrent callers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			if _, err := st.Register(ctx, cust(fmt.Sprintf("C%d", i%5000)), "profile", profileReg(i)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
