package journeytest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

func TestMain(m *testing.M) {
	RunChildIfAsked() // the child deliverysvc of TestKill9MidJourney
	os.Exit(m.Run())
}

// start runs the mesh with deliverysvc in-process and the apps registered.
func start(t *testing.T, opts Options) *Mesh {
	t.Helper()
	if os.Getenv("JOURNEYTEST_LOG") != "" {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	m := Start(t, opts)
	if err := m.StartDelivery(); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterApps(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Registration checks the credentials with a push each: forget them.
	m.APNs.Reset()
	m.FCM.Reset()
	return m
}

// must(f()).get(t) is f's value, or a fatal error.
func must[T any](v T, err error) result[T] { return result[T]{v, err} }

type result[T any] struct {
	v   T
	err error
}

func (r result[T]) get(t *testing.T) T {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.v
}

// watch follows a journey with WatchJourney until the stream ends and
// returns every update.
func watch(t *testing.T, m *Mesh, id string) []*deliveryv1.Journey {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := m.Journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: id, Interval: durationpb.New(50 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	var updates []*deliveryv1.Journey
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return updates
		}
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		updates = append(updates, resp.GetJourney())
	}
}

func publish(t *testing.T, m *Mesh, j *deliveryv1.Journey) *deliveryv1.Journey {
	t.Helper()
	resp, err := m.Journeys.PublishJourney(context.Background(), &deliveryv1.PublishJourneyRequest{Journey: j})
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return resp.GetJourney()
}

// run publishes j and watches it to its end, which must be COMPLETED.
func run(t *testing.T, m *Mesh, j *deliveryv1.Journey) *deliveryv1.Journey {
	t.Helper()
	updates := watch(t, m, publish(t, m, j).GetJourneyId())
	last := updates[len(updates)-1]
	if last.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("journey ended %v (%s), want COMPLETED", last.GetState(), last.GetError())
	}
	return last
}

func excluded(p *deliveryv1.JourneyProgress, reason commonv1.ExclusionReason) int64 {
	for _, e := range p.GetExcluded() {
		if e.GetReason() == reason {
			return e.GetCount()
		}
	}
	return 0
}

// A profile with three devices — two iOS apps and an Android app — is
// reached on all three, through the real apns2 and firebase clients.
func TestProfileWithThreeDevicesIsReachedOnAll(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	must(m.Customer(ctx, "C-1", map[string]any{"firstName": "Ada", "tier": "gold"})).get(t)
	devices := []struct {
		token    string
		platform commonv1.Platform
		app      string
	}{
		{APNsToken(1), commonv1.Platform_PLATFORM_APNS, ShopApp},
		{APNsToken(2), commonv1.Platform_PLATFORM_APNS, WalletApp},
		{FCMToken(3), commonv1.Platform_PLATFORM_FCM, ShopApp},
	}
	for _, d := range devices {
		if err := m.Device(ctx, "C-1", d.token, d.platform, d.app); err != nil {
			t.Fatal(err)
		}
	}
	j := run(t, m, &deliveryv1.Journey{
		Name: "three devices", AppIds: []string{ShopApp, WalletApp},
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{Title: `Hi {{firstName | default "there"}}`, Body: "Your {{tier}} offer", DeepLink: "acme://c/{{identity.customer_id}}"},
	})
	if p := j.GetProgress(); p.GetSent() != 3 || p.GetQualified() != 1 || p.GetTokensTargeted() != 3 {
		t.Errorf("progress: got %v, want 1 qualified, 3 targeted, 3 sent", p)
	}
	for _, d := range devices[:2] {
		got := m.APNs.ReceivedFor(d.token)
		if len(got) != 1 {
			t.Fatalf("APNs %s device: got %d pushes, want 1", d.app, len(got))
		}
		if got[0].Topic != d.app || got[0].CollapseID != j.GetMessageId() || !strings.Contains(string(got[0].Payload), `"title":"Hi Ada"`) ||
			!strings.Contains(string(got[0].Payload), `"deep_link":"acme://c/C-1"`) {
			t.Errorf("APNs %s push: topic %q collapse %q payload %s", d.app, got[0].Topic, got[0].CollapseID, got[0].Payload)
		}
	}
	got := m.FCM.ReceivedFor(FCMToken(3))
	if len(got) != 1 {
		t.Fatalf("Android device: got %d messages, want 1", len(got))
	}
	if key, tag := FCMCollapse(got[0]); key != j.GetMessageId() || tag != j.GetMessageId() || !strings.Contains(string(got[0].Message), `"title":"Hi Ada"`) {
		t.Errorf("FCM message: %s, want the title, and the collapse key and tag %q", got[0].Message, j.GetMessageId())
	}
}

