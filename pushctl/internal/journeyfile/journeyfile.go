// Package journeyfile reads a journey from a YAML or JSON file. Both formats
// share one schema, the Journey message in protojson field names
// ("appIds" or "app_ids", "PLATFORM_APNS"), so a file can be written by hand
// or produced by `pushctl journey get --json`. Before protojson reads it the
// file is checked against the message descriptors, so a mistake is reported
// with its line and field path ("journey.yaml:7: template.titel: unknown
// field, did you mean title?"). For hand-written files enum values may use
// their short lowercase form ("apns", "high") and durations Go's form ("1h").
package journeyfile

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/pushctl/internal/enums"
)

// Error is a problem in a journey file, with where it is.
type Error struct {
	File string
	Line int    // 0 when unknown
	Path string // field path, e.g. "variants[1].template.title"; empty for the whole file
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Parse reads a journey from data; name (the file name) picks the format by
// extension (.json, .yaml, .yml; otherwise by content) and labels errors.
func Parse(name string, data []byte) (*deliveryv1.Journey, error) {
	var (
		root *node
		err  error
	)
	if isJSON(name, data) {
		root, err = parseJSON(data)
	} else {
		root, err = parseYAML(data)
	}
	if err != nil {
		return nil, &Error{File: name, Msg: err.Error()}
	}
	j := &deliveryv1.Journey{}
	c := &checker{file: name}
	v, err := c.message(j.ProtoReflect().Descriptor(), root, "")
	if err != nil {
		return nil, err
	}
	normalized, err := json.Marshal(v)
	if err != nil {
		return nil, &Error{File: name, Msg: err.Error()}
	}
	if err := protojson.Unmarshal(normalized, j); err != nil {
		return nil, &Error{File: name, Msg: err.Error()}
	}
	return j, nil
}

func isJSON(name string, data []byte) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		return true
	case ".yaml", ".yml":
		return false
	}
	trimmed := strings.TrimLeft(string(data), " \t\r\n\ufeff")
	return strings.HasPrefix(trimmed, "{")
}

// checker walks a node tree against a message descriptor and returns the
// equivalent protojson value (maps, slices, strings, json.Number, bools).
type checker struct {
	file string
}

