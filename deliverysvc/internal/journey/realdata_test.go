package journey

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

// What marketers' templates do with real profile data: long values,
// template syntax and JSON-special characters inside values, values that
// end up in URLs, values that render to nothing, locales as CRMs spell them.

// recordedExclusion is the detail of the exclusion trackingsvc received for
// a profile, or "".
func (h *harness) recordedExclusion(profileID string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recorded {
		if r.Status == delivery.StatusExcluded && r.Target.ProfileID == profileID {
			return r.Detail
		}
	}
	return ""
}

// A profile whose values make the notification larger than the gateway
// accepts (APNs 4,096 bytes of JSON, FCM 4,096 bytes of text and data) is
// excluded as PAYLOAD_TOO_LARGE (the API's exclusion reason for it), with a
// detail naming the limit, in runs and dry runs alike,
// rather than being counted as a failed send of each of its tokens. The
// check is exact: a value whose JSON escaping takes it over the APNs limit
// is excluded on APNs, while FCM, which counts the raw text, sends it.
func TestOversizedRenderingIsARenderError(t *testing.T) {
	h := newHarness(t)
	quotes := strings.Repeat(`"`, 2000) // 2,000 bytes, 4,000 once escaped in JSON
	h.setMembers(
		member(t, "p0", map[string]any{"bio": "short"}, apnsTok(hexToken(0), shopApp)), // the publish sample
		member(t, "p1", map[string]any{"bio": strings.Repeat("é", 3000)}, apnsTok(hexToken(1), shopApp)),
		member(t, "p2", map[string]any{"bio": strings.Repeat("日", 1500)}, fcmTok("fcm-p2", shopApp)),
		member(t, "p3", map[string]any{"bio": quotes}, apnsTok(hexToken(3), shopApp)),
		member(t, "p4", map[string]any{"bio": quotes}, fcmTok("fcm-p4", shopApp)),
	)
	h.start()
	j := journey("long bios")
	j.Template.Body = "{{bio}}"
	got := h.wait(h.publish(j))
	p := got.GetProgress()
	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("state: got %v (%s), want COMPLETED", got.GetState(), got.GetError())
	}
	if n := excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_PAYLOAD_TOO_LARGE); n != 3 {
		t.Errorf("excluded as PAYLOAD_TOO_LARGE: got %d, want 3 (p1, p2, p3)", n)
	}
	if n := failedCount(p, commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE); n != 0 {
		t.Errorf("PAYLOAD_TOO_LARGE failures: got %d, want 0: the profiles' values are the problem, not the sends", n)
	}
	if p.GetSent() != 2 || p.GetProfilesDone() != 5 {
		t.Errorf("progress: got %v, want p0 and p4 sent, 5 profiles done", p)
	}
	for pid, want := range map[string]string{"p1": "APNs payload", "p2": "FCM payload", "p3": "APNs payload"} {
		if d := h.recordedExclusion(pid); !strings.Contains(d, want) || !strings.Contains(d, "4096-byte limit") {
			t.Errorf("exclusion of %s: detail %q, want it to name the %s and its 4096-byte limit", pid, d, want)
		}
	}
	pushes := h.pushesByToken()
	if len(pushes[hexToken(1)])+len(pushes["fcm-p2"])+len(pushes[hexToken(3)]) != 0 || len(pushes["fcm-p4"]) != 1 {
		t.Errorf("pushes by token: %d tokens, want only p0's and p4's", len(pushes))
	}

	_, dr, err := h.m.Publish(testCtx, PublishInput{Journey: j, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if n := excludedCount(&deliveryv1.JourneyProgress{Excluded: dr.GetExcluded()}, commonv1.ExclusionReason_EXCLUSION_REASON_PAYLOAD_TOO_LARGE); n != 3 || dr.GetTokensTargeted() != 2 {
		t.Errorf("dry run: got excluded %v and %d tokens targeted, want 3 excluded as PAYLOAD_TOO_LARGE and 2 tokens", dr.GetExcluded(), dr.GetTokensTargeted())
	}
}

// A template that is too large for every profile (a static body over the
// payload limit) is refused at publish, naming the template and the limit:
// otherwise every send of the journey would fail.
func TestPublishRefusesATemplateOverThePayloadLimit(t *testing.T) {
	h := newHarness(t)
	h.setMembers(member(t, "p1", map[string]any{}, apnsTok(hexToken(1), shopApp)))
	h.start()
	for _, tt := range []struct {
		name  string
		edit  func(j *deliveryv1.Journey)
		field string
	}{
		{"static body", func(j *deliveryv1.Journey) { j.Template.Body = strings.Repeat("x", 4100) }, "journey.template"},
		{"FCM variant", func(j *deliveryv1.Journey) {
			j.Variants = []*deliveryv1.TemplateVariant{{Platform: commonv1.Platform_PLATFORM_FCM,
				Template: &deliveryv1.MessageTemplate{Title: "Hi", Data: map[string]string{"blob": strings.Repeat("y", 4100)}}}}
		}, "journey.variants[0].template"},
	} {
		for _, dry := range []bool{false, true} {
			j := journey("too large")
			tt.edit(j)
			_, _, err := h.m.Publish(testCtx, PublishInput{Journey: j, DryRun: dry})
			desc, ok := violation(err, tt.field)
			if !ok || !strings.Contains(desc, "4096-byte limit") {
				t.Errorf("%s, dry run %v: got %v, want a violation on %s naming the 4096-byte limit", tt.name, dry, err, tt.field)
			}
		}
	}
	if h.pushCount() != 0 {
		t.Errorf("got %d pushes, want none", h.pushCount())
	}
}

// A profile for whom the title and body both render empty (or blank) gets
// no push: it is excluded as a render error. Without this, APNs would get a
// silent background push and FCM a data-only message, both counted as
// sent, though the journey is an alert and the user sees nothing.
func TestEmptyRenderingIsARenderError(t *testing.T) {
	h := newHarness(t)
	h.setMembers(
		member(t, "p0", map[string]any{"headline": "New in"}, apnsTok(hexToken(0), shopApp)),
		member(t, "p1", map[string]any{}, apnsTok(hexToken(1), shopApp)),
		member(t, "p2", map[string]any{"headline": ""}, fcmTok("fcm-p2", shopApp)),
		member(t, "p3", map[string]any{"headline": " \t "}, apnsTok(hexToken(3), shopApp)),
	)
	h.start()
	j := journey("headline only")
	j.Template = &deliveryv1.MessageTemplate{Title: "{{headline}}", DeepLink: "acme://new"}
	got := h.wait(h.publish(j))
	p := got.GetProgress()
	if n := excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR); n != 3 || p.GetSent() != 1 {
		t.Errorf("progress: got %v, want p0 sent and 3 render errors", p)
	}
	for _, push := range h.pushesByToken() {
		if push[0].Target.ProfileID != "p0" || push[0].APNs == nil || push[0].APNs.PushType != "alert" {
			t.Errorf("push to %s (APNs: %v), want only p0's alert", push[0].Target.ProfileID, push[0].APNs != nil)
		}
	}
	if d := h.recordedExclusion("p1"); !strings.Contains(d, "title") {
		t.Errorf("exclusion of p1: detail %q, want it to say the title and body rendered empty", d)
	}

	// A silent push may render empty.
	h2 := newHarness(t)
	h2.setMembers(member(t, "p1", map[string]any{}, apnsTok(hexToken(1), shopApp)))
	h2.start()
	j.Delivery = &deliveryv1.DeliveryOptions{ApnsPushType: deliveryv1.ApnsPushType_APNS_PUSH_TYPE_BACKGROUND}
	if got := h2.wait(h2.publish(j)); got.GetProgress().GetSent() != 1 {
		t.Errorf("background journey: got %v, want the push sent", got.GetProgress())
	}
}

