// Command trackingbench measures trackingsvc on this machine and prints the
// figures:
//
//  1. history: a journey with -history events spread over its 29-day
//     lifetime is written through the store's batch API (faster than gRPC);
//  2. startup: trackingsvc starts on that data, loading the dedupe window;
//  3. ingest: -events events go through the real Ingest gRPC stream
//     (-streams at once), durable in bbolt, deduplicated, counted;
//  4. retry: the first stream is sent again and must count nothing twice;
//  5. queries: GetMetrics over gRPC for the journey, p50/p99 per query shape.
//
// Run from the repository root:
//
//	go run ./trackingsvc/cmd/trackingbench                 # 10M-event journey, 1M ingested
//	go run ./trackingsvc/cmd/trackingbench -history 0      # ingest only
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/events"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
	"github.com/pushmesh/pushmesh/trackingsvc/server"
)

const journey = "bench-journey"

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "trackingbench:", err)
		os.Exit(1)
	}
}

type config struct {
	history, events, streams, batch, queries int
	spread                                   time.Duration
	dir, cpuProfile                          string
}

func run(ctx context.Context, args []string) error {
	var cfg config
	fs := flag.NewFlagSet("trackingbench", flag.ContinueOnError)
	fs.IntVar(&cfg.history, "history", 10_000_000, "events of the journey written through the store before the service starts (0: none)")
	fs.IntVar(&cfg.events, "events", 1_000_000, "events to ingest through gRPC")
	fs.IntVar(&cfg.streams, "streams", 2, "concurrent Ingest streams")
	fs.IntVar(&cfg.batch, "batch", 10_000, "events per IngestRequest (the API's maximum)")
	fs.DurationVar(&cfg.spread, "spread", time.Minute, "ingested event times spread over this much of the recent past (real time: seconds to minutes)")
	fs.IntVar(&cfg.queries, "queries", 200, "GetMetrics calls per query shape")
	fs.StringVar(&cfg.dir, "data-dir", "", "data dir (default: a temporary one, removed after)")
	fs.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of the ingest phase to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.dir == "" {
		d, err := os.MkdirTemp("", "trackingbench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		cfg.dir = d
	}
	fmt.Printf("trackingbench: %d CPUs, GOMAXPROCS %d, %s, load average %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), loadAverage())
	defer func() { fmt.Printf("load average at the end: %s\n", loadAverage()) }()

	if cfg.history > 0 {
		if err := writeHistory(ctx, cfg.dir, cfg.history); err != nil {
			return err
		}
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := grpcserver.New(grpcserver.Config{Name: "trackingsvc", Listen: "127.0.0.1:0", Logger: log})
	if err != nil {
		return err
	}
	t0 := time.Now()
	stop, err := server.Start(ctx, srv.GRPC(), cfg.dir, server.Config{}, log)
	if err != nil {
		return err
	}
	startup := time.Since(t0)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	size := int64(0)
	if fi, err := os.Stat(filepath.Join(cfg.dir, "trackingsvc.db")); err == nil {
		size = fi.Size()
	}
	fmt.Printf("startup: %s (opens the store, loads the dedupe window); Go heap in use after startup %d MB; bbolt file %d MB\n",
		startup.Round(time.Millisecond), ms.HeapAlloc>>20, size>>20)
	serveCtx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx) }()
	defer func() {
		cancel()
		<-served
		_ = stop()
	}()
	conn, err := grpcclient.Dial(srv.Addr().String())
	if err != nil {
		return err
	}
	defer conn.Close()
	client := trackingv1.NewTrackingServiceClient(conn)

	if cfg.events > 0 {
		if err := benchIngest(ctx, client, cfg); err != nil {
			return err
		}
	}
	return benchQueries(ctx, client, cfg.queries)
}

// generator makes events like deliverysvc and apps send them: random
// 128-bit ids, every type equally often (opens, the costliest, are thus
// over-represented), a million profiles, three apps, two platforms.
type generator struct {
	rng *rand.Rand
	buf [16]byte
}

var apps = []string{"com.acme.shop", "com.acme.wallet", "com.acme.news"}

func (g *generator) event(at time.Time) *trackingv1.Event {
	for i := 0; i < 16; i += 8 {
		v := g.rng.Uint64()
		for j := range 8 {
			g.buf[i+j] = byte(v >> (8 * j))
		}
	}
	typ := trackingv1.EventType(1 + g.rng.IntN(7))
	profile := g.rng.IntN(1_000_000)
	e := &trackingv1.Event{
		EventId:   "pm-" + hex.EncodeToString(g.buf[:]),
		Type:      typ,
		EventTime: timestamppb.New(at),
		ProfileId: "p" + fmt.Sprint(profile),
		AppId:     apps[g.rng.IntN(len(apps))],
		Platform:  commonv1.Platform(1 + g.rng.IntN(2)),
		JourneyId: journey,
		MessageId: "bench-message",
	}
	switch typ {
	case trackingv1.EventType_EVENT_TYPE_SENT:
		e.Token = hex.EncodeToString(g.buf[:]) + hex.EncodeToString(g.buf[:])
	case trackingv1.EventType_EVENT_TYPE_FAILED:
		e.Token = hex.EncodeToString(g.buf[:]) + hex.EncodeToString(g.buf[:])
		e.FailureReason = commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
	case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
		e.ExclusionReason = commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT
	case trackingv1.EventType_EVENT_TYPE_ACTION:
		e.ActionId = []string{"buy", "later"}[g.rng.IntN(2)]
	}
	return e
}

// writeHistory stores n events of the journey, spread over 29 days, through
// the store's batch API in batches of 20,000.
func writeHistory(ctx context.Context, dir string, n int) error {
	db, err := boltdb.Open(dir, "trackingsvc.db")
	if err != nil {
		return err
	}
	defer db.Close()
	st, err := store.Open(db, store.Options{})
	if err != nil {
		return err
	}
	g := &generator{rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 99))}
	now := time.Now()
	const lifetime = 29 * 24 * time.Hour
	start := time.Now()
	const batch = 20_000
	for done := 0; done < n; done += batch {
		evs := make([]*trackingv1.Event, min(batch, n-done))
		for i := range evs {
			// Time moves forward through the journey's life, as it would.
			at := now.Add(-lifetime + time.Duration(float64(lifetime)*float64(done+i)/float64(n)))
			evs[i] = g.event(at)
			events.Prepare(evs[i])
		}
		if _, err := st.Append(ctx, "default", evs); err != nil {
			return err
		}
	}
	el := time.Since(start)
	fmt.Printf("history: %d events of one journey over 29 days written through the store API in %s (at %.0f events/s)\n",
		n, el.Round(time.Millisecond), float64(n)/el.Seconds())
	return nil
}

