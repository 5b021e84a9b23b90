// Package render turns pushmesh responses into text a person can read:
// aligned tables, counts with thousands separators, enum labels, times, and
// push tokens shortened so a table never shows one in full.
package render

import (
	"io"
	"strings"
	"unicode/utf8"
)

// Align is a column's alignment.
type Align int

const (
	// Left aligns text columns.
	Left Align = iota
	// Right aligns number columns.
	Right
)

// Table is an aligned text table. Columns are separated by two spaces; the
// last column is never padded, so lines carry no trailing blanks.
type Table struct {
	header []string
	align  []Align
	rows   []tableRow
}

// tableRow is either a row of cells or a free line (cells == nil) printed as
// is, e.g. a token's history under its row, that does not widen columns.
type tableRow struct {
	cells []string
	free  string
}

// NewTable returns a table with the given column headers, all left aligned.
func NewTable(header ...string) *Table {
	return &Table{header: header, align: make([]Align, len(header))}
}

// AlignRight right-aligns the named columns (numbers).
func (t *Table) AlignRight(columns ...int) *Table {
	for _, c := range columns {
		if c >= 0 && c < len(t.align) {
			t.align[c] = Right
		}
	}
	return t
}

// Row appends a row; missing cells are blank and extra cells are dropped.
func (t *Table) Row(cells ...string) {
	row := make([]string, len(t.header))
	copy(row, cells)
	t.rows = append(t.rows, tableRow{cells: row})
}

// Line appends a free line printed under the previous row as is.
func (t *Table) Line(text string) {
	t.rows = append(t.rows, tableRow{free: text})
}

// Len is the number of rows (free lines excluded).
func (t *Table) Len() int {
	n := 0
	for _, r := range t.rows {
		if r.cells != nil {
			n++
		}
	}
	return n
}

// String renders the table.
func (t *Table) String() string {
	widths := make([]int, len(t.header))
	measure := func(cells []string) {
		for i, c := range cells {
			if w := utf8.RuneCountInString(c); w > widths[i] {
				widths[i] = w
			}
		}
	}
	measure(t.header)
	for _, r := range t.rows {
		if r.cells != nil {
			measure(r.cells)
		}
	}
	var b strings.Builder
	t.writeCells(&b, t.header, widths)
	for _, r := range t.rows {
		if r.cells == nil {
			b.WriteString(strings.TrimRight(r.free, " "))
			b.WriteByte('\n')
			continue
		}
		t.writeCells(&b, r.cells, widths)
	}
	return b.String()
}

// WriteTo writes the rendered table to w.
func (t *Table) WriteTo(w io.Writer) (int64, error) {
	n, err := io.WriteString(w, t.String())
	return int64(n), err
}

func (t *Table) writeCells(b *strings.Builder, cells []string, widths []int) {
	var line strings.Builder
	for i, c := range cells {
		if i > 0 {
			line.WriteString("  ")
		}
		pad := widths[i] - utf8.RuneCountInString(c)
		last := i == len(cells)-1
		switch {
		case t.align[i] == Right:
			line.WriteString(strings.Repeat(" ", pad))
			line.WriteString(c)
		case last:
			line.WriteString(c)
		default:
			line.WriteString(c)
			line.WriteString(strings.Repeat(" ", pad))
		}
	}
	b.WriteString(strings.TrimRight(line.String(), " "))
	b.WriteByte('\n')
}

// KeyValues is a two-column list of labels and values, used for a single
// object (one profile, one journey, a metrics summary). Values can be
// indented by level to show a breakdown under a total.
type KeyValues struct {
	rows []kv
}

type kv struct {
	level int
	key   string
	value string
	// number values are right-aligned in their own column.
	number bool
}

// Add appends a text value.
func (k *KeyValues) Add(key, value string) { k.rows = append(k.rows, kv{key: key, value: value}) }

// Number appends a right-aligned, already formatted number (a count, a
// percentage) at the given indentation level.
func (k *KeyValues) Number(level int, key string, value string) {
	k.rows = append(k.rows, kv{level: level, key: key, value: value, number: true})
}

// Len is the number of lines.
func (k *KeyValues) Len() int { return len(k.rows) }

// String renders the list: labels padded to one width, numbers
// right-aligned among themselves, text values left-aligned.
func (k *KeyValues) String() string {
	keyWidth, numWidth := 0, 0
	for _, r := range k.rows {
		if w := 2*r.level + utf8.RuneCountInString(r.key); w > keyWidth {
			keyWidth = w
		}
		if r.number {
			if w := utf8.RuneCountInString(r.value); w > numWidth {
				numWidth = w
			}
		}
	}
	var b strings.Builder
	for _, r := range k.rows {
		label := strings.Repeat("  ", r.level) + r.key
		var line strings.Builder
		line.WriteString(label)
		line.WriteString(strings.Repeat(" ", keyWidth-utf8.RuneCountInString(label)+2))
		if r.number {
			line.WriteString(strings.Repeat(" ", numWidth-utf8.RuneCountInString(r.value)))
		}
		line.WriteString(r.value)
		b.WriteString(strings.TrimRight(line.String(), " "))
		b.WriteByte('\n')
	}
	return b.String()
}
