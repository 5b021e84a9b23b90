package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/demo"
	"github.com/pushmesh/pushmesh/pushctl/internal/mesh"
)

// spans records every span of the process: the services run in it.
var spans = tracetest.NewInMemoryExporter()

func TestMain(m *testing.M) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	m.Run()
}

// startMesh runs pushmesh with the demo apps registered.
func startMesh(t *testing.T) *mesh.Mesh {
	t.Helper()
	ctx := context.Background()
	opts := mesh.Options{DataDir: t.TempDir()}
	if os.Getenv("PUSHMESH_E2E_LOG") != "" { // service logs on stderr, for debugging
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	m, err := mesh.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close mesh: %v", err)
		}
	})
	reqs, err := demo.AppRequests(m.APNs, m.FCM)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if _, err := m.Apps.RegisterApp(ctx, r); err != nil {
			t.Fatalf("register %v: %v", r.GetKey(), err)
		}
	}
	return m
}

var tokenSeq int

// apnsToken and fcmToken make distinct valid tokens.
func apnsToken(t *testing.T) string {
	tokenSeq++
	return hex.EncodeToString([]byte(fmt.Sprintf("%s-apns-%06d-token-padding", t.Name(), tokenSeq)))
}

func fcmToken(t *testing.T) string {
	tokenSeq++
	return fmt.Sprintf("fcm-%d:%s", tokenSeq, strings.Repeat("x", 100))
}

func register(t *testing.T, m *mesh.Mesh, customer, token string, platform commonv1.Platform, app string, at time.Time) {
	t.Helper()
	_, err := m.Profiles.RegisterPushToken(context.Background(), &profilev1.RegisterPushTokenRequest{
		Profile: &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: customer}}},
		Token:   token, Platform: platform, AppId: app, SourceTime: timestamppb.New(at),
		DeviceId: fmt.Sprintf("%x", sha256.Sum256([]byte(token)))[:16], Source: "e2e",
	})
	if err != nil {
		t.Fatalf("register token for %s: %v", customer, err)
	}
}

func setAttributes(t *testing.T, m *mesh.Mesh, customer string, attrs map[string]any) string {
	t.Helper()
	st, err := structpb.NewStruct(attrs)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := m.Profiles.UpsertProfile(context.Background(), &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: customer}},
		Attributes: st,
	})
	if err != nil {
		t.Fatalf("upsert %s: %v", customer, err)
	}
	return resp.GetProfile().GetProfileId()
}

// runJourney publishes a journey to the demo apps and waits for its end.
func runJourney(t *testing.T, m *mesh.Mesh, condition, title string) *deliveryv1.Journey {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name:     t.Name(),
		AppIds:   []string{demo.ShopApp, demo.WalletApp},
		Audience: &deliveryv1.Audience{Condition: condition},
		Template: &deliveryv1.MessageTemplate{Title: title, Body: "See what's new"},
	}})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	stream, err := m.Journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: pub.GetJourney().GetJourneyId()})
	if err != nil {
		t.Fatal(err)
	}
	var last *deliveryv1.Journey
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		last = resp.GetJourney()
	}
	if last.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("journey ended %v (%s), want COMPLETED", last.GetState(), last.GetError())
	}
	return last
}

func failed(p *deliveryv1.JourneyProgress, reason commonv1.FailureReason) int64 {
	for _, f := range p.GetFailed() {
		if f.GetReason() == reason {
			return f.GetCount()
		}
	}
	return 0
}

func TestOneProfileThreeDevicesReachedOnAll(t *testing.T) {
	m := startMesh(t)
	now := time.Now().Add(-time.Minute)
	shop, wallet, android := apnsToken(t), apnsToken(t), fcmToken(t)
	setAttributes(t, m, "C-1", map[string]any{"firstName": "Ada", "tier": "gold"})
	register(t, m, "C-1", shop, commonv1.Platform_PLATFORM_APNS, demo.ShopApp, now)
	register(t, m, "C-1", wallet, commonv1.Platform_PLATFORM_APNS, demo.WalletApp, now)
	register(t, m, "C-1", android, commonv1.Platform_PLATFORM_FCM, demo.ShopApp, now)

	j := runJourney(t, m, `attributes.tier == "gold"`, "Hi {{firstName}}")
	if got := j.GetProgress().GetSent(); got != 3 {
		t.Errorf("sent: got %d, want 3", got)
	}
	for _, tok := range []string{shop, wallet} {
		got := m.APNs.ReceivedFor(tok)
		if len(got) != 1 || !strings.Contains(string(got[0].Payload), "Hi Ada") {
			t.Errorf("APNs token %s…: got %d deliveries %v, want one saying Hi Ada", tok[:8], len(got), got)
		}
	}
	if got := m.FCM.ReceivedFor(android); len(got) != 1 || !strings.Contains(string(got[0].Message), "Hi Ada") {
		t.Errorf("FCM token: got %d deliveries, want one saying Hi Ada", len(got))
	}
}

