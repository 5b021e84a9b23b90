package grpcapi_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/events"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/grpcapi"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
)

var now = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

type env struct {
	client trackingv1.TrackingServiceClient
	api    *grpcapi.Server
	store  *store.Store
	// clock is the service's clock, now unless a test moves it.
	clock time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvMetered(t, nil)
}

// newEnvMetered is newEnv with the ingester's metrics recorded in m (nil:
// none).
func newEnvMetered(t *testing.T, m *events.Metrics) *env {
	t.Helper()
	db, err := boltdb.Open(t.TempDir(), "trackingsvc.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e := &env{clock: now}
	// Tests move the clock only between calls.
	clock := func() time.Time { return e.clock }
	st, err := store.Open(db, store.Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	e.api = &grpcapi.Server{
		Ingester: &events.Ingester{Store: st, Retention: 30 * 24 * time.Hour, Now: clock, Metrics: m},
		Store:    st,
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	conn := grpctest.Start(t, func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, e.api) })
	e.client = trackingv1.NewTrackingServiceClient(conn)
	return e
}

func ev(id string, typ trackingv1.EventType, at time.Time) *trackingv1.Event {
	return &trackingv1.Event{
		EventId: id, Type: typ, EventTime: timestamppb.New(at), ProfileId: "p-" + id,
		Token: "tok-" + id, AppId: "com.acme.shop", Platform: commonv1.Platform_PLATFORM_APNS,
		JourneyId: "j1", MessageId: "m1",
	}
}

func TestTrackPartialSuccessAndDedupe(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	action := ev("a", trackingv1.EventType_EVENT_TYPE_ACTION, now)
	action.ActionId = ""
	batch := []*trackingv1.Event{
		ev("1", trackingv1.EventType_EVENT_TYPE_SENT, now),
		{EventId: "", Type: trackingv1.EventType_EVENT_TYPE_OPENED, EventTime: timestamppb.New(now)},
		ev("2", trackingv1.EventType_EVENT_TYPE_UNSPECIFIED, now),
		ev("3", trackingv1.EventType(99), now),
		ev("4", trackingv1.EventType_EVENT_TYPE_OPENED, now.Add(time.Hour)),
		{EventId: "5", Type: trackingv1.EventType_EVENT_TYPE_OPENED},
		action,
		ev(strings.Repeat("x", 129), trackingv1.EventType_EVENT_TYPE_OPENED, now),
		ev("6", trackingv1.EventType_EVENT_TYPE_OPENED, now.Add(-40*24*time.Hour)),
		ev("7", trackingv1.EventType_EVENT_TYPE_OPENED, now),
		ev("7", trackingv1.EventType_EVENT_TYPE_OPENED, now), // repeated inside the batch
	}
	resp, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: batch})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetAccepted() != 2 || resp.GetDuplicates() != 1 {
		t.Errorf("got accepted %d duplicates %d, want 2 and 1", resp.GetAccepted(), resp.GetDuplicates())
	}
	want := map[int64]string{1: "event_id", 2: "type", 3: "type", 4: "event_time", 5: "event_time", 6: "action_id", 7: "event_id", 8: "event_time"}
	got := map[int64]string{}
	for _, r := range resp.GetRejected() {
		got[r.GetIndex()] = r.GetField()
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rejections: got %v, want %v", got, want)
	}

	// A retried batch counts nothing twice.
	again, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: batch})
	if err != nil {
		t.Fatal(err)
	}
	if again.GetAccepted() != 0 || again.GetDuplicates() != 3 {
		t.Errorf("retry: got accepted %d duplicates %d, want 0 and 3", again.GetAccepted(), again.GetDuplicates())
	}
	m, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: "j1"}})
	if err != nil {
		t.Fatal(err)
	}
	if m.GetTotal().GetSent() != 1 || m.GetTotal().GetOpened() != 1 || m.GetTotal().GetOpenRate() != 1 {
		t.Errorf("metrics: got %v, want sent 1 opened 1 open rate 1", m.GetTotal())
	}
}

