package journey

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/structpb"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

// ErrMissingValue is a render error: a `required` value is absent. The
// profile is excluded with EXCLUSION_REASON_RENDER_ERROR; the journey goes on.
var ErrMissingValue = errors.New("missing required value")

// MaxTemplateLen bounds one template's source, in bytes.
const MaxTemplateLen = 16 << 10

// Template is a parsed text template: literal text and `{{ ... }}` holes.
//
// A hole names a value and optional filters:
//
//	{{firstName}}                    attributes.firstName ("" when missing)
//	{{address.city}}                 a nested attribute
//	{{identity.customer_id}}         the first identity of that namespace
//	{{profile_id}}                   the profile id
//	{{firstName | default "there"}}  a fallback when missing, empty or blank
//	{{firstName | required}}         missing, empty or blank → the profile is excluded
//	{{tier | upper}}, lower, title   case filters
//	{{path | raw}}                   no URL escaping (below)
//
// In a URL field (image_url, deep_link) a hole's value is percent-encoded
// (every byte but letters, digits and "-._~"), so that a value such as
// "a/b?admin=1#x" or "Zoë Smith" stays one path segment or query value and
// cannot add a segment, a parameter or a fragment; a value is data, never
// URL syntax. Two exceptions: a hole that begins the field supplies the URL
// itself ({{link}}) and is inserted as it is, and `raw` inserts a value the
// marketer trusts to be URL syntax. Other fields are text and are never
// escaped; the payload encoders escape them for JSON.
//
// A name is looked up in the attributes first (dots walk nested objects),
// then, when no attribute has that path, `identity.<namespace>` in the
// identities and `profile_id` as the profile id. Filters apply left to
// right. Numbers print as people write them (3, 2.5), booleans as
// true/false, lists as "a, b" (items that print nothing left out); an
// object prints nothing, so it is missing.
//
// A template is parsed once (ParseTemplate) and rendered per profile
// (AppendRender) without allocating for the lookups themselves.
type Template struct {
	src   string
	parts []part
	// url marks a URL field: values after its start are percent-encoded.
	url bool
}

type part struct {
	lit     string // literal text, when ref is nil
	ref     []string
	name    string // ref joined, for errors
	filters []filter
	raw     bool // the raw filter: never URL-escaped
}

type filterKind uint8

const (
	filterDefault filterKind = iota + 1
	filterRequired
	filterUpper
	filterLower
	filterTitle
)

type filter struct {
	kind filterKind
	arg  string // default's fallback
}

// Values is what a template reads: one profile.
type Values struct {
	ProfileID  string
	Attributes *structpb.Struct
	// Identities are the profile's identities; identity.<namespace> reads
	// the first of that namespace.
	Identities []*profilev1.Identity
	// StandIn, when set, renders in place of a missing `required` value
	// instead of failing with ErrMissingValue, so publish can check what
	// the rest of a template renders to for a sample profile that lacks
	// the value. Journeys render with it empty.
	StandIn string
}

// ParseTemplate parses src; an error names the byte offset of the problem.
func ParseTemplate(src string) (*Template, error) {
	if len(src) > MaxTemplateLen {
		return nil, fmt.Errorf("at most %d bytes, got %d", MaxTemplateLen, len(src))
	}
	if !utf8.ValidString(src) {
		return nil, errors.New("must be valid UTF-8")
	}
	t := &Template{src: src}
	rest := src
	offset := 0
	for rest != "" {
		i := strings.Index(rest, "{{")
		if i < 0 {
			t.parts = append(t.parts, part{lit: rest})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, part{lit: rest[:i]})
		}
		j := closing(rest[i+2:])
		if j < 0 {
			return nil, fmt.Errorf("at %d: %q is not closed with }}", offset+i, "{{")
		}
		p, err := parseHole(rest[i+2 : i+2+j])
		if err != nil {
			return nil, fmt.Errorf("at %d: %w", offset+i, err)
		}
		t.parts = append(t.parts, p)
		offset += i + 2 + j + 2
		rest = rest[i+2+j+2:]
	}
	return t, nil
}

