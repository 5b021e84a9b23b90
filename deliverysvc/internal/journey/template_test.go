package journey

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

func values(t *testing.T, attrs map[string]any) *Values {
	t.Helper()
	st, err := structpb.NewStruct(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return &Values{ProfileID: "p1", Attributes: st, Identities: []*profilev1.Identity{
		{Namespace: "email", Value: "ada@example.com"}, {Namespace: "customer_id", Value: "C-7"}, {Namespace: "customer_id", Value: "C-8"},
	}}
}

func TestRender(t *testing.T) {
	v := values(t, map[string]any{
		"firstName": "ada", "points": 1200.0, "vip": true, "address": map[string]any{"city": "Paris"}, "tags": []any{"a", "b"}, "empty": "",
		"nullish": nil, "ratio": 0.25, "big": 12345678901.0, "name": "ada lovelace", "city": "PARIS",
	})
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
		{`{{x | default "}}"}}!`, "}}!", false},
		{`{{x | default "say \"hi\""}}`, `say "hi"`, false},
		{`{{firstName | default "x" | upper}}`, "ADA", false},
		{`{{missing | default "x" | upper}}`, "X", false},
		{`{{missing | upper | required}}`, "", true},
		{"{{nothing.at.all}}", "", false},
		{"{{firstName.deeper}}", "", false},
		{"{{nullish | default \"n/a\"}}", "n/a", false},
		{"{{ratio}}", "0.25", false},
		{"{{big}}", "12345678901", false},
		{"{{profile_id}} {{identity.email}}", "p1 ada@example.com", false},
		{"{{identity.phone | default \"-\"}}", "-", false},
		{"{{name | title}}", "Ada Lovelace", false},
		{"{{city | lower}}", "paris", false},
		{"été {{firstName}}", "été ada", false},
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
	v := &Values{ProfileID: "p"}
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
		{commonv1.Platform_PLATFORM_APNS, "fr_CA", "fr-CA"}, // the same locale, spelt with "_"
		{commonv1.Platform_PLATFORM_APNS, "FR-ca", "fr-CA"},
		{commonv1.Platform_PLATFORM_APNS, "fr", "fr"},
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
	for _, field := range []string{"journey.template.title", `journey.template.data["k"]`, "journey.variants[0]"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error %q does not name %s", err, field)
		}
	}
}

