package journey

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// compiledMessage is a MessageTemplate with every text field parsed.
type compiledMessage struct {
	field string // its path in the journey, e.g. "journey.variants[1].template"
	// platform is the variant's platform; unspecified for the default
	// template and variants of every platform.
	platform commonv1.Platform
	// texts are title, subtitle, body, image URL and deep link, in the
	// order of textFields; then the data values in dataKeys order.
	texts    []*Template
	dataKeys []string
	sound    string
	category string
	threadID string
	badge    *int32
	// static is the notification when no field has a hole: rendering it
	// costs nothing.
	static *delivery.Notification
	// size estimates a rendering's length, to allocate once.
	size int
}

// textFields names the text fields of a MessageTemplate, in texts order.
var textFields = [...]string{"title", "subtitle", "body", "image_url", "deep_link"}

func compileMessage(v *fault.ValidationError, field string, m *deliveryv1.MessageTemplate) *compiledMessage {
	c := &compiledMessage{field: field, sound: m.GetSound(), category: m.GetCategory(), threadID: m.GetThreadId()}
	if m.Badge != nil {
		b := m.GetBadge()
		c.badge = &b
	}
	parse := func(name, src string) *Template {
		t, err := ParseTemplate(src)
		if err != nil {
			v.Add(field+"."+name, "%v", err)
			return &Template{}
		}
		c.size += len(src) + 8*len(t.parts)
		return t
	}
	sources := [...]string{m.GetTitle(), m.GetSubtitle(), m.GetBody(), m.GetImageUrl(), m.GetDeepLink()}
	for i, src := range sources {
		t := parse(textFields[i], src)
		t.url = textFields[i] == "image_url" || textFields[i] == "deep_link"
		c.texts = append(c.texts, t)
	}
	for k := range m.GetData() {
		c.dataKeys = append(c.dataKeys, k)
	}
	sort.Strings(c.dataKeys)
	for _, k := range c.dataKeys {
		c.texts = append(c.texts, parse(fmt.Sprintf("data[%q]", k), m.GetData()[k]))
	}
	static := true
	for _, t := range c.texts {
		static = static && t.Static()
	}
	if static {
		n, err := c.renderFields(&Values{})
		if err == nil {
			c.static = &n
		}
	}
	return c
}

// render fills the notification for one profile. Every text field is
// rendered into one buffer and converted to a string once, so a profile
// costs one allocation for its texts (plus the data map, if any).
func (c *compiledMessage) render(v *Values) (delivery.Notification, error) {
	if c.static != nil {
		return *c.static, nil
	}
	return c.renderFields(v)
}

func (c *compiledMessage) renderFields(v *Values) (delivery.Notification, error) {
	var ends [16]int
	offsets := ends[:0]
	buf := make([]byte, 0, c.size+64)
	var err error
	for _, t := range c.texts {
		if buf, err = t.AppendRender(buf, v); err != nil {
			return delivery.Notification{}, err
		}
		offsets = append(offsets, len(buf))
	}
	s := string(buf)
	text := func(i int) string {
		from := 0
		if i > 0 {
			from = offsets[i-1]
		}
		return s[from:offsets[i]]
	}
	n := delivery.Notification{
		Title: text(0), Subtitle: text(1), Body: text(2), ImageURL: text(3), DeepLink: text(4),
		Sound: c.sound, Category: c.category, ThreadID: c.threadID, Badge: c.badge,
	}
	if len(c.dataKeys) > 0 {
		n.Data = make(map[string]string, len(c.dataKeys))
		for i, k := range c.dataKeys {
			n.Data[k] = text(len(textFields) + i)
		}
	}
	return n, nil
}

// variant is a TemplateVariant, compiled.
type variant struct {
	locale   string // lower case, "-" separated; "" matches any
	platform commonv1.Platform
	msg      *compiledMessage
}

// Content is a journey's messages, compiled: the default template and its
// variants by locale and platform.
type Content struct {
	def      *compiledMessage
	variants []variant
	// silent is set for background pushes, which may show nothing.
	silent bool
}

// localeAttribute is the profile attribute that picks a locale variant.
const localeAttribute = "locale"

// Limits of profilev1.MemberFields; a journey that reads more asks for
// whole members instead.
const (
	maxMemberAttributes = 256
	maxMemberNamespaces = 64
	maxAttributeNameLen = 256
)