// closing finds the "}}" that ends a hole, skipping quoted strings so a
// fallback may contain "}}".
func closing(s string) int {
	quoted := false
	for i := 0; i < len(s); i++ {
		switch {
		case quoted && s[i] == '\\':
			i++
		case s[i] == '"':
			quoted = !quoted
		case !quoted && s[i] == '}' && i+1 < len(s) && s[i+1] == '}':
			return i
		}
	}
	return -1
}

func parseHole(s string) (part, error) {
	segs := splitPipes(s)
	name := strings.TrimSpace(segs[0])
	if name == "" {
		return part{}, errors.New("empty {{ }}: name a value, e.g. {{firstName}}")
	}
	for _, r := range name {
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '.' || r == '-') {
			return part{}, fmt.Errorf("invalid value name %q", name)
		}
	}
	p := part{ref: strings.Split(name, "."), name: name}
	for _, seg := range p.ref {
		if seg == "" {
			return part{}, fmt.Errorf("invalid value name %q", name)
		}
	}
	for _, f := range segs[1:] {
		f = strings.TrimSpace(f)
		fname, arg, _ := strings.Cut(f, " ")
		arg = strings.TrimSpace(arg)
		switch fname {
		case "default":
			v, err := strconv.Unquote(arg)
			if err != nil || !strings.HasPrefix(arg, `"`) {
				return part{}, fmt.Errorf("default wants a double-quoted string, e.g. default \"there\"; got %q", arg)
			}
			p.filters = append(p.filters, filter{kind: filterDefault, arg: v})
		case "required", "upper", "lower", "title", "raw":
			if arg != "" {
				return part{}, fmt.Errorf("filter %s takes no argument", fname)
			}
			if fname == "raw" {
				// Not a transformation: it marks the hole, whose value
				// is then never URL-escaped.
				p.raw = true
				continue
			}
			kind := map[string]filterKind{"required": filterRequired, "upper": filterUpper, "lower": filterLower, "title": filterTitle}[fname]
			p.filters = append(p.filters, filter{kind: kind})
		case "":
			return part{}, errors.New("empty filter after |")
		default:
			return part{}, fmt.Errorf("unknown filter %q (want default, required, upper, lower, title or raw)", fname)
		}
	}
	return p, nil
}