func benchIngest(ctx context.Context, client trackingv1.TrackingServiceClient, cfg config) error {
	// The requests are made before the clock starts: the figure is the
	// service's (and gRPC's), not the generator's.
	per := cfg.events / cfg.streams
	now := time.Now()
	reqs := make([][]*trackingv1.IngestRequest, cfg.streams)
	for s := range reqs {
		// Seeded by the clock: a rerun on the same -data-dir sends new ids.
		g := &generator{rng: rand.New(rand.NewPCG(uint64(now.UnixNano()), uint64(s)))}
		for done := 0; done < per; done += cfg.batch {
			evs := make([]*trackingv1.Event, min(cfg.batch, per-done))
			for i := range evs {
				evs[i] = g.event(now.Add(-time.Duration(g.rng.Int64N(int64(cfg.spread)))))
			}
			reqs[s] = append(reqs[s], &trackingv1.IngestRequest{Events: evs})
		}
	}
	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	cpu0 := cpuTime()
	start := time.Now()
	res, err := ingestAll(ctx, client, reqs)
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	pprof.StopCPUProfile()
	if err != nil {
		return err
	}
	total := per * cfg.streams
	if res.GetAccepted() != int64(total) {
		return fmt.Errorf("ingest: accepted %d of %d (%d duplicates, %d rejected)", res.GetAccepted(), total, res.GetDuplicates(), res.GetRejectedCount())
	}
	fmt.Printf("ingest: %d events in %s over %d streams = %.0f events/s (durable, deduplicated); %.1f CPU-s in this process (client included) = %.0f events per CPU-second\n",
		total, elapsed.Round(time.Millisecond), cfg.streams, float64(total)/elapsed.Seconds(), cpu.Seconds(), float64(total)/cpu.Seconds())

	start = time.Now()
	again, err := ingestAll(ctx, client, reqs[:1])
	if err != nil {
		return err
	}
	if again.GetAccepted() != 0 || again.GetDuplicates() != int64(per) {
		return fmt.Errorf("retry: accepted %d duplicates %d, want 0 and %d", again.GetAccepted(), again.GetDuplicates(), per)
	}
	fmt.Printf("retry: %d events sent again in %s: all %d duplicates, none counted\n", per, time.Since(start).Round(time.Millisecond), again.GetDuplicates())
	return nil
}