func (c *checker) fail(n *node, path, format string, args ...any) error {
	return &Error{File: c.file, Line: n.line, Path: path, Msg: fmt.Sprintf(format, args...)}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (c *checker) message(md protoreflect.MessageDescriptor, n *node, path string) (any, error) {
	if n.kind != kindObject {
		return nil, c.fail(n, path, "want an object with fields %s, got %s", fieldList(md), n.kind)
	}
	out := make(map[string]any, len(n.keys))
	fields := md.Fields()
	for i, key := range n.keys {
		val, fpath := n.vals[i], join(path, key)
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		if fd == nil {
			msg := "unknown field"
			if s := suggest(md, key); s != "" {
				msg += fmt.Sprintf(", did you mean %s?", s)
			}
			return nil, c.fail(val, fpath, "%s (fields: %s)", msg, fieldList(md))
		}
		if _, dup := out[fd.JSONName()]; dup {
			return nil, c.fail(val, fpath, "field given twice (as %s and %s)", fd.JSONName(), fd.TextName())
		}
		if val.kind == kindNull {
			continue // null leaves a field unset, as in protojson
		}
		v, err := c.field(fd, val, fpath)
		if err != nil {
			return nil, err
		}
		out[fd.JSONName()] = v
	}
	return out, nil
}

func (c *checker) field(fd protoreflect.FieldDescriptor, n *node, path string) (any, error) {
	switch {
	case fd.IsMap():
		if n.kind != kindObject {
			return nil, c.fail(n, path, "want an object of key: value pairs, got %s", n.kind)
		}
		out := make(map[string]any, len(n.keys))
		for i, k := range n.keys {
			v, err := c.single(fd.MapValue(), n.vals[i], fmt.Sprintf("%s[%q]", path, k))
			if err != nil {
				return nil, err
			}
			out[k] = v
		}
		return out, nil
	case fd.IsList():
		if n.kind != kindArray {
			return nil, c.fail(n, path, "want a list, got %s", n.kind)
		}
		out := make([]any, 0, len(n.items))
		for i, item := range n.items {
			v, err := c.single(fd, item, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	default:
		return c.single(fd, n, path)
	}
}

// single checks one value of fd's type (one list item or map value).
func (c *checker) single(fd protoreflect.FieldDescriptor, n *node, path string) (any, error) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return c.messageValue(fd.Message(), n, path)
	case protoreflect.EnumKind:
		return c.enum(fd.Enum(), n, path)
	case protoreflect.BoolKind:
		if n.kind != kindBool {
			return nil, c.fail(n, path, "want true or false, got %s", describe(n))
		}
		return n.bool, nil
	case protoreflect.StringKind, protoreflect.BytesKind:
		// YAML reads `collapseId: 12345`, `code: 007` or `title: 1.10` as
		// numbers and `True` as a boolean; the text as written is meant,
		// not the decoded value re-formatted (7, 1.1, true).
		switch n.kind {
		case kindString, kindNumber, kindBool:
			return n.src, nil
		}
		return nil, c.fail(n, path, "want a string, got %s", n.kind)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		if n.kind == kindNumber {
			return json.Number(n.text), nil
		}
		if n.kind == kindString {
			if _, err := strconv.ParseFloat(n.text, 64); err == nil {
				return n.text, nil
			}
		}
		return nil, c.fail(n, path, "want a number, got %s", describe(n))
	default: // integer kinds
		return c.integer(fd.Kind(), n, path)
	}
}

func (c *checker) integer(k protoreflect.Kind, n *node, path string) (any, error) {
	if n.kind != kindNumber && n.kind != kindString {
		return nil, c.fail(n, path, "want a whole number, got %s", n.kind)
	}
	var lo, hi float64
	switch k {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		lo, hi = math.MinInt32, math.MaxInt32
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		lo, hi = 0, math.MaxUint32
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		lo, hi = 0, math.MaxUint64
	default:
		lo, hi = math.MinInt64, math.MaxInt64
	}
	f, err := strconv.ParseFloat(n.text, 64)
	if err != nil || f != math.Trunc(f) {
		return nil, c.fail(n, path, "want a whole number, got %s", describe(n))
	}
	if f < lo || f > hi {
		return nil, c.fail(n, path, "%s is out of range (%.0f to %.0f)", n.text, lo, hi)
	}
	return json.Number(n.text), nil
}

func (c *checker) enum(ed protoreflect.EnumDescriptor, n *node, path string) (any, error) {
	switch n.kind {
	case kindString:
		num, err := enums.Parse(ed, n.text)
		if err != nil {
			return nil, c.fail(n, path, "%v", err)
		}
		return string(ed.Values().ByNumber(num).Name()), nil
	case kindNumber:
		i, err := strconv.ParseInt(n.text, 10, 32)
		if err != nil || ed.Values().ByNumber(protoreflect.EnumNumber(i)) == nil {
			return nil, c.fail(n, path, "%s is not a value of %s; use one of %s", n.text, ed.Name(), strings.Join(enums.Words(ed), ", "))
		}
		return json.Number(n.text), nil
	}
	return nil, c.fail(n, path, "want one of %s, got %s", strings.Join(enums.Words(ed), ", "), n.kind)
}

// messageValue handles the well-known types protojson writes as scalars,
// and recurses into other messages.
func (c *checker) messageValue(md protoreflect.MessageDescriptor, n *node, path string) (any, error) {
	switch md.FullName() {
	case "google.protobuf.Timestamp":
		if n.kind != kindString {
			return nil, c.fail(n, path, "want an RFC 3339 time such as 2024-05-01T10:00:00Z, got %s", n.kind)
		}
		t, err := time.Parse(time.RFC3339Nano, n.text)
		if err != nil {
			return nil, c.fail(n, path, "want an RFC 3339 time such as 2024-05-01T10:00:00Z, got %q", n.text)
		}
		return t.UTC().Format(time.RFC3339Nano), nil
	case "google.protobuf.Duration":
		d, err := duration(n)
		if err != nil {
			return nil, c.fail(n, path, "%v", err)
		}
		return protoDuration(d), nil
	case "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue":
		return plain(n), nil
	}
	return c.message(md, n, path)
}

// duration reads "3600s", "1.5s" (protojson), Go's "1h30m", or a number of
// seconds.
func duration(n *node) (time.Duration, error) {
	const want = `want a duration such as "24h", "90m" or "3600s"`
	switch n.kind {
	case kindNumber:
		f, err := strconv.ParseFloat(n.text, 64)
		if err != nil {
			return 0, fmt.Errorf("%s, got %s", want, n.text)
		}
		return time.Duration(f * float64(time.Second)), nil
	case kindString:
		d, err := time.ParseDuration(n.text)
		if err != nil {
			return 0, fmt.Errorf("%s, got %q", want, n.text)
		}
		return d, nil
	}
	return 0, fmt.Errorf("%s, got %s", want, n.kind)
}

// protoDuration writes d in protojson's form: seconds with up to nine
// decimals and an "s".
func protoDuration(d time.Duration) string {
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	sec, nanos := int64(d/time.Second), int64(d%time.Second)
	if nanos == 0 {
		return fmt.Sprintf("%s%ds", sign, sec)
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, sec, nanos), "0") + "s"
}

// plain converts a node to a generic JSON value (for Struct fields).
func plain(n *node) any {
	switch n.kind {
	case kindBool:
		return n.bool
	case kindNumber:
		return json.Number(n.text)
	case kindString:
		return n.text
	case kindObject:
		m := make(map[string]any, len(n.keys))
		for i, k := range n.keys {
			m[k] = plain(n.vals[i])
		}
		return m
	case kindArray:
		l := make([]any, len(n.items))
		for i, it := range n.items {
			l[i] = plain(it)
		}
		return l
	}
	return nil
}

// describe quotes a value in an error message as the file has it.
func describe(n *node) string {
	switch n.kind {
	case kindString, kindNumber:
		return strconv.Quote(n.src)
	case kindBool:
		return n.src
	}
	return n.kind.String()
}

func fieldList(md protoreflect.MessageDescriptor) string {
	fields := md.Fields()
	names := make([]string, fields.Len())
	for i := range names {
		names[i] = fields.Get(i).JSONName()
	}
	return strings.Join(names, ", ")
}

// suggest returns the field name closest to a misspelt key, if close enough.
func suggest(md protoreflect.MessageDescriptor, key string) string {
	best, bestDist := "", 3
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		for _, name := range []string{fields.Get(i).JSONName(), fields.Get(i).TextName()} {
			if d := distance(strings.ToLower(key), strings.ToLower(name)); d < bestDist {
				best, bestDist = fields.Get(i).JSONName(), d
			}
		}
	}
	return best
}

// distance is the Levenshtein edit distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