func TestTokensStoredOnlyAsHash(t *testing.T) {
	e := newEnv(t)
	secret := "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6abcd"
	x := ev("1", trackingv1.EventType_EVENT_TYPE_RECEIVED, now)
	x.Token = secret
	if _, err := e.client.Track(context.Background(), &trackingv1.TrackRequest{Events: []*trackingv1.Event{x}}); err != nil {
		t.Fatal(err)
	}
	list, err := e.client.ListEvents(context.Background(), &trackingv1.ListEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := list.GetEvents()[0]
	if got.GetToken() != "" || got.GetTokenHash() != events.TokenHash(secret) {
		t.Errorf("got token %q hash %q, want no token and its hash", got.GetToken(), got.GetTokenHash())
	}
}

func TestBadRequestsNameTheField(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tests := []struct {
		name  string
		call  func() error
		field string
	}{
		{"empty track", func() error {
			_, err := e.client.Track(ctx, &trackingv1.TrackRequest{})
			return err
		}, "events"},
		{"bad page token", func() error {
			_, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{PageToken: "zz"})
			return err
		}, "page_token"},
		{"page size", func() error {
			_, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{PageSize: 10_001})
			return err
		}, "page_size"},
		{"unknown type", func() error {
			_, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{Types: []trackingv1.EventType{0}})
			return err
		}, "types[0]"},
		{"range backwards", func() error {
			_, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{StartTime: timestamppb.New(now), EndTime: timestamppb.New(now.Add(-time.Hour))})
			return err
		}, "end_time"},
		{"granularity", func() error {
			_, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Granularity: 42})
			return err
		}, "granularity"},
		{"platform", func() error {
			_, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{Platform: 9}})
			return err
		}, "filter.platform"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			var fields []string
			for _, d := range status.Convert(err).Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) != 1 || fields[0] != tt.field {
				t.Errorf("got fields %v, want [%s]", fields, tt.field)
			}
		})
	}
}

// randomEvents draws events of every type over a few journeys, apps,
// platforms and two hours (to the nanosecond: no two opens tie), with some
// ids repeated, in no particular time order.
func randomEvents(n int, seed uint64) []*trackingv1.Event {
	rng := rand.New(rand.NewPCG(seed, 1))
	return drawEvents(rng, n, func(int) string { return fmt.Sprintf("e%d", rng.IntN(n)) }, now.Add(-2*time.Hour), 2*time.Hour, 50)
}

// drawEvents draws n events of every type, event i with id id(i), at times
// in [start, start+span), over a few journeys, messages, apps and platforms
// and the given number of profiles.
func drawEvents(rng *rand.Rand, n int, id func(i int) string, start time.Time, span time.Duration, profiles int) []*trackingv1.Event {
	out := make([]*trackingv1.Event, n)
	for i := range out {
		e := &trackingv1.Event{
			EventId:   id(i),
			Type:      trackingv1.EventType(1 + rng.IntN(7)),
			EventTime: timestamppb.New(start.Add(time.Duration(rng.Int64N(int64(span))))),
			ProfileId: fmt.Sprintf("p%d", rng.IntN(profiles)),
			AppId:     []string{"com.a", "com.b"}[rng.IntN(2)],
			Platform:  commonv1.Platform(1 + rng.IntN(2)),
			JourneyId: []string{"j1", "j2"}[rng.IntN(2)],
			MessageId: []string{"m1", "m2"}[rng.IntN(2)],
		}
		switch e.Type {
		case trackingv1.EventType_EVENT_TYPE_ACTION:
			e.ActionId = []string{"buy", "later"}[rng.IntN(2)]
		case trackingv1.EventType_EVENT_TYPE_FAILED:
			e.FailureReason = commonv1.FailureReason(1 + rng.IntN(3))
		case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
			e.ExclusionReason = commonv1.ExclusionReason(1 + rng.IntN(3))
		}
		out[i] = e
	}
	return out
}

// firstOpens marks the earliest open, and the earliest action tap, by
// event time of each (journey, message, profile), whatever order they
// arrived in: the ones that count as a unique open and a unique action. It
// also counts the profiles whose earliest open or tap was not the first to
// arrive.
func firstOpens(stored []*trackingv1.Event) (first map[*trackingv1.Event]bool, lateFirsts int) {
	earliest := map[string]*trackingv1.Event{}
	arrived := map[string]*trackingv1.Event{}
	for _, e := range stored {
		if e.GetType() != trackingv1.EventType_EVENT_TYPE_OPENED && e.GetType() != trackingv1.EventType_EVENT_TYPE_ACTION {
			continue
		}
		k := e.GetType().String() + "\x00" + e.GetJourneyId() + "\x00" + e.GetMessageId() + "\x00" + e.GetProfileId()
		if arrived[k] == nil {
			arrived[k] = e
		}
		if cur := earliest[k]; cur == nil || e.GetEventTime().AsTime().Before(cur.GetEventTime().AsTime()) {
			earliest[k] = e
		}
	}
	first = map[*trackingv1.Event]bool{}
	for k, e := range earliest {
		first[e] = true
		if arrived[k] != e {
			lateFirsts++
		}
	}
	return first, lateFirsts
}

