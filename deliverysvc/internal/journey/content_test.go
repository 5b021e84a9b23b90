package journey

import (
	"errors"
	"testing"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// violation is the description of field in a validation error, or false.
func violation(err error, field string) (string, bool) {
	var ve *fault.ValidationError
	if !errors.As(err, &ve) {
		return "", false
	}
	for _, fv := range ve.Violations {
		if fv.Field == field {
			return fv.Description, true
		}
	}
	return "", false
}

// Every locale or platform variant must show something, as the default
// template must: an empty variant would send its profiles a blank push.
func TestVariantNeedsATitleOrABody(t *testing.T) {
	j := journey("empty variant")
	j.Variants = []*deliveryv1.TemplateVariant{
		{Locale: "de", Template: &deliveryv1.MessageTemplate{Body: "Neu"}},
		{Locale: "fr", Template: &deliveryv1.MessageTemplate{Sound: "default", DeepLink: "acme://fr"}},
	}
	_, err := Compile(j)
	if _, ok := violation(err, "journey.variants[1].template"); !ok {
		t.Errorf("got %v, want a violation on journey.variants[1].template", err)
	}
	if _, ok := violation(err, "journey.variants[0].template"); ok {
		t.Errorf("got %v; the de variant has a body", err)
	}

	h := newHarness(t)
	h.setMembers(member(t, "p1", map[string]any{"locale": "fr"}, apnsTok(hexToken(1), shopApp)))
	h.start()
	if _, _, err := h.m.Publish(testCtx, PublishInput{Journey: j}); err == nil {
		t.Fatal("published a journey with an empty fr variant")
	}
	if h.pushCount() != 0 {
		t.Errorf("got %d pushes, want none", h.pushCount())
	}

	// A silent push needs neither.
	j.Delivery = &deliveryv1.DeliveryOptions{ApnsPushType: deliveryv1.ApnsPushType_APNS_PUSH_TYPE_BACKGROUND}
	if _, err := Compile(j); err != nil {
		t.Errorf("background push: got %v, want it to compile", err)
	}
}