// A journey streams only what its templates read: the top-level attribute
// of every hole in every template and variant, the identity namespaces of
// identity.<namespace> holes, and the locale.
func TestMemberFields(t *testing.T) {
	c, err := Compile(&deliveryv1.Journey{
		Template: &deliveryv1.MessageTemplate{
			Title: `Hi {{firstName | default "there"}}`, Body: "{{address.city}}: {{identity.email}} {{profile_id}}",
			Data: map[string]string{"ref": "{{identity.customer_id}}", "static": "x", "odd": "{{identity.Not_Valid}}"},
		},
		Variants: []*deliveryv1.TemplateVariant{{Locale: "fr", Template: &deliveryv1.MessageTemplate{Title: "Bonjour {{nickname | upper}}"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := c.MemberFields()
	wantAttrs := []string{"address", "firstName", "identity", "locale", "nickname", "profile_id"}
	wantNamespaces := []string{"customer_id", "email"} // Not_Valid can name no identity
	if !slices.Equal(got.GetAttributes(), wantAttrs) || !slices.Equal(got.GetIdentityNamespaces(), wantNamespaces) {
		t.Errorf("got attributes %v namespaces %v, want %v and %v", got.GetAttributes(), got.GetIdentityNamespaces(), wantAttrs, wantNamespaces)
	}

	static, err := Compile(&deliveryv1.Journey{Template: &deliveryv1.MessageTemplate{Title: "Sale!"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := static.MemberFields(); !slices.Equal(got.GetAttributes(), []string{"locale"}) || len(got.GetIdentityNamespaces()) != 0 {
		t.Errorf("static template: got %v, want only the locale", got)
	}

	var many strings.Builder
	for i := range maxMemberAttributes {
		fmt.Fprintf(&many, "{{a%d}}", i)
	}
	wide, err := Compile(&deliveryv1.Journey{Template: &deliveryv1.MessageTemplate{Body: many.String()}})
	if err != nil {
		t.Fatal(err)
	}
	if got := wide.MemberFields(); got != nil {
		t.Errorf("%d attributes and the locale: got a selection of %d, want whole members", maxMemberAttributes, len(got.GetAttributes()))
	}
}

// Attributes win over identities and the profile id, as the contract says.
func TestLookupOrder(t *testing.T) {
	v := values(t, map[string]any{"profile_id": "from-attributes", "identity": map[string]any{"customer_id": "attr-C"}})
	for src, want := range map[string]string{
		"{{profile_id}}":           "from-attributes",
		"{{identity.customer_id}}": "attr-C",
		"{{identity.email}}":       "ada@example.com", // no such attribute path: the identity
	} {
		tpl, err := ParseTemplate(src)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := tpl.Render(v); err != nil || got != want {
			t.Errorf("Render(%q) = %q, %v; want %q", src, got, err, want)
		}
	}
	// The first identity of a namespace.
	tpl, _ := ParseTemplate("{{identity.customer_id}}")
	if got, _ := tpl.Render(values(t, nil)); got != "C-7" {
		t.Errorf("got %q, want the first customer_id C-7", got)
	}
}

func TestRenderErrorNamesTheValue(t *testing.T) {
	tpl, err := ParseTemplate("Hi {{address.zip | required}}")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tpl.Render(values(t, nil))
	if !errors.Is(err, ErrMissingValue) || !strings.Contains(err.Error(), "address.zip") {
		t.Errorf("got %v, want ErrMissingValue naming address.zip", err)
	}
}

func TestParseLimits(t *testing.T) {
	if _, err := ParseTemplate(strings.Repeat("x", MaxTemplateLen+1)); err == nil {
		t.Error("an oversized template parsed, want an error")
	}
	if _, err := ParseTemplate("bad \xff utf-8"); err == nil {
		t.Error("invalid UTF-8 parsed, want an error")
	}
}

// A message whose fields are all static renders without allocating; a
// personalized one allocates its texts once.
func TestRenderAllocations(t *testing.T) {
	v := values(t, map[string]any{"firstName": "Ada", "tier": "gold"})
	for _, tt := range []struct {
		name string
		tpl  *deliveryv1.MessageTemplate
		max  float64
	}{
		{"static", &deliveryv1.MessageTemplate{Title: "Sale", Body: "Everything must go"}, 0},
		{"personalized", &deliveryv1.MessageTemplate{Title: `Hi {{firstName | default "there"}}`, Body: "Your {{tier | upper}} offer", DeepLink: "app://o/{{profile_id}}"}, 3},
	} {
		c, err := Compile(&deliveryv1.Journey{Template: tt.tpl})
		if err != nil {
			t.Fatal(err)
		}
		got := testing.AllocsPerRun(100, func() {
			if _, err := c.Render(commonv1.Platform_PLATFORM_APNS, "en", v); err != nil {
				t.Fatal(err)
			}
		})
		if got > tt.max {
			t.Errorf("%s: got %.0f allocations per render, want at most %.0f", tt.name, got, tt.max)
		}
	}
}

func BenchmarkRender(b *testing.B) {
	c, err := Compile(&deliveryv1.Journey{Template: &deliveryv1.MessageTemplate{
		Title: `Hi {{firstName | default "there"}}`, Body: "Your {{tier}} offer is waiting", DeepLink: "app://offers/{{profile_id}}",
		Data: map[string]string{"customer": "{{identity.customer_id}}"},
	}})
	if err != nil {
		b.Fatal(err)
	}
	st, _ := structpb.NewStruct(map[string]any{"firstName": "Ada", "tier": "gold", "locale": "en-US"})
	v := &Values{ProfileID: "01J0000000000000000000000", Attributes: st, Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C-1"}}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Render(commonv1.Platform_PLATFORM_APNS, "en-US", v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "renders/s")
}

// With a stand-in (publish's check of a sample profile), a missing
// required value renders as the stand-in, through the filters after it;
// without one it is ErrMissingValue.
func TestRenderStandIn(t *testing.T) {
	tpl, err := ParseTemplate(`{{a | required | upper}}/{{b | required}}/{{c | default "-"}}`)
	if err != nil {
		t.Fatal(err)
	}
	v := values(t, map[string]any{"b": "bee"})
	if _, err := tpl.Render(v); !errors.Is(err, ErrMissingValue) {
		t.Errorf("without a stand-in: got %v, want ErrMissingValue", err)
	}
	v.StandIn = "https://x"
	if got, err := tpl.Render(v); err != nil || got != "HTTPS://X/bee/-" {
		t.Errorf("with a stand-in: got %q, %v; want %q", got, err, "HTTPS://X/bee/-")
	}
}