func TestSharedDeviceLoginMovesTokenToNewOwner(t *testing.T) {
	m := startMesh(t)
	shared := apnsToken(t)
	setAttributes(t, m, "alice", map[string]any{"firstName": "Alice", "tier": "gold"})
	setAttributes(t, m, "bob", map[string]any{"firstName": "Bob", "tier": "gold"})
	t0 := time.Now().Add(-time.Hour)
	register(t, m, "alice", shared, commonv1.Platform_PLATFORM_APNS, demo.ShopApp, t0)
	register(t, m, "bob", shared, commonv1.Platform_PLATFORM_APNS, demo.ShopApp, t0.Add(time.Minute))    // Bob logs in later
	register(t, m, "alice", shared, commonv1.Platform_PLATFORM_APNS, demo.ShopApp, t0.Add(-time.Minute)) // a stale replay never wins

	j := runJourney(t, m, `attributes.tier == "gold"`, "Hi {{firstName}}")
	got := m.APNs.ReceivedFor(shared)
	if len(got) != 1 {
		t.Fatalf("shared device: got %d deliveries, want 1", len(got))
	}
	if p := string(got[0].Payload); !strings.Contains(p, "Hi Bob") || strings.Contains(p, "Alice") {
		t.Errorf("shared device got %s, want Bob's notification only", p)
	}
	if ex := j.GetProgress().GetExcluded(); len(ex) != 1 || ex[0].GetReason() != commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN {
		t.Errorf("exclusions: got %v, want Alice excluded for having no active token", ex)
	}
}

func TestDeadTokenDeactivatedThenSkipped(t *testing.T) {
	m := startMesh(t)
	live, dead := apnsToken(t), apnsToken(t)
	setAttributes(t, m, "C-2", map[string]any{"tier": "gold"})
	registered := time.Now().Add(-time.Hour)
	register(t, m, "C-2", live, commonv1.Platform_PLATFORM_APNS, demo.ShopApp, registered)
	register(t, m, "C-2", dead, commonv1.Platform_PLATFORM_APNS, demo.WalletApp, registered)
	m.APNs.MarkUnregistered(dead, time.Now().Add(-time.Minute)) // uninstalled after registering

	first := runJourney(t, m, `attributes.tier == "gold"`, "first")
	if got := failed(first.GetProgress(), commonv1.FailureReason_FAILURE_REASON_UNREGISTERED); got != 1 {
		t.Errorf("first journey: got %d unregistered failures, want 1", got)
	}
	// Dead-token feedback reaches profilesvc asynchronously; wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := m.Profiles.ListPushTokens(context.Background(), &profilev1.ListPushTokensRequest{
			Profile:         &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: "C-2"}}},
			IncludeInactive: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		var state profilev1.TokenState
		for _, tok := range resp.GetTokens() {
			if tok.GetToken() == dead {
				state = tok.GetState()
			}
		}
		if state == profilev1.TokenState_TOKEN_STATE_INACTIVE {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead token state: got %v, want INACTIVE", state)
		}
		time.Sleep(50 * time.Millisecond)
	}

	second := runJourney(t, m, `attributes.tier == "gold"`, "second")
	if got := len(m.APNs.ReceivedFor(dead)); got != 1 {
		t.Errorf("dead token: got %d attempts over two journeys, want 1 (skipped in the second)", got)
	}
	if got := len(m.APNs.ReceivedFor(live)); got != 2 {
		t.Errorf("live token: got %d deliveries, want 2", got)
	}
	if got := second.GetProgress().GetSent(); got != 1 {
		t.Errorf("second journey sent: got %d, want 1", got)
	}
}

