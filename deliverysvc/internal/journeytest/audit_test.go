package journeytest

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// A template's content is checked at publish even when the sample profile
// (the first member, or a stand-in profile when the audience is empty)
// lacks a `required` value: a reserved data key or an image URL that is
// not one is InvalidArgument on its field, and so is an empty locale
// variant. A valid template whose sample lacks the value publishes.
func TestPublishChecksContentWhateverTheSample(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	must(m.Customer(ctx, "nameless", map[string]any{"tier": "gold"})).get(t)
	if err := m.Device(ctx, "nameless", APNsToken(1), commonv1.Platform_PLATFORM_APNS, ShopApp); err != nil {
		t.Fatal(err)
	}
	must(m.Customer(ctx, "named", map[string]any{"tier": "gold", "firstName": "Ada"})).get(t)
	if err := m.Device(ctx, "named", APNsToken(2), commonv1.Platform_PLATFORM_APNS, ShopApp); err != nil {
		t.Fatal(err)
	}
	journey := func(condition string, edit func(j *deliveryv1.Journey)) *deliveryv1.Journey {
		j := &deliveryv1.Journey{Name: "audit", AppIds: []string{ShopApp}, Audience: &deliveryv1.Audience{Condition: condition},
			Template: &deliveryv1.MessageTemplate{Title: "Hi {{firstName | required}}"}}
		edit(j)
		return j
	}
	const (
		gold  = `attributes.tier == "gold"` // the first member, the sample, has no firstName
		empty = `attributes.tier == "platinum"`
	)
	tests := []struct {
		name      string
		condition string
		edit      func(j *deliveryv1.Journey)
		field     string
		standIn   bool // the violation says a stand-in replaced the missing firstName
	}{
		{"reserved data key", gold, func(j *deliveryv1.Journey) { j.Template.Data = map[string]string{"aps": "x"} }, `journey.template.data["aps"]`, true},
		{"image is not a URL", gold, func(j *deliveryv1.Journey) { j.Template.ImageUrl = "not a url" }, "journey.template.image_url", true},
		{"reserved data key, empty audience", empty, func(j *deliveryv1.Journey) { j.Template.Data = map[string]string{"aps": "x"} }, `journey.template.data["aps"]`, true},
		{"image is not a URL, empty audience", empty, func(j *deliveryv1.Journey) { j.Template.ImageUrl = "not a url" }, "journey.template.image_url", true},
		{"empty locale variant", gold, func(j *deliveryv1.Journey) {
			j.Template.Title = "Hi"
			j.Variants = []*deliveryv1.TemplateVariant{{Locale: "fr", Template: &deliveryv1.MessageTemplate{}}}
		}, "journey.variants[0].template", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Journeys.PublishJourney(ctx, &deliveryv1.PublishJourneyRequest{Journey: journey(tt.condition, tt.edit)})
			if got := status.Code(err); got != codes.InvalidArgument {
				t.Fatalf("got %v (%v), want InvalidArgument", got, err)
			}
			if fields := fieldsOf(err); !contains(fields, tt.field) {
				t.Errorf("got fields %q, want %q", fields, tt.field)
			}
			if tt.standIn && !strings.Contains(err.Error(), "standing in for its missing firstName") {
				t.Errorf("%v: does not say that a stand-in replaced the sample's missing firstName", err)
			}
		})
	}
	if n := len(m.APNs.Received()); n != 0 {
		t.Fatalf("refused journeys pushed %d times", n)
	}

	// Valid: the image URL is built from a required value the sample lacks.
	j := run(t, m, journey(gold, func(j *deliveryv1.Journey) {
		j.Template.ImageUrl = "https://cdn.example.com/{{firstName | required | lower}}.png"
	}))
	if p := j.GetProgress(); p.GetSent() != 1 || excluded(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR) != 1 {
		t.Errorf("progress: got %v, want 1 sent and 1 render error", p)
	}
	if got := m.APNs.ReceivedFor(APNsToken(2)); len(got) != 1 || !strings.Contains(string(got[0].Payload), "ada.png") {
		t.Errorf("named: got %v, want one push with its image", got)
	}
}