// MemberFields is what rendering reads from an audience member, for
// QueryAudience to stream nothing else: the top-level attribute of every
// hole (a hole looks an attribute up first, so identity.x and profile_id
// name one too), the namespace of every identity.<namespace> hole, and the
// locale. Nil (whole members) when that is more than a selection may hold.
func (c *Content) MemberFields() *profilev1.MemberFields {
	attrs := map[string]bool{localeAttribute: true}
	namespaces := map[string]bool{}
	for _, m := range c.messages() {
		for _, t := range m.texts {
			for _, p := range t.parts {
				if p.ref == nil {
					continue
				}
				if len(p.ref[0]) > maxAttributeNameLen {
					continue // no stored attribute has such a name
				}
				attrs[p.ref[0]] = true
				if len(p.ref) == 2 && p.ref[0] == "identity" && validNamespace(p.ref[1]) {
					namespaces[p.ref[1]] = true
				}
			}
		}
	}
	if len(attrs) > maxMemberAttributes || len(namespaces) > maxMemberNamespaces {
		return nil
	}
	return &profilev1.MemberFields{
		Attributes:         slices.Sorted(maps.Keys(attrs)),
		IdentityNamespaces: slices.Sorted(maps.Keys(namespaces)),
	}
}

// validNamespace is profilesvc's rule for identity namespaces (1 to 64 of
// a-z, 0-9, '_' and '-', see profilev1.Identity): a hole naming any other
// namespace can never find an identity, and profilesvc would refuse it in
// a selection.
func validNamespace(ns string) bool {
	if ns == "" || len(ns) > 64 {
		return false
	}
	for i := 0; i < len(ns); i++ {
		c := ns[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// messages lists the default template and every variant's.
func (c *Content) messages() []*compiledMessage {
	out := []*compiledMessage{c.def}
	for _, vr := range c.variants {
		out = append(out, vr.msg)
	}
	return out
}

// Compile parses every template of j; errors name the field.
func Compile(j *deliveryv1.Journey) (*Content, error) {
	v := &fault.ValidationError{}
	c := &Content{silent: silent(j.GetDelivery())}
	if j.GetTemplate() == nil {
		v.Add("journey.template", "required")
		c.def = compileMessage(v, "journey.template", &deliveryv1.MessageTemplate{})
	} else {
		checkVisible(v, "journey.template", j.GetTemplate(), j.GetDelivery())
		c.def = compileMessage(v, "journey.template", j.GetTemplate())
	}
	seen := map[variant]int{}
	for i, tv := range j.GetVariants() {
		field := fmt.Sprintf("journey.variants[%d]", i)
		if tv.GetTemplate() == nil {
			v.Add(field+".template", "required")
			continue
		}
		locale := normalizeLocale(tv.GetLocale())
		switch {
		case locale == "" && tv.GetPlatform() == commonv1.Platform_PLATFORM_UNSPECIFIED:
			v.Add(field, "name a locale, a platform, or both")
		case tv.GetPlatform() != commonv1.Platform_PLATFORM_UNSPECIFIED && tv.GetPlatform() != commonv1.Platform_PLATFORM_APNS && tv.GetPlatform() != commonv1.Platform_PLATFORM_FCM:
			v.Add(field+".platform", "unknown platform %d", tv.GetPlatform())
		case !validLocale(locale):
			v.Add(field+".locale", "want a BCP 47 locale like \"fr\" or \"fr-CA\", got %q", tv.GetLocale())
		}
		key := variant{locale: locale, platform: tv.GetPlatform()}
		if first, dup := seen[key]; dup {
			v.Add(field, "same locale and platform as journey.variants[%d]", first)
		}
		seen[key] = i
		// A variant replaces the default template for its profiles, so it
		// must show something as well.
		checkVisible(v, field+".template", tv.GetTemplate(), j.GetDelivery())
		key.msg = compileMessage(v, field+".template", tv.GetTemplate())
		key.msg.platform = tv.GetPlatform()
		c.variants = append(c.variants, key)
	}
	return c, v.Err()
}

// checkVisible requires a title or a body, unless the journey sends silent
// (background) pushes: otherwise the profiles would get an empty push,
// counted as sent.
func checkVisible(v *fault.ValidationError, field string, m *deliveryv1.MessageTemplate, d *deliveryv1.DeliveryOptions) {
	if blank(m.GetTitle()) && blank(m.GetBody()) && !silent(d) {
		v.Add(field, "needs a title or a body (or apns_push_type BACKGROUND for a silent push)")
	}
}

// silent reports whether a journey sends background pushes, which show
// nothing and need no title or body.
func silent(d *deliveryv1.DeliveryOptions) bool {
	return d.GetApnsPushType() == deliveryv1.ApnsPushType_APNS_PUSH_TYPE_BACKGROUND
}

// normalizeLocale lower-cases a locale and uses "-" as its separator, so
// "fr_CA", "fr-ca" and "fr-CA" are one locale.
func normalizeLocale(s string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "_", "-"))
}

func validLocale(s string) bool {
	if s == "" {
		return true
	}
	if len(s) > 35 {
		return false
	}
	for _, sub := range strings.Split(s, "-") {
		if sub == "" || len(sub) > 8 {
			return false
		}
		for _, r := range sub {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
				return false
			}
		}
	}
	return true
}