// ingestAll sends each request list on its own stream, concurrently, and
// sums the responses.
func ingestAll(ctx context.Context, client trackingv1.TrackingServiceClient, reqs [][]*trackingv1.IngestRequest) (*trackingv1.IngestResponse, error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	sum := &trackingv1.IngestResponse{}
	var errs []error
	for _, list := range reqs {
		wg.Go(func() {
			res, err := ingest(ctx, client, list)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			sum.Accepted += res.GetAccepted()
			sum.Duplicates += res.GetDuplicates()
			sum.RejectedCount += res.GetRejectedCount()
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return sum, nil
}

func ingest(ctx context.Context, client trackingv1.TrackingServiceClient, reqs []*trackingv1.IngestRequest) (*trackingv1.IngestResponse, error) {
	s, err := client.Ingest(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range reqs {
		if err := s.Send(r); err != nil {
			_, rerr := s.CloseAndRecv()
			return nil, fmt.Errorf("send: %w (%v)", err, rerr)
		}
	}
	return s.CloseAndRecv()
}

func benchQueries(ctx context.Context, client trackingv1.TrackingServiceClient, n int) error {
	now := time.Now()
	shapes := []struct {
		name string
		req  *trackingv1.GetMetricsRequest
	}{
		{"journey, hourly buckets", &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: journey}, Granularity: trackingv1.Granularity_GRANULARITY_HOUR}},
		{"journey, total", &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: journey}}},
		{"journey, daily buckets", &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: journey}, Granularity: trackingv1.Granularity_GRANULARITY_DAY}},
		{"journey+app+platform, last 7 days, hourly", &trackingv1.GetMetricsRequest{
			Filter:    &trackingv1.MetricsFilter{JourneyId: journey, AppId: apps[0], Platform: commonv1.Platform_PLATFORM_APNS},
			StartTime: timestamppb.New(now.Add(-7 * 24 * time.Hour)), Granularity: trackingv1.Granularity_GRANULARITY_HOUR,
		}},
		{"journey, last 6 hours, minute buckets", &trackingv1.GetMetricsRequest{
			Filter:    &trackingv1.MetricsFilter{JourneyId: journey},
			StartTime: timestamppb.New(now.Add(-6 * time.Hour)), Granularity: trackingv1.Granularity_GRANULARITY_MINUTE,
		}},
		{"only app_id, total", &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{AppId: apps[1]}}},
		{"only platform, daily", &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{Platform: commonv1.Platform_PLATFORM_FCM}, Granularity: trackingv1.Granularity_GRANULARITY_DAY}},
	}
	for _, sh := range shapes {
		lat := make([]time.Duration, n)
		var last *trackingv1.GetMetricsResponse
		for i := range lat {
			t0 := time.Now()
			var err error
			if last, err = client.GetMetrics(ctx, sh.req); err != nil {
				return fmt.Errorf("%s: %w", sh.name, err)
			}
			lat[i] = time.Since(t0)
		}
		slices.Sort(lat)
		m := last.GetTotal()
		counted := m.GetTargeted() + m.GetExcluded() + m.GetReceived() + m.GetOpened() + m.GetDismissed() + m.GetActions()
		fmt.Printf("GetMetrics %-42s %9d events %5d buckets  p50 %-9s p99 %-9s max %s\n", sh.name+":", counted, len(last.GetBuckets()),
			lat[n/2].Round(time.Microsecond), lat[n*99/100].Round(time.Microsecond), lat[n-1].Round(time.Microsecond))
	}
	return nil
}

// loadAverage is the 1-minute load average where the system tells it: on a
// shared machine throughput moves with it.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "unknown"
}
