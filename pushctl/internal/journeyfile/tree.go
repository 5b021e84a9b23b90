package journeyfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"

	"gopkg.in/yaml.v3"
)

// kind is the JSON type of a node.
type kind int

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindObject
	kindArray
)

func (k kind) String() string {
	return [...]string{"null", "a boolean", "a number", "a string", "an object", "a list"}[k]
}

// node is a parsed JSON or YAML value that remembers the line it came from,
// so a schema error can point at it.
type node struct {
	kind kind
	text string // string value, or the number's decimal text
	// src is a scalar as written in the file: YAML's text without quotes
	// (007, 0x1F, True), JSON's string, number literal or true/false.
	// String fields take it, so numbers-looking text is never reformatted.
	src   string
	bool  bool
	keys  []string // object keys, in file order
	vals  []*node  // object values, parallel to keys
	items []*node  // list items
	line  int
}

// parseYAML reads a YAML document (YAML is a superset of most JSON).
func parseYAML(data []byte) (*node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, errors.New("the file is empty")
	}
	return fromYAML(doc.Content[0], 0)
}

// fromYAML converts a yaml.Node; depth guards against alias bombs.
func fromYAML(y *yaml.Node, depth int) (*node, error) {
	if depth > 100 {
		return nil, fmt.Errorf("line %d: nested too deeply", y.Line)
	}
	n := &node{line: y.Line}
	switch y.Kind {
	case yaml.AliasNode:
		return fromYAML(y.Alias, depth+1)
	case yaml.DocumentNode:
		if len(y.Content) == 0 {
			return &node{kind: kindNull, line: y.Line}, nil
		}
		return fromYAML(y.Content[0], depth+1)
	case yaml.MappingNode:
		n.kind = kindObject
		seen := map[string]bool{}
		for i := 0; i+1 < len(y.Content); i += 2 {
			k := y.Content[i]
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a key must be a plain name", k.Line)
			}
			if k.Value == "<<" {
				return nil, fmt.Errorf("line %d: merge keys (<<) are not supported; write the fields out", k.Line)
			}
			if seen[k.Value] {
				return nil, fmt.Errorf("line %d: key %q appears twice", k.Line, k.Value)
			}
			seen[k.Value] = true
			v, err := fromYAML(y.Content[i+1], depth+1)
			if err != nil {
				return nil, err
			}
			n.keys = append(n.keys, k.Value)
			n.vals = append(n.vals, v)
		}
	case yaml.SequenceNode:
		n.kind = kindArray
		for _, c := range y.Content {
			v, err := fromYAML(c, depth+1)
			if err != nil {
				return nil, err
			}
			n.items = append(n.items, v)
		}
	case yaml.ScalarNode:
		n.src = y.Value
		switch y.ShortTag() {
		case "!!null":
			n.kind = kindNull
		case "!!bool":
			n.kind = kindBool
			if err := y.Decode(&n.bool); err != nil {
				return nil, fmt.Errorf("line %d: %v", y.Line, err)
			}
		case "!!int":
			n.kind = kindNumber
			var i int64
			if err := y.Decode(&i); err != nil {
				// Too big for int64: keep the digits and let the schema judge.
				n.text = y.Value
			} else {
				n.text = strconv.FormatInt(i, 10)
			}
		case "!!float":
			var f float64
			if err := y.Decode(&f); err != nil {
				return nil, fmt.Errorf("line %d: %v", y.Line, err)
			}
			switch {
			case math.IsNaN(f):
				n.kind, n.text = kindString, "NaN"
			case math.IsInf(f, 1):
				n.kind, n.text = kindString, "Infinity"
			case math.IsInf(f, -1):
				n.kind, n.text = kindString, "-Infinity"
			default:
				n.kind, n.text = kindNumber, strconv.FormatFloat(f, 'g', -1, 64)
			}
		default: // !!str, !!timestamp, !!binary and custom tags keep their text
			n.kind, n.text = kindString, y.Value
		}
	default:
		return nil, fmt.Errorf("line %d: unsupported YAML construct", y.Line)
	}
	return n, nil
}

// parseJSON reads a JSON document with encoding/json's tokenizer, tracking
// lines.
func parseJSON(data []byte) (*node, error) {
	p := &jsonParser{dec: json.NewDecoder(bytes.NewReader(data)), lines: lineStarts(data)}
	p.dec.UseNumber()
	n, err := p.value()
	if err != nil {
		return nil, p.explain(err)
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("line %d: unexpected content after the journey object", p.line())
	}
	return n, nil
}

type jsonParser struct {
	dec   *json.Decoder
	lines []int
}

func lineStarts(data []byte) []int {
	starts := []int{0}
	for i, c := range data {
		if c == '\n' {
			starts = append(starts, i+1)
		}
	}
	return starts
}

// line is the line of the decoder's position (the end of the last token).
func (p *jsonParser) line() int { return p.lineAt(p.dec.InputOffset()) }

func (p *jsonParser) lineAt(off int64) int {
	return sort.Search(len(p.lines), func(i int) bool { return int64(p.lines[i]) > off })
}

func (p *jsonParser) explain(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("line %d: %v", p.lineAt(se.Offset), se)
	}
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("the file ends too early: a bracket or quote is not closed")
	}
	return err
}

func (p *jsonParser) value() (*node, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return nil, err
	}
	n := &node{line: p.line()}
	switch t := tok.(type) {
	case nil:
		n.kind = kindNull
	case bool:
		n.kind, n.bool, n.src = kindBool, t, strconv.FormatBool(t)
	case json.Number:
		n.kind, n.text, n.src = kindNumber, t.String(), t.String()
	case string:
		n.kind, n.text, n.src = kindString, t, t
	case json.Delim:
		switch t {
		case '{':
			n.kind = kindObject
			seen := map[string]bool{}
			for p.dec.More() {
				kt, err := p.dec.Token()
				if err != nil {
					return nil, err
				}
				key, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("line %d: want a field name", p.line())
				}
				if seen[key] {
					return nil, fmt.Errorf("line %d: key %q appears twice", p.line(), key)
				}
				seen[key] = true
				v, err := p.value()
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, key)
				n.vals = append(n.vals, v)
			}
			if _, err := p.dec.Token(); err != nil { // '}'
				return nil, err
			}
		case '[':
			n.kind = kindArray
			for p.dec.More() {
				v, err := p.value()
				if err != nil {
					return nil, err
				}
				n.items = append(n.items, v)
			}
			if _, err := p.dec.Token(); err != nil { // ']'
				return nil, err
			}
		default:
			return nil, fmt.Errorf("line %d: unexpected %q", p.line(), t)
		}
	}
	return n, nil
}