// Values inserted into a URL field (deep_link, image_url) after its start
// are percent-encoded, so that a value cannot add a path segment, a query
// parameter or a fragment, and spaces or non-ASCII letters make a valid
// URL. A hole that begins the field supplies the URL itself and is
// inserted as it is, as is a value piped through `raw`. Text fields and
// data values are not URLs and are left alone.
func TestURLFieldsEscapeValues(t *testing.T) {
	c, err := Compile(&deliveryv1.Journey{Template: &deliveryv1.MessageTemplate{
		Title:    "{{ref}}",
		DeepLink: "acme://u/{{identity.customer_id}}?ref={{ref}}&n={{name | lower}}#{{missing | default \"top of page\"}}",
		ImageUrl: "https://cdn.example.com/{{slug}}.png",
		Data:     map[string]string{"link": "{{link}}", "rawpath": "acme://{{path | raw}}"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := structpb.NewStruct(map[string]any{
		"ref": "x y&admin=1", "name": "Zoë", "slug": "../../evil?x=1", "link": "https://example.com/a?b=c", "path": "sale/spring",
	})
	if err != nil {
		t.Fatal(err)
	}
	v := &Values{ProfileID: "p1", Attributes: st, Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "a/b?c=d#e"}}}
	n, err := c.Render(commonv1.Platform_PLATFORM_APNS, "", v)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ field, got, want string }{
		{"deep_link", n.DeepLink, "acme://u/a%2Fb%3Fc%3Dd%23e?ref=x%20y%26admin%3D1&n=zo%C3%AB#top%20of%20page"},
		{"image_url", n.ImageURL, "https://cdn.example.com/..%2F..%2Fevil%3Fx%3D1.png"},
		{"title", n.Title, "x y&admin=1"},
		{"data link", n.Data["link"], "https://example.com/a?b=c"},
		{"data rawpath", n.Data["rawpath"], "acme://sale/spring"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.field, tt.got, tt.want)
		}
	}

	// A hole that begins a URL field is the URL: not escaped.
	whole, err := Compile(&deliveryv1.Journey{Template: &deliveryv1.MessageTemplate{
		Title: "Hi", DeepLink: "{{link}}", ImageUrl: "{{img}}/{{slug}}",
	}})
	if err != nil {
		t.Fatal(err)
	}
	st, _ = structpb.NewStruct(map[string]any{"link": "acme://offer/7?src=push", "img": "https://cdn.example.com/i", "slug": "a b"})
	n, err = whole.Render(commonv1.Platform_PLATFORM_APNS, "", &Values{Attributes: st})
	if err != nil {
		t.Fatal(err)
	}
	if n.DeepLink != "acme://offer/7?src=push" || n.ImageURL != "https://cdn.example.com/i/a%20b" {
		t.Errorf("got deep link %q image %q, want the link as it is and the slug escaped", n.DeepLink, n.ImageURL)
	}
}