// A profile that stops meeting the condition is not reached by the next
// journey; render errors and missing consent are excluded with reasons and
// reported to trackingsvc.
func TestConditionConsentAndRenderExclusions(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	tokens := map[string]string{}
	for i, c := range []struct {
		customer string
		attrs    map[string]any
	}{
		{"named", map[string]any{"tier": "gold", "firstName": "Ada"}},
		{"nameless", map[string]any{"tier": "gold"}},
		{"optout", map[string]any{"tier": "gold", "firstName": "Bo"}},
		{"silver", map[string]any{"tier": "silver", "firstName": "Cy"}},
	} {
		must(m.Customer(ctx, c.customer, c.attrs)).get(t)
		tokens[c.customer] = APNsToken(100 + i)
		if err := m.Device(ctx, c.customer, tokens[c.customer], commonv1.Platform_PLATFORM_APNS, ShopApp); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Profiles.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "optout"}},
		Consent:    &profilev1.PushConsent{State: profilev1.ConsentState_CONSENT_STATE_OPTED_OUT, UpdateTime: timestamppb.Now()},
	}); err != nil {
		t.Fatal(err)
	}
	gold := func(name string) *deliveryv1.Journey {
		return &deliveryv1.Journey{Name: name, AppIds: []string{ShopApp},
			Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
			Template: &deliveryv1.MessageTemplate{Title: "Hi {{firstName | required}}"}}
	}
	j := run(t, m, gold("first"))
	p := j.GetProgress()
	if p.GetQualified() != 3 || p.GetSent() != 1 ||
		excluded(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR) != 1 || excluded(p, commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT) != 1 {
		t.Errorf("progress: got %v, want 3 qualified, 1 sent, 1 render error, 1 without consent", p)
	}
	for customer, want := range map[string]int{"named": 1, "nameless": 0, "optout": 0, "silver": 0} {
		if got := len(m.APNs.ReceivedFor(tokens[customer])); got != want {
			t.Errorf("%s: got %d pushes, want %d", customer, got, want)
		}
	}
	// trackingsvc hears of both exclusions, by reason, for this journey.
	waitFor(t, "exclusion events", func() bool {
		n := 0
		for _, e := range m.Events.All() {
			if e.GetType() == trackingv1.EventType_EVENT_TYPE_EXCLUDED && e.GetJourneyId() == j.GetJourneyId() &&
				(e.GetExclusionReason() == commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR || e.GetExclusionReason() == commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT) {
				n++
			}
		}
		return n == 2
	})

	// "named" leaves the audience: the next journey does not reach it.
	must(m.Customer(ctx, "named", map[string]any{"tier": "silver"})).get(t)
	j2 := run(t, m, gold("second"))
	if got := len(m.APNs.ReceivedFor(tokens["named"])); got != 1 {
		t.Errorf("named after leaving the audience: got %d pushes in all, want 1 (the first journey's)", got)
	}
	if j2.GetProgress().GetQualified() != 2 || j2.GetProgress().GetSent() != 0 {
		t.Errorf("second journey: got %v, want 2 qualified and nothing sent", j2.GetProgress())
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fieldsOf lists the BadRequest fields of a status error.
func fieldsOf(err error) []string {
	var out []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, fv := range br.GetFieldViolations() {
				out = append(out, fv.GetField())
			}
		}
	}
	return out
}

