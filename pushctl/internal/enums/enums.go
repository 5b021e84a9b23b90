// Package enums converts protobuf enum values to and from the short,
// lowercase words people type and read: PLATFORM_APNS is "apns",
// FAILURE_REASON_BAD_DEVICE_TOKEN is "bad-device-token" on the command line
// and "bad device token" in a table.
package enums

import (
	"fmt"
	"strings"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// prefix is the part every value name of an enum starts with by the buf
// STANDARD lint rules: the enum's name in UPPER_SNAKE_CASE and "_".
func prefix(ed protoreflect.EnumDescriptor) string {
	name := string(ed.Name())
	var b strings.Builder
	for i, r := range name {
		if unicode.IsUpper(r) && i > 0 {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	b.WriteByte('_')
	return b.String()
}

// short is a value name without its enum prefix, lowercase, words joined by sep.
func short(ed protoreflect.EnumDescriptor, vd protoreflect.EnumValueDescriptor, sep string) string {
	n := strings.TrimPrefix(string(vd.Name()), prefix(ed))
	return strings.ReplaceAll(strings.ToLower(n), "_", sep)
}

// Label is the value's name for a table: "bad device token". The zero
// (UNSPECIFIED) value is "-"; an unknown number is shown as the number.
func Label(e protoreflect.Enum) string {
	ed := e.Descriptor()
	if e.Number() == 0 {
		return "-"
	}
	vd := ed.Values().ByNumber(e.Number())
	if vd == nil {
		return fmt.Sprintf("%d", e.Number())
	}
	return short(ed, vd, " ")
}

// Word is the value's name as typed on the command line: "bad-device-token".
func Word(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) string {
	vd := ed.Values().ByNumber(n)
	if vd == nil {
		return fmt.Sprintf("%d", n)
	}
	return short(ed, vd, "-")
}

// Words lists the accepted command-line words of an enum, without the
// UNSPECIFIED value, in declaration order.
func Words(ed protoreflect.EnumDescriptor) []string {
	var out []string
	vals := ed.Values()
	for i := 0; i < vals.Len(); i++ {
		if vals.Get(i).Number() == 0 {
			continue
		}
		out = append(out, short(ed, vals.Get(i), "-"))
	}
	return out
}

// Parse reads a value from its short word in any case, with '-', '_' or ' '
// between words ("bad-device-token", "BAD_DEVICE_TOKEN"), or from its full
// name ("FAILURE_REASON_BAD_DEVICE_TOKEN"). The UNSPECIFIED value is never
// accepted: a caller that wants "not given" leaves the flag empty.
func Parse(ed protoreflect.EnumDescriptor, s string) (protoreflect.EnumNumber, error) {
	norm := strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return '_'
		}
		return unicode.ToUpper(r)
	}, strings.TrimSpace(s))
	p := prefix(ed)
	vals := ed.Values()
	for i := 0; i < vals.Len(); i++ {
		vd := vals.Get(i)
		if vd.Number() == 0 {
			continue
		}
		if name := string(vd.Name()); norm == name || p+norm == name {
			return vd.Number(), nil
		}
	}
	return 0, fmt.Errorf("%q is not one of %s", s, strings.Join(Words(ed), ", "))
}