// pick chooses the most specific variant for a platform and locale:
// platform+locale, platform+language, locale, language, platform, default.
// A variant's locale matches when it is the profile's locale or a prefix of
// it in whole subtags, and the longest match wins, as in BCP 47 lookup: a
// "zh-Hant" variant serves "zh-Hant-TW" and "zh-Hant-HK" before a "zh" one.
func (c *Content) pick(platform commonv1.Platform, locale string) *compiledMessage {
	if len(c.variants) == 0 {
		return c.def
	}
	locale = profileLocale(locale)
	best, bestScore := c.def, 0
	for i := range c.variants {
		vr := &c.variants[i]
		if vr.platform != commonv1.Platform_PLATFORM_UNSPECIFIED && vr.platform != platform {
			continue
		}
		// Scores: platform alone 1; a locale matching n subtags 10+n,
		// and with the platform 100+10+n, above any score without it, so
		// platform+language beats a bare full locale.
		score := 0
		if vr.locale != "" {
			n := matchingSubtags(vr.locale, locale)
			if n == 0 {
				continue
			}
			score = 10 + n
		}
		if vr.platform != commonv1.Platform_PLATFORM_UNSPECIFIED {
			if score > 0 {
				score += 100
			} else {
				score = 1
			}
		}
		if score > bestScore {
			best, bestScore = vr.msg, score
		}
	}
	return best
}

// profileLocale normalizes a profile's locale as CRMs and devices spell it:
// any case, "_" or "-", and a POSIX encoding or modifier ("pt_BR.UTF-8",
// "de_DE@euro") dropped.
func profileLocale(s string) string {
	if i := strings.IndexAny(s, ".@"); i >= 0 {
		s = s[:i]
	}
	return normalizeLocale(s)
}

// matchingSubtags is the number of subtags of a variant's locale when it is
// the profile's locale or a prefix of it in whole subtags, else 0.
func matchingSubtags(variant, locale string) int {
	if variant != locale && !(strings.HasPrefix(locale, variant) && locale[len(variant)] == '-') {
		return 0
	}
	return strings.Count(variant, "-") + 1
}

// Render renders the notification for one profile on one platform. A
// notification that the profile's values made invalid (an image URL that is
// not one, a reserved key, a text over its limit) is a render error too: the
// profile is excluded with the reason, rather than its sends failing. A
// static template was checked at publish.
func (c *Content) Render(platform commonv1.Platform, locale string, v *Values) (delivery.Notification, error) {
	cm := c.pick(platform, locale)
	n, err := cm.render(v)
	if err != nil || cm.static != nil {
		return n, err
	}
	// A title and a body that both render blank (the values they read are
	// missing or blank, with no default) would not be an alert at all: the
	// pipeline would send APNs a silent background push and FCM a data-only
	// message, counted as sent, and the user would see nothing.
	if !c.silent && blank(n.Title) && blank(n.Body) {
		return delivery.Notification{}, errors.New("the title and body render blank for this profile (the values they read are missing or blank; give them a default)")
	}
	if err := delivery.ValidateNotification(&n); err != nil {
		return delivery.Notification{}, fmt.Errorf("the profile's values make an invalid notification: %w", err)
	}
	return n, nil
}
