package grpcapi_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
	"github.com/pushmesh/pushmesh/trackingsvc/server"
)

func TestMain(m *testing.M) {
	proctest.RunChildIfAsked(func(ctx context.Context, s *grpc.Server, spec proctest.Spec, log *slog.Logger) (func() error, error) {
		// No HTTP endpoint: the crash tests use gRPC only.
		return server.Start(ctx, s, spec.DataDir, server.Config{}, log)
	})
	os.Exit(m.Run())
}

// crashEvents draws n events of every type with distinct ids over the last
// two hours of the real clock (the child runs on it), a few journeys,
// apps, platforms and profiles, so that opens and taps of one profile land
// in different batches.
func crashEvents(n int, prefix string, seed uint64) []*trackingv1.Event {
	rng := rand.New(rand.NewPCG(seed, 9))
	return drawEvents(rng, n, func(i int) string { return fmt.Sprintf("%s-%d", prefix, i) }, time.Now().Add(-2*time.Hour), 110*time.Minute, 300)
}

// ingestStream sends evs as one Ingest stream in messages of 2,500.
func ingestStream(ctx context.Context, c trackingv1.TrackingServiceClient, evs []*trackingv1.Event) (*trackingv1.IngestResponse, error) {
	stream, err := c.Ingest(ctx)
	if err != nil {
		return nil, err
	}
	proctest.SendChunks(evs, 2500, func(chunk []*trackingv1.Event) error {
		return stream.Send(&trackingv1.IngestRequest{Events: chunk})
	})
	return stream.CloseAndRecv()
}

// listAll lists every stored event.
func listAll(t testing.TB, c trackingv1.TrackingServiceClient) []*trackingv1.Event {
	t.Helper()
	var stored []*trackingv1.Event
	token := ""
	for {
		page, err := c.ListEvents(context.Background(), &trackingv1.ListEventsRequest{PageSize: 10_000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, page.GetEvents()...)
		if token = page.GetNextPageToken(); token == "" {
			return stored
		}
	}
}

// TestKill9MidIngest kills trackingsvc with SIGKILL while two clients
// ingest overlapping streams, restarts it, and has the clients retry every
// stream they got no answer for (as the README says: resend the whole
// stream). Every acknowledged event is stored right after the kill, every
// event ends up stored exactly once, a retried acknowledged stream is all
// duplicates, and GetMetrics equals a recomputation from ListEvents.
func TestKill9MidIngest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs trackingsvc as a child process, killed once")
	}
	const (
		perClient = 3
		perStream = 30_000
	)
	// Two clients; the second repeats a tenth of the first's events, so
	// batches in flight together take each other's ids for duplicates.
	a := crashEvents(perClient*perStream, "a", 1)
	b := crashEvents(perClient*perStream, "b", 2)
	for i := 0; i < len(b); i += 10 {
		b[i] = a[(i*7)%len(a)]
	}
	clients := [][][]*trackingv1.Event{nil, nil}
	for s := range perClient {
		clients[0] = append(clients[0], a[s*perStream:(s+1)*perStream])
		clients[1] = append(clients[1], b[s*perStream:(s+1)*perStream])
	}
	all := map[string]*trackingv1.Event{}
	for _, e := range append(append([]*trackingv1.Event{}, a...), b...) {
		all[e.GetEventId()] = e
	}

	dir := t.TempDir()
	addr, conn := proctest.Target(t)
	client := trackingv1.NewTrackingServiceClient(conn)
	start := func() *proctest.Process {
		t.Helper()
		p, err := proctest.Start(proctest.Spec{Name: "trackingsvc", Listen: addr, DataDir: dir, Config: []byte("{}")}, proctest.Options{}, func(ctx context.Context) error {
			_, err := client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	// acked[c][s]: client c's stream s was answered.
	var mu sync.Mutex
	acked := [2][perClient]bool{}
	var accepted, duplicates int64
	run := func(ctx context.Context) {
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				for s, evs := range clients[c] {
					mu.Lock()
					done := acked[c][s]
					mu.Unlock()
					if done {
						continue
					}
					resp, err := ingestStream(ctx, client, evs)
					if err != nil {
						return // the service is gone: retried after the restart
					}
					if resp.GetRejectedCount() != 0 {
						t.Errorf("client %d stream %d: %d events rejected: %v", c, s, resp.GetRejectedCount(), resp.GetRejected())
					}
					mu.Lock()
					acked[c][s] = true
					accepted += resp.GetAccepted()
					duplicates += resp.GetDuplicates()
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}

	p := start()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		run(ctx)
	}()
	// Kill once some streams were answered and others are half sent.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := 0
		for c := range acked {
			for s := range acked[c] {
				if acked[c][s] {
					n++
				}
			}
		}
		mu.Unlock()
		if n >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(time.Duration(rng.IntN(80)) * time.Millisecond)
	p.Kill()
	cancel()
	<-ran

	p = start()
	defer p.Stop()
	// Acknowledged means durable: every event of an answered stream is
	// there after the kill, and nothing is stored twice.
	stored := listAll(t, client)
	seen := map[string]int{}
	for _, e := range stored {
		seen[e.GetEventId()]++
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("event %s stored %d times after the kill", id, n)
		}
	}
	unanswered := 0
	for c := range clients {
		for s, evs := range clients[c] {
			if !acked[c][s] {
				unanswered++
				continue
			}
			for _, e := range evs {
				if seen[e.GetEventId()] == 0 {
					t.Fatalf("client %d stream %d was acknowledged, but its event %s is not stored after the kill", c, s, e.GetEventId())
				}
			}
		}
	}
	t.Logf("killed with %d of %d streams unanswered; %d events stored of %d", unanswered, 2*perClient, len(stored), len(all))

	// The clients retry what was not answered, then one answered stream
	// again (its answer lost, say): nothing is counted twice.
	run(context.Background())
	again, err := ingestStream(context.Background(), client, clients[0][0])
	if err != nil {
		t.Fatal(err)
	}
	if again.GetAccepted() != 0 || again.GetDuplicates() != perStream {
		t.Errorf("an answered stream sent again: got %v, want all %d duplicates", again, perStream)
	}

	stored = listAll(t, client)
	seen = map[string]int{}
	for _, e := range stored {
		seen[e.GetEventId()]++
		if seen[e.GetEventId()] == 2 {
			t.Errorf("event %s stored twice", e.GetEventId())
		}
	}
	if len(seen) != len(all) {
		t.Fatalf("stored %d distinct events, want %d", len(seen), len(all))
	}
	first, _ := firstOpens(stored)
	for _, f := range []*trackingv1.MetricsFilter{{}, {JourneyId: "j1"}, {JourneyId: "j2", MessageId: "m2", AppId: "com.a"}, {Platform: commonv1.Platform_PLATFORM_FCM}} {
		var sel []*trackingv1.Event
		for _, ev := range stored {
			if (f.JourneyId == "" || ev.JourneyId == f.JourneyId) && (f.MessageId == "" || ev.MessageId == f.MessageId) &&
				(f.AppId == "" || ev.AppId == f.AppId) && (f.Platform == 0 || ev.Platform == f.Platform) {
				sel = append(sel, ev)
			}
		}
		got, err := client.GetMetrics(context.Background(), &trackingv1.GetMetricsRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		if want := recompute(sel, first); !proto.Equal(got.GetTotal(), want) {
			t.Errorf("filter %v after the kill and the retries:\n got %v\nwant %v", f, got.GetTotal(), want)
		}
	}
}
