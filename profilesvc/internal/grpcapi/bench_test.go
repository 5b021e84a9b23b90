package grpcapi_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
)

// The benchmarks run the real service over loopback gRPC on a real bbolt
// file, like the tests. cmd/profilebench runs the same workloads at full
// size (1M rows, 1M profiles, 50 clients) and prints the figures.

func benchRow(i, n int) *profilev1.ImportRow {
	half := n / 2
	r := &profilev1.ImportRow{AppId: "com.example.app", Platform: apns, SourceTime: at(1)}
	switch {
	case i < half: // a new customer with a new token
		r.CustomerId, r.Token = fmt.Sprintf("C%08d", i), fmt.Sprintf("%064x", i*7919)
	case (i-half)%2 == 0: // the same token registered again, later
		j := i - half
		r.CustomerId, r.Token, r.SourceTime = fmt.Sprintf("C%08d", j), fmt.Sprintf("%064x", j*7919), at(2)
	default: // the token moves to another existing customer
		j := i - half
		r.CustomerId, r.Token, r.SourceTime = fmt.Sprintf("C%08d", (j*31)%half), fmt.Sprintf("%064x", j*7919), at(2)
	}
	return r
}

// BenchmarkImport imports b.N rows (half new profiles, half updates and
// moves) through one ImportTokens stream into a fresh file.
func BenchmarkImport(b *testing.B) {
	n := max(b.N, 1000)
	rows := make([]*profilev1.ImportRow, n)
	for i := range rows {
		rows[i] = benchRow(i, n)
	}
	e := newEnv(b, store.Options{})
	ctx := context.Background()
	b.ResetTimer()
	cpu0 := cpuTime()
	resp := importAll(b, ctx, e.client, rows, 1000)
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(n), "cpu-µs/row")
	if resp.GetRejected() != 0 || resp.GetCreated() != int64(n/2) {
		b.Fatalf("got %v, want %d created and nothing rejected", resp, n/2)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkQueryAudience runs a selective audience query (about 1 profile in
// 8 qualifies) over 50,000 profiles with two tokens each, per iteration.
func BenchmarkQueryAudience(b *testing.B) {
	benchQueryAudience(b, 50_000, narrowProfile, &profilev1.QueryAudienceRequest{Condition: `attributes.tier == "gold" && attributes.locale.startsWith("en")`})
}

// BenchmarkQueryAudienceEveryone streams every profile as a member: it
// measures building and sending members rather than evaluating.
func BenchmarkQueryAudienceEveryone(b *testing.B) {
	benchQueryAudience(b, 50_000, narrowProfile, &profilev1.QueryAudienceRequest{})
}

// BenchmarkQueryAudienceWideProfiles streams every one of 20,000 profiles
// with 40 attributes, as a CRM keeps them: whole, and with only the three
// attributes a journey's templates read (member_fields). The client decodes
// what it receives, as deliverysvc does.
func BenchmarkQueryAudienceWideProfiles(b *testing.B) {
	b.Run("whole", func(b *testing.B) {
		benchQueryAudience(b, 20_000, wideProfile, &profilev1.QueryAudienceRequest{})
	})
	b.Run("selected", func(b *testing.B) {
		benchQueryAudience(b, 20_000, wideProfile, &profilev1.QueryAudienceRequest{
			MemberFields: &profilev1.MemberFields{Attributes: []string{"firstName", "tier", "locale"}}})
	})
}

var (
	benchTiers   = []string{"gold", "silver", "bronze", "platinum"}
	benchLocales = []string{"en-GB", "fr-FR", "en-US", "de-DE"}
)

func narrowProfile(i int) map[string]any {
	return map[string]any{"tier": benchTiers[i%4], "locale": benchLocales[(i/4)%4], "firstName": "Ada"}
}

func wideProfile(i int) map[string]any {
	attrs := narrowProfile(i)
	attrs["address"] = map[string]any{"street": "12 Rue de la République", "city": "Lyon", "zip": "69002", "country": "FR"}
	attrs["segments"] = []any{"newsletter", "loyalty", "winter-2026"}
	for k := range 33 {
		attrs[fmt.Sprintf("crm_field_%02d", k)] = fmt.Sprintf("value %d of profile %d", k, i)
	}
	attrs["ltv"], attrs["vip"] = float64(i%5000)+0.5, i%10 == 0
	return attrs
}

func benchQueryAudience(b *testing.B, profiles int, attrsOf func(int) map[string]any, req *profilev1.QueryAudienceRequest) {
	e := newEnv(b, store.Options{})
	ctx := context.Background()
	rows := make([]*profilev1.ImportRow, 0, 2*profiles)
	for i := 0; i < profiles; i++ {
		attrs, err := structpb.NewStruct(attrsOf(i))
		if err != nil {
			b.Fatal(err)
		}
		c := fmt.Sprintf("C%08d", i)
		rows = append(rows,
			&profilev1.ImportRow{CustomerId: c, Platform: apns, AppId: "com.example.ios", Token: fmt.Sprintf("%064x", i), SourceTime: at(1), Attributes: attrs},
			&profilev1.ImportRow{CustomerId: c, Platform: fcm, AppId: "com.example.android", Token: fmt.Sprintf("fcm-%0150d", i), SourceTime: at(1)})
	}
	importAll(b, ctx, e.client, rows, 1000)
	req.BatchSize = 1000
	b.ResetTimer()
	cpu0 := cpuTime()
	var bytes int
	for range b.N {
		resps := queryAll(b, ctx, e.client, req)
		if got := resps[len(resps)-1].GetStats().GetScanned(); got != int64(profiles) {
			b.Fatalf("got %d scanned, want %d", got, profiles)
		}
		for _, r := range resps {
			bytes += proto.Size(r)
		}
	}
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(profiles*b.N), "cpu-µs/profile")
	b.ReportMetric(float64(bytes)/float64(profiles*b.N), "B/profile")
	b.ReportMetric(float64(profiles)*float64(b.N)/b.Elapsed().Seconds(), "profiles/s")
}

// BenchmarkRegisterPushToken registers tokens from 50 concurrent clients
// and reports throughput and the 99th percentile latency.
func BenchmarkRegisterPushToken(b *testing.B) {
	e := newEnv(b, store.Options{})
	ctx := context.Background()
	var (
		mu  sync.Mutex
		lat []time.Duration
		seq int
	)
	b.SetParallelism(max(1, 50/max(1, testingProcs())))
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			mu.Lock()
			seq++
			i := seq
			mu.Unlock()
			start := time.Now()
			_, err := e.client.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{
				Profile: byCustomer(fmt.Sprintf("C%d", i%5000)), Token: fmt.Sprintf("%064x", i), Platform: apns, AppId: "com.example",
				DeviceId: fmt.Sprintf("device-%d", i),
			})
			if err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(start))
		}
		mu.Lock()
		lat = append(lat, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/req")
}

// cpuTime is the CPU time the process used so far: the figures above are
// measured on a shared machine, where CPU per unit of work is steadier
// than wall-clock rates. It counts the in-process client too.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