// Variants are chosen by the profile's locale as CRMs spell it: any case,
// "_" or "-", a POSIX suffix (pt_BR.UTF-8), and with more subtags than the
// variant names (zh-Hant-TW finds zh-Hant before zh: the longest matching
// prefix wins, as in BCP 47 lookup).
func TestVariantPickByLocalePrefix(t *testing.T) {
	c, err := Compile(&deliveryv1.Journey{
		Template: &deliveryv1.MessageTemplate{Title: "default"},
		Variants: []*deliveryv1.TemplateVariant{
			{Locale: "zh", Template: &deliveryv1.MessageTemplate{Title: "zh"}},
			{Locale: "zh-Hant", Template: &deliveryv1.MessageTemplate{Title: "zh-Hant"}},
			{Locale: "pt-BR", Template: &deliveryv1.MessageTemplate{Title: "pt-BR"}},
			{Locale: "pt", Template: &deliveryv1.MessageTemplate{Title: "pt"}},
			{Locale: "zh", Platform: commonv1.Platform_PLATFORM_FCM, Template: &deliveryv1.MessageTemplate{Title: "fcm-zh"}},
			{Platform: commonv1.Platform_PLATFORM_APNS, Template: &deliveryv1.MessageTemplate{Title: "apns"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		platform commonv1.Platform
		locale   string
		want     string
	}{
		{commonv1.Platform_PLATFORM_APNS, "zh-Hant-TW", "zh-Hant"},
		{commonv1.Platform_PLATFORM_APNS, "zh_hant_hk", "zh-Hant"},
		{commonv1.Platform_PLATFORM_APNS, "zh-Hans-CN", "zh"},
		{commonv1.Platform_PLATFORM_APNS, "zh", "zh"},
		{commonv1.Platform_PLATFORM_APNS, "zhx", "apns"}, // a prefix of letters is not a language
		{commonv1.Platform_PLATFORM_APNS, "pt_BR", "pt-BR"},
		{commonv1.Platform_PLATFORM_APNS, "pt_BR.UTF-8", "pt-BR"},
		{commonv1.Platform_PLATFORM_APNS, "PT-br", "pt-BR"},
		{commonv1.Platform_PLATFORM_APNS, "pt-PT", "pt"},
		{commonv1.Platform_PLATFORM_APNS, "pt", "pt"},
		{commonv1.Platform_PLATFORM_APNS, " pt-BR ", "pt-BR"},
		{commonv1.Platform_PLATFORM_FCM, "zh-Hant-TW", "fcm-zh"}, // platform and language before a bare locale
		{commonv1.Platform_PLATFORM_FCM, "en", "default"},
		{commonv1.Platform_PLATFORM_APNS, "en", "apns"},
	} {
		n, err := c.Render(tt.platform, tt.locale, &Values{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Title != tt.want {
			t.Errorf("%v %q: got %q, want %q", tt.platform, tt.locale, n.Title, tt.want)
		}
	}
}

// A profile's values are data: template syntax in a value is printed, not
// evaluated; quotes, backslashes, control characters, emoji, right-to-left
// text, combining marks and U+2028 reach the app exactly as stored, through
// valid JSON on APNs and FCM alike.
func TestProfileValuesAreData(t *testing.T) {
	tricky := "{{identity.customer_id}} {{profile_id | upper}} \"q\" \\ back\nline\ttab\x01 \u2028 🎉 مرحبا e\u0301 <b>&amp;"
	h := newHarness(t)
	h.setMembers(member(t, "p1", map[string]any{"firstName": tricky, "code": `","aps":{"badge":99},"x":"`},
		apnsTok(hexToken(1), shopApp), fcmTok("fcm-p1", shopApp)))
	h.start()
	j := journey("tricky values")
	j.Template = &deliveryv1.MessageTemplate{Title: "{{firstName}}", Body: "{{firstName | upper}}", Data: map[string]string{"code": "{{code}}"}}
	got := h.wait(h.publish(j))
	if got.GetProgress().GetSent() != 2 {
		t.Fatalf("progress: got %v, want 2 sent", got.GetProgress())
	}
	pushes := h.pushesByToken()
	var apns struct {
		APS struct {
			Alert struct{ Title, Body string } `json:"alert"`
			Badge *int                         `json:"badge"`
		} `json:"aps"`
		Code string `json:"code"`
	}
	payload := pushes[hexToken(1)][0].APNs.Payload
	if err := json.Unmarshal(payload, &apns); err != nil {
		t.Fatalf("APNs payload is not JSON: %v\n%s", err, payload)
	}
	if apns.APS.Alert.Title != tricky || apns.APS.Alert.Body != strings.ToUpper(tricky) || apns.Code != `","aps":{"badge":99},"x":"` || apns.APS.Badge != nil {
		t.Errorf("APNs payload %s: the values did not arrive as they are", payload)
	}
	fcm := pushes["fcm-p1"][0].FCM
	if fcm.Notification.Title != tricky || fcm.Data["code"] != `","aps":{"badge":99},"x":"` {
		t.Errorf("FCM: title %q data %q, want the values as they are", fcm.Notification.Title, fcm.Data["code"])
	}
	if _, err := json.Marshal(fcm); err != nil {
		t.Errorf("FCM message does not encode: %v", err)
	}
}

// Values that show nothing are treated as missing: a blank string (CRMs
// export " " for an unknown first name) takes the default and fails
// `required`, as an empty one does; a list leaves out its null, object and
// empty items instead of printing ", , ". Numbers print as people write
// them, whatever their size.
func TestValuesThatShowNothing(t *testing.T) {
	st, err := structpb.NewStruct(map[string]any{
		"blank": " \t ", "tags": []any{"a", nil, map[string]any{"x": 1.0}, "", "b", []any{"c", nil}}, "holes": []any{nil, ""},
		"address": map[string]any{"city": "Paris"}, "big": 1e21, "small": 1e-7, "count": 3.0, "price": 19.99, "yes": true,
	})
	if err != nil {
		t.Fatal(err)
	}
	v := &Values{ProfileID: "p1", Attributes: st}
	for _, tt := range []struct {
		src, want string
		wantErr   bool
	}{
		{`Hi {{blank | default "there"}}!`, "Hi there!", false},
		{`{{blank | required}}`, "", true},
		{`{{blank}}`, " \t ", false}, // without a filter the value is printed as it is
		{`{{tags}}`, "a, b, c", false},
		{`{{holes | default "none"}}`, "none", false},
		{`{{address | default "?"}}`, "?", false}, // an object is not text
		{`{{big}} {{small}} {{count}} {{price}} {{yes}}`, "1000000000000000000000 0.0000001 3 19.99 true", false},
	} {
		tpl, err := ParseTemplate(tt.src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tpl.Render(v)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("Render(%q) = %q, %v; want %q (error: %v)", tt.src, got, err, tt.want, tt.wantErr)
		}
	}
}
