// Command trackingbench measures trackingsvc: durable events/s through the
// real Ingest gRPC stream into a real bbolt file, then GetMetrics latency for
// the journey those events belong to.
//
//	go run ./trackingsvc/cmd/trackingbench -events 1000000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/trackingsvc/server"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "trackingbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("trackingbench", flag.ContinueOnError)
	total := fs.Int("events", 1_000_000, "events to ingest")
	streams := fs.Int("streams", 2, "concurrent Ingest streams")
	spread := fs.Duration("spread", time.Hour, "event times are spread over this much of the recent past (real-time ingest: minutes to an hour)")
	batch := fs.Int("batch", 10_000, "events per IngestRequest")
	queries := fs.Int("queries", 200, "GetMetrics calls to time")
	dir := fs.String("data-dir", "", "data dir (default: a temporary one, removed after)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the ingest phase to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "trackingbench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := grpcserver.New(grpcserver.Config{Name: "trackingsvc", Listen: "127.0.0.1:0", Logger: log})
	if err != nil {
		return err
	}
	stop, err := server.Start(ctx, srv.GRPC(), *dir, server.Config{}, log)
	if err != nil {
		return err
	}
	serveCtx, cancel := context.WithCancel(ctx)
	go srv.Serve(serveCtx)
	defer func() { cancel(); _ = stop() }()
	conn, err := grpcclient.Dial(srv.Addr().String())
	if err != nil {
		return err
	}
	defer conn.Close()
	client := trackingv1.NewTrackingServiceClient(conn)

	// Events of one journey spread over the last day: 3 apps, 2 platforms,
	// every type; ids random like client UUIDs.
	now := time.Now()
	per := *total / *streams
	var wg sync.WaitGroup
	errs := make(chan error, *streams)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	start := time.Now()
	for s := range *streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- ingest(ctx, client, s, per, *batch, now, *spread)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	pprof.StopCPUProfile()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	ingested := per * *streams
	fmt.Printf("ingest: %d events in %s over %d streams = %.0f events/s (durable, deduplicated)\n",
		ingested, elapsed.Round(time.Millisecond), *streams, float64(ingested)/elapsed.Seconds())

	lat := make([]time.Duration, *queries)
	var last *trackingv1.GetMetricsResponse
	for i := range lat {
		t0 := time.Now()
		last, err = client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{
			Filter: &trackingv1.MetricsFilter{JourneyId: "bench-journey"}, Granularity: trackingv1.Granularity_GRANULARITY_HOUR,
		})
		if err != nil {
			return err
		}
		lat[i] = time.Since(t0)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	tot := last.GetTotal()
	counted := tot.GetTargeted() + tot.GetExcluded() + tot.GetReceived() + tot.GetOpened() + tot.GetDismissed() + tot.GetActions()
	fmt.Printf("GetMetrics (journey with %d events, hourly buckets): p50 %s p99 %s max %s\n",
		counted, lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
	return nil
}

func ingest(ctx context.Context, client trackingv1.TrackingServiceClient, stream, n, batch int, now time.Time, spread time.Duration) error {
	rng := rand.New(rand.NewPCG(uint64(stream), 7))
	s, err := client.Ingest(ctx)
	if err != nil {
		return err
	}
	apps := []string{"com.acme.shop", "com.acme.wallet", "com.acme.news"}
	evs := make([]*trackingv1.Event, 0, batch)
	for i := range n {
		typ := trackingv1.EventType(1 + rng.IntN(7))
		e := &trackingv1.Event{
			EventId:   fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64()),
			Type:      typ,
			EventTime: timestamppb.New(now.Add(-time.Duration(rng.Int64N(int64(spread))))),
			ProfileId: fmt.Sprintf("p%07d", rng.IntN(1_000_000)),
			AppId:     apps[rng.IntN(len(apps))],
			Platform:  commonv1.Platform(1 + rng.IntN(2)),
			JourneyId: "bench-journey",
			MessageId: "bench-message",
		}
		switch typ {
		case trackingv1.EventType_EVENT_TYPE_ACTION:
			e.ActionId = "buy"
		case trackingv1.EventType_EVENT_TYPE_FAILED:
			e.FailureReason = commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
		case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
			e.ExclusionReason = commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT
		}
		evs = append(evs, e)
		if len(evs) == batch || i == n-1 {
			if err := s.Send(&trackingv1.IngestRequest{Events: evs}); err != nil {
				return err
			}
			evs = make([]*trackingv1.Event, 0, batch)
		}
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetAccepted() != int64(n) {
		return fmt.Errorf("stream %d: accepted %d of %d (%d rejected)", stream, resp.GetAccepted(), n, resp.GetRejectedCount())
	}
	return nil
}
