package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
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

// BenchmarkImportRowsForAFullProfile measures import rows that each bring a
// new token to a profile already at MaxProfileTokens active tokens: every
// row is rejected after looking for an inactive token to evict. (A CRM
// export can hold thousands of rows for one test or shared account.)
func BenchmarkImportRowsForAFullProfile(b *testing.B) {
	st, _ := openStore(b, b.TempDir(), Options{})
	ctx := context.Background()
	tok := func(kind, i int) string { return fmt.Sprintf("%08x%056x", kind, i) }
	var rows []profile.ImportRow
	for i := 0; i < profile.MaxProfileTokens; i++ {
		rows = append(rows, profile.ImportRow{CustomerID: "P", Reg: profile.Registration{Key: apns(tok(1, i)), Time: base + int64(i)*sec, Source: "import"}})
	}
	if c := importRows(b, ctx, st, rows); c.Created != profile.MaxProfileTokens {
		b.Fatalf("got %+v, want P filled", c)
	}
	rows = rows[:0]
	for i := 0; i < b.N; i++ {
		rows = append(rows, profile.ImportRow{CustomerID: "P", Reg: profile.Registration{Key: apns(tok(2, i)), Time: base + 1000*sec, Source: "import"}})
	}
	b.ResetTimer()
	c := importRows(b, ctx, st, rows)
	b.StopTimer()
	if c.Rejected != int64(b.N) {
		b.Fatalf("got %+v, want all %d rows rejected", c, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