// recompute derives metrics from listed events, the slow way, without the
// store's code.
func recompute(evs []*trackingv1.Event, first map[*trackingv1.Event]bool) *trackingv1.Metrics {
	m := &trackingv1.Metrics{}
	failed := map[commonv1.FailureReason]int64{}
	excluded := map[commonv1.ExclusionReason]int64{}
	actions := map[string]int64{}
	for _, e := range evs {
		switch e.GetType() {
		case trackingv1.EventType_EVENT_TYPE_SENT:
			m.Sent++
		case trackingv1.EventType_EVENT_TYPE_FAILED:
			m.Failed++
			failed[e.GetFailureReason()]++
		case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
			m.Excluded++
			excluded[e.GetExclusionReason()]++
		case trackingv1.EventType_EVENT_TYPE_RECEIVED:
			m.Received++
		case trackingv1.EventType_EVENT_TYPE_OPENED:
			m.Opened++
			if first[e] {
				m.UniqueOpens++
			}
		case trackingv1.EventType_EVENT_TYPE_DISMISSED:
			m.Dismissed++
		case trackingv1.EventType_EVENT_TYPE_ACTION:
			m.Actions++
			actions[e.GetActionId()]++
			if first[e] {
				m.UniqueActions++
			}
		}
	}
	m.Targeted = m.Sent + m.Failed
	for r, n := range failed {
		m.FailedByReason = append(m.FailedByReason, &commonv1.FailureCount{Reason: r, Count: n})
	}
	for r, n := range excluded {
		m.ExcludedByReason = append(m.ExcludedByReason, &commonv1.ExclusionCount{Reason: r, Count: n})
	}
	for id, n := range actions {
		m.ActionsById = append(m.ActionsById, &trackingv1.ActionCount{ActionId: id, Count: n})
	}
	sort.Slice(m.FailedByReason, func(i, j int) bool { return m.FailedByReason[i].Reason < m.FailedByReason[j].Reason })
	sort.Slice(m.ExcludedByReason, func(i, j int) bool { return m.ExcludedByReason[i].Reason < m.ExcludedByReason[j].Reason })
	sort.Slice(m.ActionsById, func(i, j int) bool { return m.ActionsById[i].ActionId < m.ActionsById[j].ActionId })
	if m.Sent > 0 {
		m.OpenRate = float64(min(m.UniqueOpens, m.Sent)) / float64(m.Sent)
		m.ActionRate = float64(min(m.Actions, m.Sent)) / float64(m.Sent)
		m.UniqueActionRate = float64(min(m.UniqueActions, m.Sent)) / float64(m.Sent)
	}
	return m
}

func TestMetricsMatchEventsRecomputed(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	all := randomEvents(3000, 42)
	// Five streams, five transactions: opens of a profile arrive in
	// separate batches, in no time order.
	res := &trackingv1.IngestResponse{}
	for s := 0; s < len(all); s += 600 {
		stream, err := e.client.Ingest(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := s; i < s+600; i += 200 {
			if err := stream.Send(&trackingv1.IngestRequest{Events: all[i:min(i+200, len(all))]}); err != nil {
				t.Fatal(err)
			}
		}
		r, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		res.Accepted += r.GetAccepted()
		res.Duplicates += r.GetDuplicates()
	}
	if res.GetAccepted()+res.GetDuplicates() != int64(len(all)) || res.GetDuplicates() == 0 {
		t.Fatalf("ingest: got %v, want every event accepted or a duplicate, some duplicates", res)
	}

	var stored []*trackingv1.Event
	token := ""
	for {
		page, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{PageSize: 500, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, page.GetEvents()...)
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if int64(len(stored)) != res.GetAccepted() {
		t.Fatalf("listed %d events, want %d", len(stored), res.GetAccepted())
	}
	// What is recomputed from must itself hold each event once: an id
	// stored twice would be counted twice on both sides.
	ids := map[string]bool{}
	for _, x := range stored {
		if ids[x.GetEventId()] {
			t.Fatalf("event id %s listed twice", x.GetEventId())
		}
		ids[x.GetEventId()] = true
	}
	first, lateFirsts := firstOpens(stored)
	if lateFirsts == 0 {
		t.Fatal("no profile's earliest open arrived after another of its opens: the test data misses the case")
	}
	filters := []*trackingv1.MetricsFilter{
		{}, {JourneyId: "j1"}, {JourneyId: "j2", MessageId: "m1"}, {AppId: "com.b"},
		{Platform: commonv1.Platform_PLATFORM_FCM}, {JourneyId: "j1", Platform: commonv1.Platform_PLATFORM_APNS},
	}
	for _, f := range filters {
		var sel []*trackingv1.Event
		for _, ev := range stored {
			if (f.JourneyId == "" || ev.JourneyId == f.JourneyId) && (f.MessageId == "" || ev.MessageId == f.MessageId) &&
				(f.AppId == "" || ev.AppId == f.AppId) && (f.Platform == 0 || ev.Platform == f.Platform) {
				sel = append(sel, ev)
			}
		}
		got, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: f, Granularity: trackingv1.Granularity_GRANULARITY_HOUR})
		if err != nil {
			t.Fatal(err)
		}
		want := recompute(sel, first)
		if !proto.Equal(got.GetTotal(), want) {
			t.Errorf("filter %v:\n got %v\nwant %v", f, got.GetTotal(), want)
		}
		byHour := map[int64][]*trackingv1.Event{}
		for _, x := range sel {
			h := x.GetEventTime().AsTime().Truncate(time.Hour).Unix()
			byHour[h] = append(byHour[h], x)
		}
		if len(got.GetBuckets()) != len(byHour) {
			t.Errorf("filter %v: got %d hourly buckets, want %d", f, len(got.GetBuckets()), len(byHour))
		}
		for _, b := range got.GetBuckets() {
			if want := recompute(byHour[b.GetStartTime().GetSeconds()], first); !proto.Equal(b.GetMetrics(), want) {
				t.Errorf("filter %v, hour %v:\n got %v\nwant %v", f, b.GetStartTime().AsTime(), b.GetMetrics(), want)
			}
		}
	}
}

