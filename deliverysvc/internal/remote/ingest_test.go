package remote

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
)

// fakeTracking records what Ingest streams receive.
type fakeTracking struct {
	trackingv1.UnimplementedTrackingServiceServer
	mu       sync.Mutex
	requests []*trackingv1.IngestRequest
	err      error // returned instead of a response when set
	rejected []*trackingv1.EventRejection
}

func (f *fakeTracking) Ingest(stream grpc.ClientStreamingServer[trackingv1.IngestRequest, trackingv1.IngestResponse]) error {
	reqs, err := recvAll(stream)
	if err != nil {
		return err
	}
	var n int64
	for _, req := range reqs {
		n += int64(len(req.GetEvents()))
	}
	f.mu.Lock()
	f.requests = append(f.requests, reqs...)
	f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	rej := int64(len(f.rejected))
	return stream.SendAndClose(&trackingv1.IngestResponse{Accepted: n - rej, RejectedCount: rej, Rejected: f.rejected})
}

// recvAll reads an Ingest stream's requests until the client closes it.
func recvAll(stream grpc.ClientStreamingServer[trackingv1.IngestRequest, trackingv1.IngestResponse]) ([]*trackingv1.IngestRequest, error) {
	var reqs []*trackingv1.IngestRequest
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return reqs, nil
		}
		if err != nil {
			return nil, err
		}
		reqs = append(reqs, req)
	}
}

func (f *fakeTracking) events() []*trackingv1.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	var evs []*trackingv1.Event
	for _, r := range f.requests {
		evs = append(evs, r.GetEvents()...)
	}
	return evs
}

func sentResult(i int) delivery.Result {
	return delivery.Result{
		IdempotencyKey: "k" + strconv.Itoa(i), MessageID: "m", JourneyID: "j",
		Target: delivery.Target{Token: "tok" + strconv.Itoa(i), Platform: commonv1.Platform_PLATFORM_APNS, AppID: "com.x", ProfileID: "p"},
		Status: delivery.StatusSent, Time: time.Unix(1_700_000_000, int64(i)),
	}
}

// TestIngestForwardsRecordsAsTheyAre: the events trackingsvc decodes are the
// recorded ones; records it could not decode are dropped, not sent.
func TestIngestForwardsRecordsAsTheyAre(t *testing.T) {
	fake := &fakeTracking{}
	conn := grpctest.Start(t, func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, fake) })
	deliver := Ingest(trackingv1.NewTrackingServiceClient(conn), slog.New(slog.DiscardHandler))

	var records [][]byte
	var want []*trackingv1.Event
	for i := range 3 {
		r := sentResult(i)
		rec, _ := appendEvent(nil, "acme", &r)
		records = append(records, rec)
		want = append(want, referenceEvent("acme", &r))
	}
	badUTF8 := sentResult(9)
	badUTF8.Target.Token = "tok\xff"
	rec, _ := appendEvent(nil, "acme", &badUTF8)
	records = append(records,
		records[0][:len(records[0])-1], // truncated
		rec,                            // invalid UTF-8 in a string field
		append(append([]byte(nil), records[1]...), 0x1a, 0x02, 0x08, 0x80), // a broken event_time
	)
	if err := deliver(context.Background(), "acme", records); err != nil {
		t.Fatal(err)
	}
	got := fake.events()
	if len(got) != len(want) {
		t.Fatalf("trackingsvc got %d events, want %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("event %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

func TestIngestSplitsBigBatches(t *testing.T) {
	fake := &fakeTracking{}
	conn := grpctest.Start(t, func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, fake) })
	deliver := Ingest(trackingv1.NewTrackingServiceClient(conn), slog.New(slog.DiscardHandler))
	records := make([][]byte, 10_001)
	for i := range records {
		r := sentResult(i)
		records[i], _ = appendEvent(nil, "acme", &r)
	}
	if err := deliver(context.Background(), "acme", records); err != nil {
		t.Fatal(err)
	}
	if len(fake.requests) != 2 || len(fake.requests[0].GetEvents()) != 10_000 || len(fake.events()) != 10_001 {
		t.Fatalf("got %d requests, %d events; want 10,000 events and 1", len(fake.requests), len(fake.events()))
	}
	if got := fake.events()[10_000].GetToken(); got != "tok10000" {
		t.Errorf("last event's token %q, want tok10000", got)
	}
}

