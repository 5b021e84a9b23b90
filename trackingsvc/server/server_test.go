package server

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
)

func TestFlags(t *testing.T) {
	var cfg Config
	fs := flag.NewFlagSet("trackingsvc", flag.ContinueOnError)
	cfg.register(fs)
	if err := fs.Parse([]string{"--http-listen=", "--retention=48h", "--dedupe-window=24h", "--sweep-interval=5m"}); err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPListen != "" || cfg.Retention != 48*time.Hour || cfg.DedupeWindow != 24*time.Hour || cfg.SweepInterval != 5*time.Minute {
		t.Errorf("got %+v, want http disabled, 48h retention, 24h window, 5m sweeps", cfg)
	}
	var defaults Config
	defaults.register(flag.NewFlagSet("trackingsvc", flag.ContinueOnError))
	if defaults.HTTPListen != DefaultHTTPListen || defaults.Retention != DefaultRetention || defaults.DedupeWindow != DefaultDedupeWindow {
		t.Errorf("got defaults %+v, want %s, %s, %s", defaults, DefaultHTTPListen, DefaultRetention, DefaultDedupeWindow)
	}
}

// start runs the service as pushctl dev does, through Start, and returns a
// client and the stop function.
func start(t *testing.T, dir string, cfg Config) (trackingv1.TrackingServiceClient, func() error) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var stop func() error
	conn := grpctest.Start(t, func(s *grpc.Server) {
		var err error
		if stop, err = Start(context.Background(), s, dir, cfg, log); err != nil {
			t.Fatal(err)
		}
	})
	return trackingv1.NewTrackingServiceClient(conn), stop
}

func TestStartServesGRPCAndHTTPAndStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	addr := proctest.MustFreeAddr(t)
	client, stop := start(t, dir, Config{HTTPListen: addr})
	ctx := context.Background()
	event := &trackingv1.Event{EventId: "e1", Type: trackingv1.EventType_EVENT_TYPE_SENT, EventTime: timestamppb.Now(), ProfileId: "p", JourneyId: "j"}
	if res, err := client.Track(ctx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{event}}); err != nil || res.GetAccepted() != 1 {
		t.Fatalf("Track: got %v, %v, want accepted", res, err)
	}
	// e1 again, with a coarser time (JSON, seconds): still a duplicate, by id.
	at := time.Now().UTC().Format(time.RFC3339)
	resp, err := http.Post("http://"+addr+"/v1/events", "application/json",
		bytes.NewBufferString(`{"events":[{"eventId":"e1","type":"EVENT_TYPE_SENT","eventTime":"`+at+`","profileId":"p"},{"eventId":"e2","type":"EVENT_TYPE_OPENED","eventTime":"`+at+`","profileId":"p","journeyId":"j"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"accepted":"1"`)) || !bytes.Contains(body, []byte(`"duplicates":"1"`)) {
		t.Errorf("POST /v1/events: got %d %s, want 200 with 1 accepted and 1 duplicate", resp.StatusCode, body)
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := http.Post("http://"+addr+"/v1/events", "application/json", bytes.NewBufferString("{}")); err == nil {
		t.Error("the HTTP endpoint still answers after stop")
	}
	// stop closed the store: the file opens again at once.
	db, err := boltdb.Open(dir, "trackingsvc.db")
	if err != nil {
		t.Fatalf("reopen after stop: %v", err)
	}
	db.Close()
}

func TestRestartKeepsEventsAndTheDedupeWindow(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	event := &trackingv1.Event{EventId: "e1", Type: trackingv1.EventType_EVENT_TYPE_OPENED, EventTime: timestamppb.Now(), ProfileId: "p", JourneyId: "j"}
	client, stop := start(t, dir, Config{})
	if _, err := client.Track(ctx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{event}}); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	client, stop = start(t, dir, Config{})
	defer stop()
	res, err := client.Track(ctx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{event}})
	if err != nil || res.GetDuplicates() != 1 {
		t.Errorf("after restart: got %v, %v, want the event a duplicate", res, err)
	}
	m, err := client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: "j"}})
	if err != nil || m.GetTotal().GetOpened() != 1 || m.GetTotal().GetUniqueOpens() != 1 {
		t.Errorf("after restart: got %v, %v, want one open, one unique", m.GetTotal(), err)
	}
}