func TestTenantsAreIsolated(t *testing.T) {
	e := newEnv(t)
	acme := metadata.AppendToOutgoingContext(context.Background(), tenant.MetadataKey, "acme")
	if _, err := e.client.Track(acme, &trackingv1.TrackRequest{Events: []*trackingv1.Event{ev("1", trackingv1.EventType_EVENT_TYPE_SENT, now)}}); err != nil {
		t.Fatal(err)
	}
	// The same event id in another tenant is not a duplicate.
	resp, err := e.client.Track(context.Background(), &trackingv1.TrackRequest{Events: []*trackingv1.Event{ev("1", trackingv1.EventType_EVENT_TYPE_SENT, now)}})
	if err != nil || resp.GetAccepted() != 1 {
		t.Fatalf("default tenant: got %v, %v, want accepted 1", resp, err)
	}
	for _, ctx := range []context.Context{acme, context.Background()} {
		m, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{})
		if err != nil || m.GetTotal().GetSent() != 1 {
			t.Errorf("got %v, %v, want sent 1 per tenant", m.GetTotal(), err)
		}
	}
}

func TestRetentionRemovesEventsKeepsAggregates(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{
		ev("old", trackingv1.EventType_EVENT_TYPE_SENT, now.Add(-time.Hour)),
		ev("old2", trackingv1.EventType_EVENT_TYPE_OPENED, now.Add(-time.Hour)),
	}}); err != nil {
		t.Fatal(err)
	}
	// Received "now"; sweep as if 31 days had passed.
	e.clock = now.Add(31 * 24 * time.Hour)
	n, err := e.store.Sweep(ctx)
	if err != nil || n != 2 {
		t.Fatalf("sweep: got %d, %v, want 2 removed", n, err)
	}
	list, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{})
	if err != nil || len(list.GetEvents()) != 0 {
		t.Errorf("after sweep: got %d events, %v, want none", len(list.GetEvents()), err)
	}
	m, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{})
	if err != nil || m.GetTotal().GetSent() != 1 || m.GetTotal().GetOpened() != 1 {
		t.Errorf("aggregates after sweep: got %v, %v, want sent 1 opened 1", m.GetTotal(), err)
	}
}

// An event may arrive up to the retention after its event time (a device
// offline for two weeks); a retry of it after its first copy's id left the
// in-memory window is still a duplicate.
func TestLateRetryAfterTheDedupeWindowIsADuplicate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	orig := ev("late-1", trackingv1.EventType_EVENT_TYPE_SENT, now.Add(-14*24*time.Hour))
	if r, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{proto.Clone(orig).(*trackingv1.Event)}}); err != nil || r.GetAccepted() != 1 {
		t.Fatalf("first copy: got %v, %v, want accepted", r, err)
	}
	e.clock = now.Add(9 * 24 * time.Hour) // the event is 23 days old: within the retention
	if _, err := e.store.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{proto.Clone(orig).(*trackingv1.Event)}})
	if err != nil || r.GetAccepted() != 0 || r.GetDuplicates() != 1 {
		t.Errorf("retry after the window: got %v, %v, want a duplicate", r, err)
	}
	m, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{})
	if err != nil || m.GetTotal().GetSent() != 1 {
		t.Errorf("got %v, %v, want sent 1", m.GetTotal(), err)
	}
	l, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{})
	if err != nil || len(l.GetEvents()) != 1 {
		t.Errorf("listed %d events, %v, want 1", len(l.GetEvents()), err)
	}
	// Past the retention the event is refused, with its reason.
	e.clock = now.Add(17 * 24 * time.Hour)
	r, err = e.client.Track(ctx, &trackingv1.TrackRequest{Events: []*trackingv1.Event{proto.Clone(orig).(*trackingv1.Event)}})
	if err != nil || len(r.GetRejected()) != 1 || r.GetRejected()[0].GetField() != "event_time" {
		t.Errorf("after the retention: got %v, %v, want event_time rejected", r, err)
	}
}