// TestIngestErrors: a batch trackingsvc refuses as invalid is dropped (nil:
// the outbox deletes it); any other failure is retried (an error).
func TestIngestErrors(t *testing.T) {
	fake := &fakeTracking{}
	conn := grpctest.Start(t, func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, fake) })
	deliver := Ingest(trackingv1.NewTrackingServiceClient(conn), slog.New(slog.DiscardHandler))
	r := sentResult(1)
	rec, _ := appendEvent(nil, "acme", &r)
	fake.err = status.Error(codes.InvalidArgument, "bad batch")
	if err := deliver(context.Background(), "acme", [][]byte{rec}); err != nil {
		t.Errorf("refused batch: got %v, want nil (dropped)", err)
	}
	fake.err = status.Error(codes.Unavailable, "down")
	if err := deliver(context.Background(), "acme", [][]byte{rec}); status.Code(errors.Unwrap(err)) != codes.Unavailable {
		t.Errorf("unavailable: got %v, want an Unavailable error to retry", err)
	}
	if err := deliver(context.Background(), "acme", [][]byte{{0xff}}); err != nil || len(fake.requests) != 2 {
		t.Errorf("only unreadable records: got %v after %d requests, want nil and no request", err, len(fake.requests))
	}
}

// Events trackingsvc finds too far in the future say the clocks disagree:
// an error naming the cause, not a routine warning.
func TestIngestRejectionsFromClockSkew(t *testing.T) {
	fake := &fakeTracking{rejected: []*trackingv1.EventRejection{{Index: 0, Field: "event_time", Reason: "more than 5 minutes in the future"}}}
	conn := grpctest.Start(t, func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, fake) })
	var logs logtest.Buffer
	deliver := Ingest(trackingv1.NewTrackingServiceClient(conn), slog.New(slog.NewTextHandler(&logs, nil)))
	r := sentResult(1)
	rec, _ := appendEvent(nil, "acme", &r)
	if err := deliver(context.Background(), "acme", [][]byte{rec}); err != nil {
		t.Fatal(err)
	}
	if got := logs.String(); !strings.Contains(got, "level=ERROR") || !strings.Contains(got, "clock") {
		t.Errorf("log: %q, want an error naming the clocks", got)
	}
}

// TestFrameEvents: requests of at most perRequest events, each an
// IngestRequest of the readable records in order, none sharing spare
// capacity with the next; the traceparent is the first readable record's.
func TestFrameEvents(t *testing.T) {
	var records [][]byte
	for i := range 5 {
		r := sentResult(i)
		r.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e473" + strconv.Itoa(i) + "-00f067aa0ba902b7-01"
		rec, _ := appendEvent(nil, "acme", &r)
		records = append(records, rec)
	}
	records = append([][]byte{{0xff}}, records...) // unreadable, first
	requests, traceparent, dropped := frameEvents(records, 2, maxRequestBytes)
	if dropped != 1 || len(requests) != 3 {
		t.Fatalf("got %d requests, %d dropped; want 3 and 1", len(requests), dropped)
	}
	if want := "00-4bf92f3577b34da6a3ce929d0e0e4730-00f067aa0ba902b7-01"; traceparent != want {
		t.Errorf("traceparent %q, want %q", traceparent, want)
	}
	next := 1
	for i, r := range requests {
		if cap(r) != len(r) && i < len(requests)-1 {
			t.Errorf("request %d has spare capacity shared with the next", i)
		}
		var req trackingv1.IngestRequest
		if err := proto.Unmarshal(r, &req); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if want := min(2, 5-2*i); len(req.GetEvents()) != want {
			t.Errorf("request %d: %d events, want %d", i, len(req.GetEvents()), want)
		}
		for _, ev := range req.GetEvents() {
			b, err := proto.Marshal(ev)
			if err != nil || string(b) != string(records[next]) {
				t.Errorf("request %d: event %d is not record %d as recorded", i, next-1, next)
			}
			next++
		}
	}

	// A byte bound smaller than two events: one event per request, even
	// one bigger than the bound on its own.
	requests, _, _ = frameEvents(records[1:], 10, len(records[1])+4)
	if len(requests) != 5 {
		t.Errorf("with a byte bound of one event: got %d requests, want 5", len(requests))
	}
	requests, _, _ = frameEvents(records[1:], 10, 1)
	if len(requests) != 5 {
		t.Errorf("with a byte bound below one event: got %d requests, want 5", len(requests))
	}
}

func BenchmarkIngestEncoding(b *testing.B) {
	records := make([][]byte, 5000)
	for i := range records {
		r := sentResult(i)
		r.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		records[i], _ = appendEvent(nil, "acme", &r)
	}
	b.Run("checked and framed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			frameEvents(records, maxEventsPerRequest, maxRequestBytes)
		}
	})
	b.Run("decoded and encoded again", func(b *testing.B) {
		for b.Loop() {
			events := make([]*trackingv1.Event, 0, len(records))
			for _, rec := range records {
				ev := &trackingv1.Event{}
				if err := proto.Unmarshal(rec, ev); err == nil {
					events = append(events, ev)
				}
			}
			_, _ = proto.Marshal(&trackingv1.IngestRequest{Events: events})
		}
	})
}
