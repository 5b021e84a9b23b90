package journey

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"google.golang.org/protobuf/types/known/structpb"
)

// ErrMissingValue is a render error: a `required` value is absent. The
// profile is excluded with EXCLUSION_REASON_RENDER_ERROR; the journey goes on.
var ErrMissingValue = errors.New("missing required value")

// Template is a parsed text template: literal text and `{{ ... }}` holes.
//
// A hole names a value and optional filters:
//
//	{{firstName}}                    attributes.firstName ("" when missing)
//	{{address.city}}                 a nested attribute
//	{{identity.customer_id}}         the first identity of that namespace
//	{{profile_id}}                   the profile id
//	{{firstName | default "there"}}  a fallback when missing or empty
//	{{firstName | required}}         missing → the profile is excluded
//	{{tier | upper}}, lower, title   case filters
type Template struct {
	src   string
	parts []part
}

type part struct {
	lit     string // literal text, when ref is nil
	ref     []string
	filters []filter
}

type filter struct {
	name string
	arg  string
}

// Values is what a template reads: one profile.
type Values struct {
	ProfileID  string
	Attributes *structpb.Struct
	// Identities maps a namespace to its first value.
	Identities map[string]string
}

// ParseTemplate parses src; an error names the position.
func ParseTemplate(src string) (*Template, error) {
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
		j := strings.Index(rest[i:], "}}")
		if j < 0 {
			return nil, fmt.Errorf("at %d: %q is not closed with }}", offset+i, "{{")
		}
		p, err := parseHole(rest[i+2 : i+j])
		if err != nil {
			return nil, fmt.Errorf("at %d: %w", offset+i, err)
		}
		t.parts = append(t.parts, p)
		offset += i + j + 2
		rest = rest[i+j+2:]
	}
	return t, nil
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
	p := part{ref: strings.Split(name, ".")}
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
			if err != nil {
				return part{}, fmt.Errorf("default wants a quoted string, e.g. default \"there\"; got %q", arg)
			}
			p.filters = append(p.filters, filter{name: fname, arg: v})
		case "required", "upper", "lower", "title":
			if arg != "" {
				return part{}, fmt.Errorf("filter %s takes no argument", fname)
			}
			p.filters = append(p.filters, filter{name: fname})
		default:
			return part{}, fmt.Errorf("unknown filter %q (want default, required, upper, lower or title)", fname)
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

// Static reports whether the template has no holes.
func (t *Template) Static() bool {
	return len(t.parts) <= 1 && (len(t.parts) == 0 || t.parts[0].ref == nil)
}

// Render fills the template from v.
func (t *Template) Render(v *Values) (string, error) {
	if t == nil {
		return "", nil
	}
	if t.Static() {
		return t.src, nil
	}
	var b strings.Builder
	b.Grow(len(t.src) + 16)
	for _, p := range t.parts {
		if p.ref == nil {
			b.WriteString(p.lit)
			continue
		}
		s := lookup(p.ref, v)
		for _, f := range p.filters {
			switch f.name {
			case "default":
				if s == "" {
					s = f.arg
				}
			case "required":
				if s == "" {
					return "", fmt.Errorf("%w: %s", ErrMissingValue, strings.Join(p.ref, "."))
				}
			case "upper":
				s = strings.ToUpper(s)
			case "lower":
				s = strings.ToLower(s)
			case "title":
				s = titleCase(s)
			}
		}
		b.WriteString(s)
	}
	return b.String(), nil
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

func lookup(ref []string, v *Values) string {
	switch {
	case len(ref) == 1 && ref[0] == "profile_id":
		return v.ProfileID
	case len(ref) == 2 && ref[0] == "identity":
		return v.Identities[ref[1]]
	}
	fields := v.Attributes.GetFields()
	var val *structpb.Value
	for i, name := range ref {
		val = fields[name]
		if val == nil {
			return ""
		}
		if i < len(ref)-1 {
			fields = val.GetStructValue().GetFields()
		}
	}
	return format(val)
}

// format prints an attribute value as people expect: 3 not 3.000000.
func format(v *structpb.Value) string {
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		return k.StringValue
	case *structpb.Value_NumberValue:
		return strconv.FormatFloat(k.NumberValue, 'f', -1, 64)
	case *structpb.Value_BoolValue:
		return strconv.FormatBool(k.BoolValue)
	case *structpb.Value_ListValue:
		items := make([]string, 0, len(k.ListValue.GetValues()))
		for _, item := range k.ListValue.GetValues() {
			items = append(items, format(item))
		}
		return strings.Join(items, ", ")
	}
	return ""
}