func TestHTTPEndpoint(t *testing.T) {
	e := newEnv(t)
	srv := httptest.NewServer(e.api.HTTPHandler())
	defer srv.Close()
	body, _ := protojson.Marshal(&trackingv1.TrackRequest{Events: []*trackingv1.Event{
		ev("h1", trackingv1.EventType_EVENT_TYPE_OPENED, now), {EventId: "bad"},
	}})
	post := func(body []byte, tenantID string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if tenantID != "" {
			req.Header.Set(tenant.MetadataKey, tenantID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, b := post(body, "acme")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d %s, want 200", resp.StatusCode, b)
	}
	var tr trackingv1.TrackResponse
	if err := protojson.Unmarshal(b, &tr); err != nil || tr.GetAccepted() != 1 || len(tr.GetRejected()) != 1 {
		t.Errorf("got %s (%v), want 1 accepted and 1 rejected", b, err)
	}
	for _, tt := range []struct {
		name   string
		body   []byte
		tenant string
		want   int
	}{
		{"not json", []byte("{"), "", http.StatusBadRequest},
		{"not a TrackRequest", []byte(`{"events":"x"}`), "", http.StatusBadRequest},
		{"no events", []byte(`{"events":[]}`), "", http.StatusBadRequest},
		{"bad tenant", body, "Not/Valid", http.StatusBadRequest},
		{"too large", bytes.Repeat([]byte(" "), grpcapi.MaxHTTPBody+1), "", http.StatusRequestEntityTooLarge},
	} {
		resp, b := post(tt.body, tt.tenant)
		if resp.StatusCode != tt.want {
			t.Errorf("%s: got %d %s, want %d", tt.name, resp.StatusCode, b, tt.want)
		}
		var st spb.Status
		if err := protojson.Unmarshal(b, &st); err != nil || st.GetMessage() == "" || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: got body %s (%v), want a JSON google.rpc.Status", tt.name, b, err)
		}
	}
	// The error body names the field, as the gRPC status does.
	_, b = post([]byte(`{"events":[]}`), "")
	if !strings.Contains(string(b), `"field":"events"`) {
		t.Errorf("got %s, want a BadRequest detail naming events", b)
	}
	for _, tt := range []struct {
		name, method, path, contentType string
		want                            int
	}{
		{"GET", http.MethodGet, "/v1/events", "", http.StatusMethodNotAllowed},
		{"unknown path", http.MethodPost, "/v1/nope", "application/json", http.StatusNotFound},
		{"not json content", http.MethodPost, "/v1/events", "text/plain", http.StatusUnsupportedMediaType},
		{"json with charset", http.MethodPost, "/v1/events", "application/json; charset=utf-8", http.StatusOK},
	} {
		req, _ := http.NewRequest(tt.method, srv.URL+tt.path, bytes.NewReader(body))
		if tt.contentType != "" {
			req.Header.Set("Content-Type", tt.contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	m, err := e.client.GetMetrics(metadata.AppendToOutgoingContext(context.Background(), tenant.MetadataKey, "acme"), &trackingv1.GetMetricsRequest{})
	if err != nil || m.GetTotal().GetOpened() != 1 {
		t.Errorf("acme metrics: got %v, %v, want the HTTP event counted", m.GetTotal(), err)
	}
}

func TestListEventsFiltersAndOrder(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	batch := []*trackingv1.Event{}
	for i := range 10 {
		x := ev(fmt.Sprint(i), trackingv1.EventType_EVENT_TYPE_RECEIVED, now.Add(time.Duration(i)*time.Minute-time.Hour))
		if i%2 == 0 {
			x.Type = trackingv1.EventType_EVENT_TYPE_OPENED
		}
		batch = append(batch, x)
	}
	if _, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: batch}); err != nil {
		t.Fatal(err)
	}
	list, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{Types: []trackingv1.EventType{trackingv1.EventType_EVENT_TYPE_OPENED}, PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetEvents()) != 2 || list.GetNextPageToken() == "" {
		t.Fatalf("got %d events, token %q, want 2 and a next page", len(list.GetEvents()), list.GetNextPageToken())
	}
	var ids []string
	for _, x := range list.GetEvents() {
		ids = append(ids, x.GetEventId())
	}
	if !sort.StringsAreSorted(ids) {
		t.Errorf("got %v, want stored order", ids)
	}
}

func TestIngestReportsRejectionsByStreamIndex(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	stream, err := e.client.Ingest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Three messages; every 10th event has no id. Indexes count across
	// the whole stream; only the first 100 rejections are listed.
	total := 0
	for msg := range 3 {
		var evs []*trackingv1.Event
		for i := range 500 {
			x := ev(fmt.Sprintf("m%d-%d", msg, i), trackingv1.EventType_EVENT_TYPE_RECEIVED, now)
			if (total+i)%10 == 0 {
				x.EventId = ""
			}
			evs = append(evs, x)
		}
		total += len(evs)
		if err := stream.Send(&trackingv1.IngestRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if res.GetAccepted() != 1350 || res.GetRejectedCount() != 150 || len(res.GetRejected()) != 100 {
		t.Fatalf("got accepted %d, rejected %d (%d listed), want 1350, 150 (100 listed)", res.GetAccepted(), res.GetRejectedCount(), len(res.GetRejected()))
	}
	for i, r := range res.GetRejected() {
		if r.GetIndex() != int64(i*10) || r.GetField() != "event_id" {
			t.Fatalf("rejection %d: got index %d field %q, want index %d field event_id", i, r.GetIndex(), r.GetField(), i*10)
		}
	}
}

func TestIngestRefusesOversizedMessagesButKeepsEarlierBatches(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	stream, err := e.client.Ingest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 20,000 events fill one commit before the oversized message arrives.
	for m := range 2 {
		var evs []*trackingv1.Event
		for i := range 10_000 {
			evs = append(evs, &trackingv1.Event{
				EventId: fmt.Sprintf("%d-%d", m, i), Type: trackingv1.EventType_EVENT_TYPE_SENT,
				EventTime: timestamppb.New(now), ProfileId: "p",
			})
		}
		if err := stream.Send(&trackingv1.IngestRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	big := make([]*trackingv1.Event, 10_001)
	for i := range big {
		big[i] = &trackingv1.Event{}
	}
	_ = stream.Send(&trackingv1.IngestRequest{Events: big})
	_, err = stream.CloseAndRecv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "events") {
		t.Fatalf("got %v, want InvalidArgument about events", err)
	}
	m, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{})
	if err != nil || m.GetTotal().GetSent() != 20_000 {
		t.Errorf("got %v, %v, want the 20,000 events committed before the bad message", m.GetTotal(), err)
	}
	// Retrying the whole stream counts nothing twice.
	retry, err := e.client.Ingest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for m := range 2 {
		var evs []*trackingv1.Event
		for i := range 10_000 {
			evs = append(evs, &trackingv1.Event{
				EventId: fmt.Sprintf("%d-%d", m, i), Type: trackingv1.EventType_EVENT_TYPE_SENT,
				EventTime: timestamppb.New(now), ProfileId: "p",
			})
		}
		if err := retry.Send(&trackingv1.IngestRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := retry.CloseAndRecv()
	if err != nil || res.GetAccepted() != 0 || res.GetDuplicates() != 20_000 {
		t.Errorf("retry: got %v, %v, want 20,000 duplicates", res, err)
	}
}

func TestGetMetricsOverGRPC(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	at := now.Add(-3 * time.Hour).Truncate(time.Hour)
	mk := func(id string, typ trackingv1.EventType, t time.Time) *trackingv1.Event {
		x := ev(id, typ, t)
		switch typ {
		case trackingv1.EventType_EVENT_TYPE_FAILED:
			x.FailureReason = commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
		case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
			x.ExclusionReason = commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT
		case trackingv1.EventType_EVENT_TYPE_ACTION:
			x.ActionId = "buy"
		}
		return x
	}
	batch := []*trackingv1.Event{
		mk("s1", trackingv1.EventType_EVENT_TYPE_SENT, at),
		mk("s2", trackingv1.EventType_EVENT_TYPE_SENT, at.Add(time.Minute)),
		mk("s3", trackingv1.EventType_EVENT_TYPE_SENT, at.Add(2*time.Hour)),
		mk("s4", trackingv1.EventType_EVENT_TYPE_SENT, at.Add(2*time.Hour)),
		mk("f1", trackingv1.EventType_EVENT_TYPE_FAILED, at),
		mk("x1", trackingv1.EventType_EVENT_TYPE_EXCLUDED, at),
		mk("r1", trackingv1.EventType_EVENT_TYPE_RECEIVED, at.Add(time.Hour)),
		mk("o1", trackingv1.EventType_EVENT_TYPE_OPENED, at.Add(time.Hour)),
		mk("d1", trackingv1.EventType_EVENT_TYPE_DISMISSED, at.Add(time.Hour)),
		mk("a1", trackingv1.EventType_EVENT_TYPE_ACTION, at.Add(2*time.Hour)),
	}
	// The same profile opens twice: one unique open.
	again := mk("o2", trackingv1.EventType_EVENT_TYPE_OPENED, at.Add(2*time.Hour))
	again.ProfileId = batch[7].GetProfileId()
	batch = append(batch, again)
	if _, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: batch}); err != nil {
		t.Fatal(err)
	}
	got, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{
		Filter:      &trackingv1.MetricsFilter{JourneyId: "j1", MessageId: "m1", AppId: "com.acme.shop", Platform: commonv1.Platform_PLATFORM_APNS},
		Granularity: trackingv1.Granularity_GRANULARITY_HOUR,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &trackingv1.Metrics{
		Targeted: 5, Sent: 4, Failed: 1, Excluded: 1, Received: 1, Opened: 2, UniqueOpens: 1, Dismissed: 1, Actions: 1, UniqueActions: 1,
		FailedByReason:   []*commonv1.FailureCount{{Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, Count: 1}},
		ExcludedByReason: []*commonv1.ExclusionCount{{Reason: commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT, Count: 1}},
		ActionsById:      []*trackingv1.ActionCount{{ActionId: "buy", Count: 1}},
		OpenRate:         0.25, ActionRate: 0.25, UniqueActionRate: 0.25, // one unique open and one action of four sent
	}
	if !proto.Equal(got.GetTotal(), want) {
		t.Errorf("total:\n got %v\nwant %v", got.GetTotal(), want)
	}
	var starts []time.Time
	for _, b := range got.GetBuckets() {
		starts = append(starts, b.GetStartTime().AsTime())
	}
	if fmt.Sprint(starts) != fmt.Sprint([]time.Time{at, at.Add(time.Hour), at.Add(2 * time.Hour)}) {
		t.Errorf("got bucket starts %v, want the three hours from %v", starts, at)
	}
	if b := got.GetBuckets()[0].GetMetrics(); b.GetSent() != 2 || b.GetFailed() != 1 || b.GetTargeted() != 3 {
		t.Errorf("first hour: got %v, want sent 2 failed 1 targeted 3", b)
	}

	// A range selects whole minutes of event time; another app sees none.
	got, err = e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{
		Filter:    &trackingv1.MetricsFilter{JourneyId: "j1"},
		StartTime: timestamppb.New(at.Add(time.Hour)), EndTime: timestamppb.New(at.Add(2 * time.Hour)),
	})
	if err != nil || got.GetTotal().GetOpened() != 1 || got.GetTotal().GetSent() != 0 || len(got.GetBuckets()) != 0 {
		t.Errorf("second hour, totals only: got %v, %v, want 1 open, no sends, no buckets", got, err)
	}
	got, err = e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{AppId: "com.other"}})
	if err != nil || !proto.Equal(got.GetTotal(), &trackingv1.Metrics{}) {
		t.Errorf("other app: got %v, %v, want zero metrics", got.GetTotal(), err)
	}
}

// A response holds at most store.MaxBuckets buckets: a query whose answer
// would hold more is refused, naming the range, without being built.
func TestGetMetricsRefusesTooManyBuckets(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// One event a minute for store.MaxBuckets+1 minutes (about a week).
	n := store.MaxBuckets + 1
	for start := 0; start < n; start += 1000 {
		var batch []*trackingv1.Event
		for m := start; m < min(start+1000, n); m++ {
			batch = append(batch, ev(fmt.Sprint("m", m), trackingv1.EventType_EVENT_TYPE_SENT, now.Add(-time.Duration(m)*time.Minute)))
		}
		if _, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: batch}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Granularity: trackingv1.Granularity_GRANULARITY_MINUTE})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("minutes of all time: got %v, want InvalidArgument", err)
	}
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if fmt.Sprint(fields) != "[start_time]" {
		t.Errorf("got fields %v, want [start_time]", fields)
	}
	for _, tt := range []struct {
		name    string
		req     *trackingv1.GetMetricsRequest
		buckets int
	}{
		{"the last 6 hours by minute", &trackingv1.GetMetricsRequest{StartTime: timestamppb.New(now.Add(-6 * time.Hour)), Granularity: trackingv1.Granularity_GRANULARITY_MINUTE}, 361},
		{"exactly the cap by minute", &trackingv1.GetMetricsRequest{StartTime: timestamppb.New(now.Add(-time.Duration(store.MaxBuckets-1) * time.Minute)), Granularity: trackingv1.Granularity_GRANULARITY_MINUTE}, store.MaxBuckets},
		{"all time by hour", &trackingv1.GetMetricsRequest{Granularity: trackingv1.Granularity_GRANULARITY_HOUR}, 168},
		{"totals", &trackingv1.GetMetricsRequest{}, 0},
	} {
		got, err := e.client.GetMetrics(ctx, tt.req)
		if err != nil || len(got.GetBuckets()) != tt.buckets {
			t.Errorf("%s: got %d buckets, %v, want %d", tt.name, len(got.GetBuckets()), err, tt.buckets)
		}
		if tt.buckets == 0 && got.GetTotal().GetSent() != int64(n) {
			t.Errorf("%s: got sent %d, want %d", tt.name, got.GetTotal().GetSent(), n)
		}
	}
}

