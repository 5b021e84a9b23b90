package journey

import (
	"strings"
	"testing"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

// When the publish sample lacks a `required` value, the rest of the
// template is still checked (with a stand-in for the value): a reserved
// data key or an image URL that is not one is refused, naming the field
// and saying a stand-in was used, whether the sample is an audience member
// or the synthetic profile of an empty audience; a dry run refuses it too.
func TestPublishChecksTemplatesWhenTheSampleLacksARequiredValue(t *testing.T) {
	nameless := member(t, "p1", map[string]any{"tier": "gold"}, apnsTok(hexToken(1), shopApp))
	tests := []struct {
		name  string
		edit  func(j *deliveryv1.Journey)
		field string
	}{
		{name: "reserved data key", edit: func(j *deliveryv1.Journey) { j.Template.Data = map[string]string{"aps": "x"} },
			field: `journey.template.data["aps"]`},
		{name: "image is not a URL", edit: func(j *deliveryv1.Journey) { j.Template.ImageUrl = "not a url" },
			field: "journey.template.image_url"},
		{name: "in a variant", edit: func(j *deliveryv1.Journey) {
			j.Variants = []*deliveryv1.TemplateVariant{{Locale: "fr", Template: &deliveryv1.MessageTemplate{
				Title: "Salut {{firstName | required}}", ImageUrl: "{{firstName | required}} pas une URL"}}}
		}, field: "journey.variants[0].template.image_url"},
	}
	for _, audience := range []struct {
		name   string
		sample string // the sample's profile id
	}{{name: "member without firstName", sample: "p1"}, {name: "empty audience", sample: syntheticProfile}} {
		for _, tt := range tests {
			t.Run(audience.name+"/"+tt.name, func(t *testing.T) {
				h := newHarness(t)
				if audience.sample == "p1" {
					h.setMembers(nameless)
				}
				h.start()
				j := journey("required firstName")
				j.Template.Title = "Hi {{firstName | required}}"
				tt.edit(j)
				for _, dry := range []bool{false, true} {
					_, _, err := h.m.Publish(testCtx, PublishInput{Journey: j, DryRun: dry})
					desc, ok := violation(err, tt.field)
					if !ok {
						t.Fatalf("dry run %v: got %v, want a violation on %s", dry, err, tt.field)
					}
					// A dry run samples the first member that renders, or
					// else the synthetic profile.
					if !strings.Contains(desc, "standing in") || !strings.Contains(desc, "firstName") || !dry && !strings.Contains(desc, "profile "+audience.sample) {
						t.Errorf("dry run %v: %q does not say that a stand-in replaced the sample %s's missing firstName", dry, desc, audience.sample)
					}
				}
				if h.pushCount() != 0 {
					t.Errorf("got %d pushes, want none", h.pushCount())
				}
			})
		}
	}
}

// A valid template whose sample lacks a required value publishes, also
// when the value is the whole image URL or a part of it (the stand-in is a
// URL); the profiles without the value are excluded when it runs.
func TestPublishAcceptsAValidTemplateWhoseSampleLacksARequiredValue(t *testing.T) {
	h := newHarness(t)
	h.setMembers(
		member(t, "p1", map[string]any{}, apnsTok(hexToken(1), shopApp)), // the sample: nothing required
		member(t, "p2", map[string]any{"firstName": "Ada", "img": "https://cdn.example.com/ada.png", "slug": "ada"}, apnsTok(hexToken(2), shopApp)),
	)
	h.start()
	for _, tpl := range []*deliveryv1.MessageTemplate{
		{Title: "Hi {{firstName | required}}", ImageUrl: "{{img | required}}", Data: map[string]string{"who": "{{firstName | required | upper}}"}},
		{Title: "Hi {{firstName | required}}", ImageUrl: "https://cdn.example.com/{{slug | required}}.png", DeepLink: "acme://u/{{slug | required}}"},
		{Title: "Hi {{firstName}}", ImageUrl: "https://{{slug | required}}.cdn.example.com/a.png"},
	} {
		j := journey("valid")
		j.Template = tpl
		got := h.wait(h.publish(j))
		p := got.GetProgress()
		if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED || p.GetSent() != 1 ||
			excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR) != 1 {
			t.Errorf("%v: got %v with %v, want COMPLETED, 1 sent and p1 excluded (render error)", tpl, got.GetState(), p)
		}
	}
}

// One profile whose data makes an invalid notification (here an image
// attribute that is no URL) is excluded when the journey runs; it must not
// block publishing when it happens to come first. Publish samples the first
// member the journey would send to, as a dry run does; only when none of
// the first members would be sent to is the error the first one's.
func TestPublishIsNotBlockedByOneProfilesBadData(t *testing.T) {
	tpl := &deliveryv1.MessageTemplate{Title: "Hi {{firstName}}", ImageUrl: "{{img}}"}
	bad := func(id string, i int) *profilev1.AudienceMember {
		return member(t, id, map[string]any{"firstName": "Bo", "img": "not a url"}, apnsTok(hexToken(i), shopApp))
	}

	h := newHarness(t)
	h.setMembers(bad("p1", 1), member(t, "p2", map[string]any{"firstName": "Ada", "img": "https://cdn.example.com/ada.png"}, apnsTok(hexToken(2), shopApp)))
	h.start()
	j := journey("one bad image")
	j.Template = tpl
	got := h.wait(h.publish(j))
	p := got.GetProgress()
	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED || p.GetSent() != 1 ||
		excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR) != 1 {
		t.Errorf("got %v with %v, want COMPLETED, p2 sent and p1 excluded (render error)", got.GetState(), p)
	}

	h2 := newHarness(t)
	h2.setMembers(bad("p1", 1), bad("p2", 2))
	h2.start()
	_, _, err := h2.m.Publish(testCtx, PublishInput{Journey: j})
	desc, ok := violation(err, "journey.template.image_url")
	if !ok || !strings.Contains(desc, "profile p1") {
		t.Fatalf("every sampled member renders an invalid image URL: got %v (%q), want a violation on journey.template.image_url naming p1", err, desc)
	}
	if h2.pushCount() != 0 {
		t.Errorf("got %d pushes, want none", h2.pushCount())
	}
}