// A scheduled journey evaluates its audience when it starts, not when it
// is published: a profile that stopped meeting the condition in between is
// not reached, and one that started meeting it is.
func TestScheduledJourneyTakesTheAudienceAtItsStartTime(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	for i, c := range []struct {
		customer, tier string
	}{{"stays", "gold"}, {"leaves", "gold"}, {"joins", "silver"}} {
		must(m.Customer(ctx, c.customer, map[string]any{"tier": c.tier, "firstName": c.customer})).get(t)
		if err := m.Device(ctx, c.customer, APNsToken(300+i), commonv1.Platform_PLATFORM_APNS, ShopApp); err != nil {
			t.Fatal(err)
		}
	}
	startAt := time.Now().Add(2 * time.Second)
	pub := publish(t, m, &deliveryv1.Journey{
		Name: "later", AppIds: []string{ShopApp}, StartTime: timestamppb.New(startAt),
		Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{Title: "Hi {{firstName}}"},
	})
	if pub.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED {
		t.Fatalf("at publish: got %v, want SCHEDULED", pub.GetState())
	}
	must(m.Customer(ctx, "leaves", map[string]any{"tier": "silver"})).get(t)
	must(m.Customer(ctx, "joins", map[string]any{"tier": "gold"})).get(t)
	// The journey must still be waiting, or the test proves nothing: it
	// streams its audience only after it leaves SCHEDULED.
	got := must(m.Journeys.GetJourney(ctx, &deliveryv1.GetJourneyRequest{JourneyId: pub.GetJourneyId()})).get(t)
	if got.GetJourney().GetState() != deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED || len(m.APNs.Received()) != 0 {
		t.Fatalf("the journey left SCHEDULED (%v) before the profiles changed: the machine is too slow for this test", got.GetJourney().GetState())
	}

	updates := watch(t, m, pub.GetJourneyId())
	final := updates[len(updates)-1]
	if final.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("ended %v (%s), want COMPLETED", final.GetState(), final.GetError())
	}
	for i, want := range []int{1, 0, 1} { // stays, leaves, joins
		if got := len(m.APNs.ReceivedFor(APNsToken(300 + i))); got != want {
			t.Errorf("%s: got %d pushes, want %d", []string{"stays", "leaves", "joins"}[i], got, want)
		}
	}
	if p := final.GetProgress(); p.GetQualified() != 2 || p.GetSent() != 2 {
		t.Errorf("progress: got %v, want 2 qualified and 2 sent", p)
	}
	for _, d := range m.APNs.Received() {
		if d.Time.Before(startAt) {
			t.Errorf("a push at %s, before the start time %s", d.Time.Format(time.StampMilli), startAt.Format(time.StampMilli))
		}
	}
}

// Real profile data through the real services over gRPC and the APNs
// emulator: a profile whose long attribute takes the payload over APNs'
// 4 KB is excluded as PAYLOAD_TOO_LARGE (not a failed send), and values built
// into a deep link arrive percent-encoded.
func TestProfileDataEndToEnd(t *testing.T) {
	m := start(t, Options{})
	ctx := context.Background()
	must(m.Customer(ctx, "fine", map[string]any{"tier": "gold", "ref": "x y&z=1"})).get(t)
	must(m.Customer(ctx, "long", map[string]any{"tier": "gold", "ref": "r", "bio": strings.Repeat("é", 2500)})).get(t)
	for i, c := range []string{"fine", "long"} {
		if err := m.Device(ctx, c, APNsToken(400+i), commonv1.Platform_PLATFORM_APNS, ShopApp); err != nil {
			t.Fatal(err)
		}
	}
	j := run(t, m, &deliveryv1.Journey{
		Name: "real data", AppIds: []string{ShopApp}, Audience: &deliveryv1.Audience{Condition: `attributes.tier == "gold"`},
		Template: &deliveryv1.MessageTemplate{Title: "News", Body: `{{bio | default "Our sale"}}`, DeepLink: "acme://c/{{identity.customer_id}}?ref={{ref}}"},
	})
	p := j.GetProgress()
	if p.GetSent() != 1 || excluded(p, commonv1.ExclusionReason_EXCLUSION_REASON_PAYLOAD_TOO_LARGE) != 1 || len(p.GetFailed()) != 0 {
		t.Errorf("progress: got %v, want 1 sent, the long bio excluded as PAYLOAD_TOO_LARGE, nothing failed", p)
	}
	got := m.APNs.ReceivedFor(APNsToken(400))
	if len(got) != 1 || !strings.Contains(string(got[0].Payload), `"deep_link":"acme://c/fine?ref=x%20y%26z%3D1"`) {
		for _, push := range got {
			t.Logf("payload: %s", push.Payload)
		}
		t.Errorf("fine: got %d pushes, want one with the escaped deep link", len(got))
	}
	if n := len(m.APNs.ReceivedFor(APNsToken(401))); n != 0 {
		t.Errorf("long: got %d pushes, want none", n)
	}
}