// A profile's unique open is counted in the bucket (and app) of its
// earliest open by event time, even when that open arrives last; the open
// rate is unique opens / sent and never exceeds 1.
func TestUniqueOpenIsTheEarliestOpenAndRatesStayAtMostOne(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	at := now.Add(-3 * time.Hour).Truncate(time.Hour)
	open := func(id, profile, app string, t time.Time) *trackingv1.Event {
		o := ev(id, trackingv1.EventType_EVENT_TYPE_OPENED, t)
		o.ProfileId, o.AppId = profile, app
		return o
	}
	track := func(evs ...*trackingv1.Event) {
		t.Helper()
		if _, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	// P opens at 11:00 in app b; then opens that happened earlier arrive:
	// 10:00 in app a (twice), then 10:30.
	track(ev("s", trackingv1.EventType_EVENT_TYPE_SENT, at), open("o1", "P", "com.b", at.Add(2*time.Hour)))
	track(open("o2", "P", "com.a", at.Add(time.Hour+time.Minute)), open("o3", "P", "com.a", at.Add(time.Hour)))
	track(open("o4", "P", "com.b", at.Add(90*time.Minute)))

	m, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: "j1"}, Granularity: trackingv1.Granularity_GRANULARITY_HOUR})
	if err != nil {
		t.Fatal(err)
	}
	if tot := m.GetTotal(); tot.GetOpened() != 4 || tot.GetUniqueOpens() != 1 || tot.GetOpenRate() != 1 {
		t.Errorf("total: got opened %d unique %d open rate %v, want 4, 1, 1", tot.GetOpened(), tot.GetUniqueOpens(), tot.GetOpenRate())
	}
	type row struct{ sent, opened, unique int64 }
	got := map[time.Time]row{}
	for _, b := range m.GetBuckets() {
		got[b.GetStartTime().AsTime()] = row{b.GetMetrics().GetSent(), b.GetMetrics().GetOpened(), b.GetMetrics().GetUniqueOpens()}
	}
	want := map[time.Time]row{at: {1, 0, 0}, at.Add(time.Hour): {0, 3, 1}, at.Add(2 * time.Hour): {0, 1, 0}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("hourly (sent, opened, unique):\n got %v\nwant %v", got, want)
	}
	for app, unique := range map[string]int64{"com.a": 1, "com.b": 0} {
		m, err := e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{AppId: app}})
		if err != nil || m.GetTotal().GetUniqueOpens() != unique {
			t.Errorf("app %s: got %v, %v, want %d unique opens", app, m.GetTotal(), err, unique)
		}
	}

	// Three profiles open and tap twice each what one send reached in this
	// minute (the others were sent before the range): the rates stop at 1.
	minute := at.Add(2*time.Hour + 30*time.Minute)
	batch := []*trackingv1.Event{ev("s2", trackingv1.EventType_EVENT_TYPE_SENT, minute)}
	for i := range 3 {
		batch = append(batch, open(fmt.Sprint("q", i), fmt.Sprint("Q", i), "com.a", minute))
		for j := range 2 {
			a := ev(fmt.Sprint("a", i, j), trackingv1.EventType_EVENT_TYPE_ACTION, minute)
			a.ActionId = "buy"
			batch = append(batch, a)
		}
	}
	track(batch...)
	m, err = e.client.GetMetrics(ctx, &trackingv1.GetMetricsRequest{StartTime: timestamppb.New(minute), EndTime: timestamppb.New(minute.Add(time.Minute))})
	if tot := m.GetTotal(); err != nil || tot.GetSent() != 1 || tot.GetUniqueOpens() != 3 || tot.GetActions() != 6 || tot.GetOpenRate() != 1 || tot.GetActionRate() != 1 {
		t.Errorf("one minute: got %v, %v, want sent 1, unique 3, actions 6, both rates 1", tot, err)
	}
}