// splitPipes splits on '|' outside double quotes.
func splitPipes(s string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case '|':
			if !quoted {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

// Static reports whether the template has no holes: it renders as its
// source.
func (t *Template) Static() bool {
	for _, p := range t.parts {
		if p.ref != nil {
			return false
		}
	}
	return true
}

// Render fills the template from v.
func (t *Template) Render(v *Values) (string, error) {
	if t == nil {
		return "", nil
	}
	if t.Static() {
		return t.src, nil
	}
	b, err := t.AppendRender(make([]byte, 0, len(t.src)+16), v)
	return string(b), err
}

// AppendRender appends the template filled from v to b. On a render error
// b is returned unchanged.
func (t *Template) AppendRender(b []byte, v *Values) ([]byte, error) {
	if t == nil {
		return b, nil
	}
	start := len(b)
	for i := range t.parts {
		p := &t.parts[i]
		if p.ref == nil {
			b = append(b, p.lit...)
			continue
		}
		valStart := len(b)
		stoodIn := false
		b = appendLookup(b, p.ref, v)
		for _, f := range p.filters {
			switch f.kind {
			case filterDefault:
				if blank(b[valStart:]) {
					b = append(b[:valStart], f.arg...)
				}
			case filterRequired:
				if blank(b[valStart:]) {
					b = b[:valStart]
					if v.StandIn == "" {
						return b[:start], fmt.Errorf("%w: %s", ErrMissingValue, p.name)
					}
					b = append(b, v.StandIn...)
					stoodIn = true
				}
			case filterUpper:
				b = mapTail(b, valStart, strings.ToUpper)
			case filterLower:
				b = mapTail(b, valStart, strings.ToLower)
			case filterTitle:
				b = mapTail(b, valStart, titleCase)
			}
		}
		// The stand-in is a URL made to check the rest of the field as a
		// profile's value would leave it: escaping it would check another
		// field.
		if t.url && valStart != start && !p.raw && !stoodIn {
			b = escapeTail(b, valStart)
		}
	}
	return b, nil
}

// escapeTail percent-encodes b[from:] in place: every byte but RFC 3986's
// unreserved characters (letters, digits, "-._~"). Those are literal in any
// part of a URL (path, query, fragment), so an escaped value never changes
// the URL's structure. Nothing is allocated when the value needs no escape.
func escapeTail(b []byte, from int) []byte {
	n := 0
	for _, c := range b[from:] {
		if !unreserved(c) {
			n++
		}
	}
	if n == 0 {
		return b
	}
	end := len(b)
	b = append(b, make([]byte, 2*n)...)
	// Fill from the back, so the value is read before it is overwritten.
	w := len(b)
	for r := end - 1; r >= from; r-- {
		c := b[r]
		if unreserved(c) {
			w--
			b[w] = c
			continue
		}
		w -= 3
		b[w], b[w+1], b[w+2] = '%', upperHex[c>>4], upperHex[c&0xf]
	}
	return b
}

const upperHex = "0123456789ABCDEF"

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// blank reports whether a value shows nothing: empty or only white space
// (CRMs export " " for an unknown value). default and required treat it as
// missing.
func blank[T string | []byte](s T) bool {
	for _, r := range string(s) {
		if !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// mapTail replaces b[from:] with f of it.
func mapTail(b []byte, from int, f func(string) string) []byte {
	s := string(b[from:])
	return append(b[:from], f(s)...)
}

func titleCase(s string) string {
	prev := ' '
	return strings.Map(func(r rune) rune {
		defer func() { prev = r }()
		if unicode.IsSpace(prev) {
			return unicode.ToTitle(r)
		}
		return r
	}, s)
}

// appendLookup appends the value named by ref: an attribute first, then an
// identity or the profile id.
func appendLookup(b []byte, ref []string, v *Values) []byte {
	if val := attributeAt(ref, v.Attributes); val != nil {
		return appendValue(b, val)
	}
	switch {
	case len(ref) == 2 && ref[0] == "identity":
		for _, id := range v.Identities {
			if id.GetNamespace() == ref[1] {
				return append(b, id.GetValue()...)
			}
		}
	case len(ref) == 1 && ref[0] == "profile_id":
		return append(b, v.ProfileID...)
	}
	return b
}

// attributeAt walks a dotted path through nested objects; nil when absent.
func attributeAt(ref []string, attrs *structpb.Struct) *structpb.Value {
	fields := attrs.GetFields()
	for i, name := range ref {
		val := fields[name]
		if val == nil {
			return nil
		}
		if i == len(ref)-1 {
			if _, isNull := val.GetKind().(*structpb.Value_NullValue); isNull {
				return nil
			}
			return val
		}
		fields = val.GetStructValue().GetFields()
	}
	return nil
}

// appendValue prints an attribute value as people expect: 3 not 3.000000.
func appendValue(b []byte, v *structpb.Value) []byte {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return append(b, k.StringValue...)
	case *structpb.Value_NumberValue:
		return strconv.AppendFloat(b, k.NumberValue, 'f', -1, 64)
	case *structpb.Value_BoolValue:
		return strconv.AppendBool(b, k.BoolValue)
	case *structpb.Value_ListValue:
		// Items that print nothing (null, objects, empty strings) are
		// left out with their separator: "a, b", not "a, , b".
		shown := 0
		for _, item := range k.ListValue.GetValues() {
			mark := len(b)
			if shown > 0 {
				b = append(b, ", "...)
			}
			itemStart := len(b)
			b = appendValue(b, item)
			if len(b) == itemStart {
				b = b[:mark]
				continue
			}
			shown++
		}
	}
	return b
}
