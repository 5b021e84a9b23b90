package journey

import (
	"fmt"
	"sort"
	"strings"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// compiledMessage is a MessageTemplate with every text field parsed.
type compiledMessage struct {
	title, subtitle, body, image, deepLink *Template
	data                                   map[string]*Template
	dataKeys                               []string
	sound, category, threadID              string
	badge                                  *int32
}

func compileMessage(v *fault.ValidationError, field string, m *deliveryv1.MessageTemplate) *compiledMessage {
	c := &compiledMessage{data: map[string]*Template{}, sound: m.GetSound(), category: m.GetCategory(), threadID: m.GetThreadId()}
	if m.Badge != nil {
		b := m.GetBadge()
		c.badge = &b
	}
	parse := func(name, src string) *Template {
		t, err := ParseTemplate(src)
		if err != nil {
			v.Add(field+"."+name, "%v", err)
		}
		return t
	}
	c.title = parse("title", m.GetTitle())
	c.subtitle = parse("subtitle", m.GetSubtitle())
	c.body = parse("body", m.GetBody())
	c.image = parse("image_url", m.GetImageUrl())
	c.deepLink = parse("deep_link", m.GetDeepLink())
	for k, src := range m.GetData() {
		c.data[k] = parse("data["+k+"]", src)
		c.dataKeys = append(c.dataKeys, k)
	}
	sort.Strings(c.dataKeys)
	return c
}

func (c *compiledMessage) render(v *Values) (delivery.Notification, error) {
	var n delivery.Notification
	var err error
	fields := []struct {
		t   *Template
		dst *string
	}{{c.title, &n.Title}, {c.subtitle, &n.Subtitle}, {c.body, &n.Body}, {c.image, &n.ImageURL}, {c.deepLink, &n.DeepLink}}
	for _, f := range fields {
		if *f.dst, err = f.t.Render(v); err != nil {
			return n, err
		}
	}
	if len(c.data) > 0 {
		n.Data = make(map[string]string, len(c.data))
		for _, k := range c.dataKeys {
			if n.Data[k], err = c.data[k].Render(v); err != nil {
				return n, err
			}
		}
	}
	n.Sound, n.Category, n.ThreadID, n.Badge = c.sound, c.category, c.threadID, c.badge
	return n, nil
}

// variant is a TemplateVariant, compiled.
type variant struct {
	locale   string // lower case; "" matches any
	platform commonv1.Platform
	msg      *compiledMessage
}

// Content is a journey's messages, compiled: the default template and its
// variants by locale and platform.
type Content struct {
	def      *compiledMessage
	variants []variant
}

// Compile parses every template of j; errors name the field.
func Compile(j *deliveryv1.Journey) (*Content, error) {
	v := &fault.ValidationError{}
	c := &Content{}
	if j.GetTemplate() == nil {
		v.Add("journey.template", "required")
	} else {
		if j.GetTemplate().GetTitle() == "" && j.GetTemplate().GetBody() == "" {
			v.Add("journey.template", "needs a title or a body")
		}
		c.def = compileMessage(v, "journey.template", j.GetTemplate())
	}
	for i, tv := range j.GetVariants() {
		field := fmt.Sprintf("journey.variants[%d]", i)
		if tv.GetTemplate() == nil {
			v.Add(field+".template", "required")
			continue
		}
		if tv.GetLocale() == "" && tv.GetPlatform() == commonv1.Platform_PLATFORM_UNSPECIFIED {
			v.Add(field, "name a locale, a platform, or both")
		}
		c.variants = append(c.variants, variant{
			locale:   strings.ToLower(tv.GetLocale()),
			platform: tv.GetPlatform(),
			msg:      compileMessage(v, field+".template", tv.GetTemplate()),
		})
	}
	return c, v.Err()
}

// pick chooses the most specific variant for a platform and locale:
// platform+locale, platform+language, locale, language, platform, default.
func (c *Content) pick(platform commonv1.Platform, locale string) *compiledMessage {
	locale = strings.ToLower(locale)
	lang, _, _ := strings.Cut(strings.ReplaceAll(locale, "_", "-"), "-")
	best, bestScore := c.def, 0
	for i := range c.variants {
		vr := &c.variants[i]
		score := 0
		switch {
		case vr.platform != commonv1.Platform_PLATFORM_UNSPECIFIED && vr.platform != platform:
			continue
		case vr.locale == "":
		case vr.locale == locale:
			score += 4
		case vr.locale == lang:
			score += 2
		default:
			continue
		}
		if vr.platform != commonv1.Platform_PLATFORM_UNSPECIFIED {
			score += 1
			if vr.locale != "" {
				score += 4 // platform+locale beats a bare locale
			}
		}
		if score > bestScore {
			best, bestScore = vr.msg, score
		}
	}
	return best
}

// Render renders the notification for one profile on one platform.
func (c *Content) Render(platform commonv1.Platform, locale string, v *Values) (delivery.Notification, error) {
	return c.pick(platform, locale).render(v)
}