// Every bad input answers the right code with a field violation naming the
// field, over real gRPC, with profilesvc judging the condition.
func TestBadInputPerField(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	must(m.Customer(ctx, "C-1", map[string]any{"firstName": "Ada"})).get(t)
	if err := m.Device(ctx, "C-1", APNsToken(1), commonv1.Platform_PLATFORM_APNS, ShopApp); err != nil {
		t.Fatal(err)
	}
	good := func(edit func(j *deliveryv1.Journey)) *deliveryv1.PublishJourneyRequest {
		j := &deliveryv1.Journey{Name: "ok", AppIds: []string{ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "Hi"}}
		edit(j)
		return &deliveryv1.PublishJourneyRequest{Journey: j}
	}
	tests := []struct {
		name  string
		req   *deliveryv1.PublishJourneyRequest
		code  codes.Code
		field string
	}{
		{"no journey", &deliveryv1.PublishJourneyRequest{}, codes.InvalidArgument, "journey"},
		{"no name", good(func(j *deliveryv1.Journey) { j.Name = " " }), codes.InvalidArgument, "journey.name"},
		{"no apps", good(func(j *deliveryv1.Journey) { j.AppIds = nil }), codes.InvalidArgument, "journey.app_ids"},
		{"empty app", good(func(j *deliveryv1.Journey) { j.AppIds = []string{ShopApp, ""} }), codes.InvalidArgument, "journey.app_ids[1]"},
		{"repeated app", good(func(j *deliveryv1.Journey) { j.AppIds = []string{ShopApp, ShopApp} }), codes.InvalidArgument, "journey.app_ids[1]"},
		{"bad platform", good(func(j *deliveryv1.Journey) {
			j.Audience = &deliveryv1.Audience{Platforms: []commonv1.Platform{commonv1.Platform_PLATFORM_UNSPECIFIED}}
		}), codes.InvalidArgument, "journey.audience.platforms[0]"},
		{"condition does not compile", good(func(j *deliveryv1.Journey) { j.Audience = &deliveryv1.Audience{Condition: "attributes.tier =="} }),
			codes.InvalidArgument, "journey.audience.condition"},
		{"condition is not a bool", good(func(j *deliveryv1.Journey) { j.Audience = &deliveryv1.Audience{Condition: `"gold"`} }),
			codes.InvalidArgument, "journey.audience.condition"},
		{"no template", good(func(j *deliveryv1.Journey) { j.Template = nil }), codes.InvalidArgument, "journey.template"},
		{"empty template", good(func(j *deliveryv1.Journey) { j.Template = &deliveryv1.MessageTemplate{Sound: "x"} }), codes.InvalidArgument, "journey.template"},
		{"title does not parse", good(func(j *deliveryv1.Journey) { j.Template.Title = "Hi {{firstName" }), codes.InvalidArgument, "journey.template.title"},
		{"unknown filter", good(func(j *deliveryv1.Journey) { j.Template.Body = "{{firstName | shout}}" }), codes.InvalidArgument, "journey.template.body"},
		{"data value does not parse", good(func(j *deliveryv1.Journey) { j.Template.Data = map[string]string{"k": "{{}}"} }), codes.InvalidArgument, `journey.template.data["k"]`},
		{"reserved data key", good(func(j *deliveryv1.Journey) { j.Template.Data = map[string]string{"aps": "x"} }), codes.InvalidArgument, `journey.template.data["aps"]`},
		{"image is not a URL", good(func(j *deliveryv1.Journey) { j.Template.ImageUrl = "{{firstName}}" }), codes.InvalidArgument, "journey.template.image_url"},
		{"variant without locale or platform", good(func(j *deliveryv1.Journey) {
			j.Variants = []*deliveryv1.TemplateVariant{{Template: &deliveryv1.MessageTemplate{Title: "x"}}}
		}), codes.InvalidArgument, "journey.variants[0]"},
		{"variant locale", good(func(j *deliveryv1.Journey) {
			j.Variants = []*deliveryv1.TemplateVariant{{Locale: "en US!", Template: &deliveryv1.MessageTemplate{Title: "x"}}}
		}), codes.InvalidArgument, "journey.variants[0].locale"},
		{"variant template", good(func(j *deliveryv1.Journey) {
			j.Variants = []*deliveryv1.TemplateVariant{{Locale: "fr", Template: &deliveryv1.MessageTemplate{Title: "{{"}}}
		}), codes.InvalidArgument, "journey.variants[0].template.title"},
		{"ttl", good(func(j *deliveryv1.Journey) {
			j.Delivery = &deliveryv1.DeliveryOptions{Ttl: durationpb.New(-time.Second)}
		}), codes.InvalidArgument, "journey.delivery.ttl"},
		{"cap", good(func(j *deliveryv1.Journey) { j.Delivery = &deliveryv1.DeliveryOptions{MaxMessagesPerSecond: -1} }), codes.InvalidArgument, "journey.delivery.max_messages_per_second"},
		{"collapse id", good(func(j *deliveryv1.Journey) {
			j.Delivery = &deliveryv1.DeliveryOptions{CollapseId: strings.Repeat("c", 65)}
		}), codes.InvalidArgument, "journey.delivery.collapse_id"},
		{"priority", good(func(j *deliveryv1.Journey) { j.Delivery = &deliveryv1.DeliveryOptions{Priority: 9} }), codes.InvalidArgument, "journey.delivery.priority"},
		{"push type", good(func(j *deliveryv1.Journey) { j.Delivery = &deliveryv1.DeliveryOptions{ApnsPushType: 9} }), codes.InvalidArgument, "journey.delivery.apns_push_type"},
		{"start time", good(func(j *deliveryv1.Journey) { j.StartTime = &timestamppb.Timestamp{Nanos: -1} }), codes.InvalidArgument, "journey.start_time"},
		{"sample size", &deliveryv1.PublishJourneyRequest{Journey: good(func(*deliveryv1.Journey) {}).GetJourney(), DryRun: true, SampleSize: 21},
			codes.InvalidArgument, "sample_size"},
		{"request id", &deliveryv1.PublishJourneyRequest{Journey: good(func(*deliveryv1.Journey) {}).GetJourney(), RequestId: strings.Repeat("r", 257)},
			codes.InvalidArgument, "request_id"},
		{"app not registered", good(func(j *deliveryv1.Journey) { j.AppIds = []string{ShopApp, "com.acme.unknown"} }), codes.FailedPrecondition, "journey.app_ids[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Journeys.PublishJourney(ctx, tt.req)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("got %v (%v), want %v", got, err, tt.code)
			}
			if fields := fieldsOf(err); !contains(fields, tt.field) {
				t.Errorf("got fields %q, want %q", fields, tt.field)
			}
		})
	}

	// The other RPCs.
	rpcs := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"get without id", func() error { _, err := m.Journeys.GetJourney(ctx, &deliveryv1.GetJourneyRequest{}); return err }, codes.InvalidArgument, "journey_id"},
		{"get unknown", func() error {
			_, err := m.Journeys.GetJourney(ctx, &deliveryv1.GetJourneyRequest{JourneyId: "jrn_nope"})
			return err
		}, codes.NotFound, "journey_id"},
		{"cancel unknown", func() error {
			_, err := m.Journeys.CancelJourney(ctx, &deliveryv1.CancelJourneyRequest{JourneyId: "jrn_nope"})
			return err
		}, codes.NotFound, "journey_id"},
		{"cancel without id", func() error {
			_, err := m.Journeys.CancelJourney(ctx, &deliveryv1.CancelJourneyRequest{})
			return err
		}, codes.InvalidArgument, "journey_id"},
		{"list page size", func() error {
			_, err := m.Journeys.ListJourneys(ctx, &deliveryv1.ListJourneysRequest{PageSize: 501})
			return err
		}, codes.InvalidArgument, "page_size"},
		{"list page token", func() error {
			_, err := m.Journeys.ListJourneys(ctx, &deliveryv1.ListJourneysRequest{PageToken: "jrn_forged"})
			return err
		}, codes.InvalidArgument, "page_token"},
		{"list state", func() error {
			_, err := m.Journeys.ListJourneys(ctx, &deliveryv1.ListJourneysRequest{States: []deliveryv1.JourneyState{42}})
			return err
		}, codes.InvalidArgument, "states[0]"},
		{"watch unknown", func() error {
			s, err := m.Journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: "jrn_nope"})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.NotFound, "journey_id"},
		{"watch interval", func() error {
			s, err := m.Journeys.WatchJourney(ctx, &deliveryv1.WatchJourneyRequest{JourneyId: "jrn_x", Interval: durationpb.New(-time.Second)})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument, "interval"},
	}
	for _, tt := range rpcs {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if got := status.Code(err); got != tt.code {
				t.Fatalf("got %v (%v), want %v", got, err, tt.code)
			}
			if fields := fieldsOf(err); !contains(fields, tt.field) {
				t.Errorf("got fields %q, want %q", fields, tt.field)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A suspended app cannot start a journey.
func TestSuspendedAppIsAPrecondition(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	if err := m.APNs.SetTokenOutcome(APNsToken(7), "InvalidProviderToken"); err != nil {
		t.Fatal(err)
	}
	// A send that the gateway refuses for the credentials suspends the app.
	must(m.Customer(ctx, "C-7", map[string]any{})).get(t)
	if err := m.Device(ctx, "C-7", APNsToken(7), commonv1.Platform_PLATFORM_APNS, WalletApp); err != nil {
		t.Fatal(err)
	}
	run(t, m, &deliveryv1.Journey{Name: "suspends", AppIds: []string{WalletApp}, Template: &deliveryv1.MessageTemplate{Title: "x"}})
	_, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: &deliveryv1.Journey{
		Name: "after", AppIds: []string{ShopApp, WalletApp}, Template: &deliveryv1.MessageTemplate{Title: "x"}}})
	if status.Code(err) != codes.FailedPrecondition || !contains(fieldsOf(err), "journey.app_ids[1]") {
		t.Errorf("got %v (fields %q), want FailedPrecondition on journey.app_ids[1]", err, fieldsOf(err))
	}
}