func TestImportJourneyEventsMetrics(t *testing.T) {
	m := startMesh(t)
	ctx := context.Background()
	pop := demo.NewPopulation(200, 7, time.Now().Add(-time.Hour))
	stream, err := m.Profiles.ImportTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&profilev1.ImportTokensRequest{Rows: pop.Rows}); err != nil {
		t.Fatal(err)
	}
	res, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if res.GetRejected() != 0 || res.GetProfilesCreated() != 200 {
		t.Fatalf("import: got %+v, want 200 profiles and nothing rejected", res)
	}

	j := runJourney(t, m, "", "Hello")
	sent := j.GetProgress().GetSent()
	if want := int64(len(pop.Rows)); sent != want {
		t.Fatalf("sent: got %d, want every imported token (%d)", sent, want)
	}

	// The apps report what their users did, echoing the ids from the payload.
	var events []*trackingv1.Event
	for i, row := range pop.Rows[:30] {
		typ := trackingv1.EventType_EVENT_TYPE_RECEIVED
		if i%3 == 0 {
			typ = trackingv1.EventType_EVENT_TYPE_OPENED
		}
		events = append(events, &trackingv1.Event{
			EventId: fmt.Sprintf("evt-%d", i), Type: typ, EventTime: timestamppb.Now(),
			Token: row.GetToken(), AppId: row.GetAppId(), Platform: row.GetPlatform(),
			JourneyId: j.GetJourneyId(), MessageId: j.GetMessageId(),
		})
	}
	if _, err := m.Tracking.Track(ctx, &trackingv1.TrackRequest{Events: events}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Tracking.Track(ctx, &trackingv1.TrackRequest{Events: events}); err != nil { // a retried batch
		t.Fatal(err)
	}

	// Send outcomes reach trackingsvc through deliverysvc's outbox: wait.
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := m.Tracking.GetMetrics(ctx, &trackingv1.GetMetricsRequest{Filter: &trackingv1.MetricsFilter{JourneyId: j.GetJourneyId()}})
		if err != nil {
			t.Fatal(err)
		}
		tot := got.GetTotal()
		if tot.GetSent() == sent {
			if tot.GetOpened() != 10 || tot.GetReceived() != 20 {
				t.Errorf("metrics: got opened %d received %d, want 10 and 20", tot.GetOpened(), tot.GetReceived())
			}
			if want := float64(10) / float64(sent); tot.GetOpenRate() < want-1e-9 || tot.GetOpenRate() > want+1e-9 {
				t.Errorf("open rate: got %v, want %v", tot.GetOpenRate(), want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics sent: got %d, want %d", tot.GetSent(), sent)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestOneTraceSpansAllThreeServices(t *testing.T) {
	m := startMesh(t)
	setAttributes(t, m, "C-3", map[string]any{"tier": "gold"})
	register(t, m, "C-3", apnsToken(t), commonv1.Platform_PLATFORM_APNS, demo.ShopApp, time.Now().Add(-time.Minute))
	spans.Reset()
	runJourney(t, m, `attributes.tier == "gold"`, "traced")

	// Outcomes reach trackingsvc asynchronously: wait for its server span.
	deadline := time.Now().Add(15 * time.Second)
	for {
		services := map[string]map[string]bool{} // trace id → rpc services with a server span
		for _, s := range spans.GetSpans() {
			if s.SpanKind.String() != "server" {
				continue
			}
			for _, a := range s.Attributes {
				if a.Key == "rpc.method" { // "pushmesh.profile.v1.ProfileService/QueryAudience"
					svc, _, _ := strings.Cut(a.Value.AsString(), "/")
					tid := s.SpanContext.TraceID().String()
					if services[tid] == nil {
						services[tid] = map[string]bool{}
					}
					services[tid][svc] = true
				}
			}
		}
		for _, svcs := range services {
			if svcs["pushmesh.profile.v1.ProfileService"] && svcs["pushmesh.delivery.v1.JourneyService"] && svcs["pushmesh.tracking.v1.TrackingService"] {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no trace holds server spans of profilesvc, deliverysvc and trackingsvc; traces: %v", services)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