func TestListEventsTimeRangeAndFilter(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var batch []*trackingv1.Event
	for i := range 6 {
		x := ev(fmt.Sprint(i), trackingv1.EventType_EVENT_TYPE_RECEIVED, now.Add(time.Duration(i-6)*time.Hour))
		if i%2 == 1 {
			x.AppId = "com.other"
		}
		batch = append(batch, x)
	}
	if _, err := e.client.Track(ctx, &trackingv1.TrackRequest{Events: batch}); err != nil {
		t.Fatal(err)
	}
	list, err := e.client.ListEvents(ctx, &trackingv1.ListEventsRequest{
		Filter:    &trackingv1.MetricsFilter{AppId: "com.acme.shop"},
		StartTime: timestamppb.New(now.Add(-5 * time.Hour)), EndTime: timestamppb.New(now.Add(-time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, x := range list.GetEvents() {
		ids = append(ids, x.GetEventId())
		if x.GetReceiveTime().AsTime() != now {
			t.Errorf("event %s: got receive time %v, want %v", x.GetEventId(), x.GetReceiveTime().AsTime(), now)
		}
	}
	if fmt.Sprint(ids) != "[2 4]" {
		t.Errorf("got %v, want [2 4] (com.acme.shop, from 5 hours ago, before 1 hour ago)", ids)
	}
}
