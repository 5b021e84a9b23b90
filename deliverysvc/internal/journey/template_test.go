package journey

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

func values(t *testing.T, attrs map[string]any) *Values {
	t.Helper()
	st, err := structpb.NewStruct(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return &Values{ProfileID: "p1", Attributes: st, Identities: map[string]string{"customer_id": "C-7"}}
}

func TestRender(t *testing.T) {
	v := values(t, map[string]any{"firstName": "ada", "points": 1200.0, "vip": true, "address": map[string]any{"city": "Paris"}, "tags": []any{"a", "b"}, "empty": ""})
	tests := []struct {
		src, want string
		wantErr   bool
	}{
		{"Hello", "Hello", false},
		{"Hi {{firstName}}!", "Hi ada!", false},
		{"Hi {{ firstName | title }}", "Hi Ada", false},
		{"{{firstName|upper}}", "ADA", false},
		{`Hi {{lastName | default "there"}}`, "Hi there", false},
		{`Hi {{empty | default "there"}}`, "Hi there", false},
		{`{{missing}}`, "", false},
		{`{{missing | required}}`, "", true},
		{`{{firstName | required}}`, "ada", false},
		{"{{points}} points", "1200 points", false},
		{"{{vip}}", "true", false},
		{"{{address.city}}", "Paris", false},
		{"{{address.zip | default \"?\"}}", "?", false},
		{"{{tags}}", "a, b", false},
		{"{{identity.customer_id}}", "C-7", false},
		{"{{profile_id}}", "p1", false},
		{`{{x | default "a|b"}}`, "a|b", false},
	}
	for _, tt := range tests {
		tpl, err := ParseTemplate(tt.src)
		if err != nil {
			t.Fatalf("ParseTemplate(%q): %v", tt.src, err)
		}
		got, err := tpl.Render(v)
		if (err != nil) != tt.wantErr {
			t.Errorf("Render(%q): err %v, want error %v", tt.src, err, tt.wantErr)
		}
		if tt.wantErr && !errors.Is(err, ErrMissingValue) {
			t.Errorf("Render(%q): got %v, want ErrMissingValue", tt.src, err)
		}
		if got != tt.want {
			t.Errorf("Render(%q) = %q, want %q", tt.src, got, tt.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, src := range []string{"{{", "Hi {{name", "{{}}", "{{ a | shout }}", "{{a | default there}}", "{{a | upper x}}", "{{a..b}}", "{{a b}}"} {
		if _, err := ParseTemplate(src); err == nil {
			t.Errorf("ParseTemplate(%q): got nil, want an error", src)
		}
	}
}

func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{"Hi {{firstName | default \"there\"}}", "{{a.b|upper|lower}}", "{{", "}}{{x}}", `{{x | default "\"}}"}}`} {
		f.Add(s)
	}
	v := &Values{Identities: map[string]string{}}
	f.Fuzz(func(t *testing.T, src string) {
		tpl, err := ParseTemplate(src)
		if err != nil {
			return
		}
		out, err := tpl.Render(v)
		if err != nil && !errors.Is(err, ErrMissingValue) {
			t.Fatalf("Render(%q): unexpected error %v", src, err)
		}
		if !strings.Contains(src, "{{") && out != src {
			t.Fatalf("a template without holes must render as itself: %q → %q", src, out)
		}
	})
}

func TestVariantPick(t *testing.T) {
	j := &deliveryv1.Journey{
		Template: &deliveryv1.MessageTemplate{Title: "default"},
		Variants: []*deliveryv1.TemplateVariant{
			{Locale: "fr", Template: &deliveryv1.MessageTemplate{Title: "fr"}},
			{Locale: "fr-CA", Template: &deliveryv1.MessageTemplate{Title: "fr-CA"}},
			{Platform: commonv1.Platform_PLATFORM_FCM, Template: &deliveryv1.MessageTemplate{Title: "fcm"}},
			{Locale: "fr", Platform: commonv1.Platform_PLATFORM_FCM, Template: &deliveryv1.MessageTemplate{Title: "fcm-fr"}},
		},
	}
	c, err := Compile(j)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		platform commonv1.Platform
		locale   string
		want     string
	}{
		{commonv1.Platform_PLATFORM_APNS, "en-US", "default"},
		{commonv1.Platform_PLATFORM_APNS, "fr-FR", "fr"},
		{commonv1.Platform_PLATFORM_APNS, "fr_CA", "fr"},
		{commonv1.Platform_PLATFORM_APNS, "fr-CA", "fr-CA"},
		{commonv1.Platform_PLATFORM_FCM, "en", "fcm"},
		{commonv1.Platform_PLATFORM_FCM, "fr-BE", "fcm-fr"},
		{commonv1.Platform_PLATFORM_FCM, "fr-CA", "fcm-fr"},
		{commonv1.Platform_PLATFORM_APNS, "", "default"},
	}
	for _, tt := range tests {
		n, err := c.Render(tt.platform, tt.locale, &Values{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Title != tt.want {
			t.Errorf("%v %q: got %q, want %q", tt.platform, tt.locale, n.Title, tt.want)
		}
	}
}

func TestCompileNamesTheField(t *testing.T) {
	_, err := Compile(&deliveryv1.Journey{
		Template: &deliveryv1.MessageTemplate{Title: "{{x | nope}}", Data: map[string]string{"k": "{{"}},
		Variants: []*deliveryv1.TemplateVariant{{Template: &deliveryv1.MessageTemplate{Title: "x"}}},
	})
	if err == nil {
		t.Fatal("got nil, want errors")
	}
	for _, field := range []string{"journey.template.title", "journey.template.data[k]", "journey.variants[0]"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error %q does not name %s", err, field)
		}
	}
}