// A dry run counts and renders, and sends and stores nothing; publish is
// idempotent by request id; journeys list newest first, by page and state;
// watch streams progress and ends after the final state.
func TestDryRunListWatchAndRequestID(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	for i, c := range []struct {
		customer, locale string
	}{{"A", "en-GB"}, {"B", "fr-FR"}, {"C", "fr-CA"}} {
		must(m.Customer(ctx, c.customer, map[string]any{"firstName": c.customer, "locale": c.locale})).get(t)
		if err := m.Device(ctx, c.customer, APNsToken(200+i), commonv1.Platform_PLATFORM_APNS, ShopApp); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Device(ctx, "C", FCMToken(299), commonv1.Platform_PLATFORM_FCM, ShopApp); err != nil {
		t.Fatal(err)
	}
	must(m.Customer(ctx, "D", map[string]any{"firstName": "D"})).get(t) // no device
	j := &deliveryv1.Journey{Name: "dry", AppIds: []string{ShopApp},
		Template: &deliveryv1.MessageTemplate{Title: "Hi {{firstName}}"},
		Variants: []*deliveryv1.TemplateVariant{{Locale: "fr", Template: &deliveryv1.MessageTemplate{Title: "Salut {{firstName}}"}}}}
	dry := must(m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: j, DryRun: true, SampleSize: 5})).get(t)
	dr := dry.GetDryRun()
	if dr.GetQualified() != 4 || dr.GetTokensTargeted() != 4 || excluded(&deliveryv1.JourneyProgress{Excluded: dr.GetExcluded()}, commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN) != 1 {
		t.Errorf("dry run: got %v, want 4 qualified, 4 tokens, 1 without a token", dr)
	}
	titles := map[string]bool{}
	for _, s := range dr.GetSamples() {
		titles[s.GetNotification().GetTitle()] = true
	}
	if len(dr.GetSamples()) != 3 || !titles["Hi A"] || !titles["Salut B"] || !titles["Salut C"] {
		t.Errorf("samples: got %v, want Hi A, Salut B and Salut C", dr.GetSamples())
	}
	if n := m.APNs.Count().Received + int64(len(m.FCM.Received())); n != 0 {
		t.Errorf("a dry run sent %d pushes", n)
	}
	if list := must(m.Journeys.ListJourneys(ctx, &deliveryv1.ListJourneysRequest{})).get(t); len(list.GetJourneys()) != 0 {
		t.Errorf("a dry run stored a journey: %v", list.GetJourneys())
	}

	// Idempotent publish.
	first := must(m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: j, RequestId: "req-1"})).get(t)
	again := must(m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: j, RequestId: "req-1"})).get(t)
	if again.GetJourney().GetJourneyId() != first.GetJourney().GetJourneyId() {
		t.Errorf("same request id: got journeys %s and %s, want one", first.GetJourney().GetJourneyId(), again.GetJourney().GetJourneyId())
	}
	updates := watch(t, m, first.GetJourney().GetJourneyId())
	last := updates[len(updates)-1]
	if last.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED || last.GetProgress().GetSent() != 4 {
		t.Fatalf("watch ended with %v, %d sent; want COMPLETED, 4", last.GetState(), last.GetProgress().GetSent())
	}
	for _, u := range updates[:len(updates)-1] {
		if u.GetState() == deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
			t.Errorf("an update in a final state before the last one")
		}
	}
	if got := len(m.APNs.Received()) + len(m.FCM.Received()); got != 4 {
		t.Errorf("the emulators got %d pushes, want 4 (one journey, not two)", got)
	}

	// Three more journeys: one cancelled before it starts.
	second := run(t, m, &deliveryv1.Journey{Name: "second", AppIds: []string{ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "2"}})
	third := run(t, m, &deliveryv1.Journey{Name: "third", AppIds: []string{ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "3"}})
	later := publish(t, m, &deliveryv1.Journey{Name: "later", AppIds: []string{ShopApp}, Template: &deliveryv1.MessageTemplate{Title: "4"},
		StartTime: timestamppb.New(time.Now().Add(time.Hour))})
	if later.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED {
		t.Errorf("later: got %v, want SCHEDULED", later.GetState())
	}
	cancelled := must(m.Journeys.CancelJourney(ctx, &deliveryv1.CancelJourneyRequest{JourneyId: later.GetJourneyId()})).get(t)
	if cancelled.GetJourney().GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("cancel: got %v, want CANCELLED", cancelled.GetJourney().GetState())
	}
	_, err := m.Journeys.CancelJourney(ctx, &deliveryv1.CancelJourneyRequest{JourneyId: later.GetJourneyId()})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second cancel: got %v, want FailedPrecondition", err)
	}

	var ids []string
	token := ""
	for {
		page := must(m.Journeys.ListJourneys(ctx, &deliveryv1.ListJourneysRequest{PageSize: 3, PageToken: token})).get(t)
		for _, j := range page.GetJourneys() {
			ids = append(ids, j.GetJourneyId())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	want := []string{later.GetJourneyId(), third.GetJourneyId(), second.GetJourneyId(), first.GetJourney().GetJourneyId()}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Errorf("list: got %v, want newest first %v", ids, want)
	}
	completed := must(m.Journeys.ListJourneys(ctx, &deliveryv1.ListJourneysRequest{States: []deliveryv1.JourneyState{deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED}})).get(t)
	if len(completed.GetJourneys()) != 1 || completed.GetJourneys()[0].GetJourneyId() != later.GetJourneyId() {
		t.Errorf("list cancelled: got %v, want only %s", completed.GetJourneys(), later.GetJourneyId())
	}
}
