// Package csvimport reads a CRM export of push tokens (CSV) and streams it to
// ProfileService.ImportTokens in batches. A malformed line is reported with
// its line number and skipped; it never aborts the import.
package csvimport

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A quoted field may span lines, but a stray quote must not swallow the rest
// of the file: a record longer than this is reported as malformed and
// reading resumes on the line after its first.
const (
	maxRecordLines = 64
	maxRecordBytes = 1 << 20
)

// Record is one CSV record and the line it starts on.
type Record struct {
	// Line is the 1-based physical line the record starts on.
	Line int
	// Fields are the record's fields, unquoted.
	Fields []string
}

// LineError is a malformed record. Reading can continue after it.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Malformed-record reasons.
var (
	errBareQuote       = errors.New(`a quote (") inside an unquoted field; quote the whole field and double inner quotes`)
	errAfterQuote      = errors.New(`unexpected text after a closing quote`)
	errUnterminated    = errors.New(`quoted field is never closed`)
	errRecordTooLarge  = fmt.Errorf("record spans more than %d lines or %d bytes; a quote is probably missing", maxRecordLines, maxRecordBytes)
	errNoHeader        = errors.New("the file is empty: want a header line naming the columns")
	delimiterCandidate = []byte{',', ';', '\t', '|'}
)

// physicalLine is one line of the file, without its line break.
type physicalLine struct {
	text string
	num  int
}

// Reader reads CSV records (RFC 4180: fields separated by a delimiter,
// optionally quoted with "", "" inside quotes for a quote, line breaks
// allowed inside quotes). Blank lines are skipped. The delimiter is detected
// from the header line: ',', ';', tab or '|'.
type Reader struct {
	src      *bufio.Reader
	delim    byte
	lastLine int   // number of the last line read from src
	offset   int64 // bytes consumed from src
	// pushback holds lines already read that must be read again: after a
	// malformed multi-line record, reading resumes on its second line.
	pushback []physicalLine
	// fields is reused by every record, as encoding/csv's ReuseRecord does.
	fields []string
}

// NewReader reads CSV from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{src: bufio.NewReaderSize(r, 64<<10), delim: ','}
}

// Offset is the number of bytes consumed so far, for progress against the
// file size.
func (r *Reader) Offset() int64 { return r.offset }

// Delimiter is the field delimiter in use.
func (r *Reader) Delimiter() byte { return r.delim }

// ReadHeader reads the first non-blank line, strips a UTF-8 byte order mark,
// detects the delimiter and returns the column names.
func (r *Reader) ReadHeader() (Record, error) {
	for {
		pl, err := r.nextLine()
		if err == io.EOF {
			return Record{}, errNoHeader
		}
		if err != nil {
			return Record{}, err
		}
		text := strings.TrimPrefix(pl.text, "\ufeff")
		if strings.TrimSpace(text) == "" {
			continue
		}
		r.delim = sniffDelimiter(text)
		return r.parse(physicalLine{text: text, num: pl.num})
	}
}

// Read returns the next record, a *LineError for a malformed one (call Read
// again to continue), io.EOF at the end, or another error reading the input.
// The record's Fields slice is reused by the next Read; the strings in it
// are not.
func (r *Reader) Read() (Record, error) {
	for {
		pl, err := r.nextLine()
		if err != nil {
			return Record{}, err
		}
		if strings.TrimSpace(pl.text) == "" {
			continue
		}
		return r.parse(pl)
	}
}

// nextLine returns the next physical line, from the pushback queue first.
func (r *Reader) nextLine() (physicalLine, error) {
	if len(r.pushback) > 0 {
		pl := r.pushback[0]
		r.pushback = r.pushback[1:]
		return pl, nil
	}
	var long []byte
	for {
		chunk, err := r.src.ReadSlice('\n')
		r.offset += int64(len(chunk))
		if err == bufio.ErrBufferFull {
			long = append(long, chunk...)
			continue
		}
		if long != nil {
			chunk = append(long, chunk...)
		}
		if err == io.EOF && len(chunk) == 0 {
			return physicalLine{}, io.EOF
		}
		if err != nil && err != io.EOF {
			return physicalLine{}, err
		}
		r.lastLine++
		n := len(chunk)
		if n > 0 && chunk[n-1] == '\n' {
			n--
		}
		if n > 0 && chunk[n-1] == '\r' {
			n--
		}
		return physicalLine{text: string(chunk[:n]), num: r.lastLine}, nil
	}
}

// parse reads one record starting with first, pulling more lines while a
// quoted field is open.
func (r *Reader) parse(first physicalLine) (Record, error) {
	rec := Record{Line: first.num, Fields: r.fields[:0]}
	defer func() { r.fields = rec.Fields[:0] }()
	line := first.text
	// consumed are the continuation lines of a multi-line record, kept so they
	// can be read again if the record turns out malformed.
	var consumed []physicalLine
	size := len(line)
	fail := func(err error) (Record, error) {
		r.pushback = append(consumed, r.pushback...)
		return Record{}, &LineError{Line: first.num, Err: err}
	}
	i := 0
	for {
		if i < len(line) && line[i] == '"' {
			var b strings.Builder
			i++
			for {
				j := strings.IndexByte(line[i:], '"')
				if j < 0 {
					b.WriteString(line[i:])
					next, err := r.nextLine()
					if err == io.EOF {
						return fail(errUnterminated)
					}
					if err != nil {
						return Record{}, err
					}
					consumed = append(consumed, next)
					size += len(next.text)
					if len(consumed) >= maxRecordLines || size > maxRecordBytes {
						return fail(errRecordTooLarge)
					}
					b.WriteByte('\n')
					line, i = next.text, 0
					continue
				}
				b.WriteString(line[i : i+j])
				i += j + 1
				if i < len(line) && line[i] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			rec.Fields = append(rec.Fields, b.String())
			if i == len(line) {
				return rec, nil
			}
			if line[i] != r.delim {
				return fail(errAfterQuote)
			}
			i++
			continue
		}
		end := len(line)
		if j := strings.IndexByte(line[i:], r.delim); j >= 0 {
			end = i + j
		}
		field := line[i:end]
		if strings.IndexByte(field, '"') >= 0 {
			return fail(errBareQuote)
		}
		rec.Fields = append(rec.Fields, field)
		if end == len(line) {
			return rec, nil
		}
		i = end + 1
	}
}

// sniffDelimiter picks the candidate delimiter that appears most often
// outside quotes in the header line; ',' when none does.
func sniffDelimiter(header string) byte {
	best, bestCount := byte(','), 0
	for _, d := range delimiterCandidate {
		count, quoted := 0, false
		for i := 0; i < len(header); i++ {
			switch c := header[i]; {
			case c == '"':
				quoted = !quoted
			case c == d && !quoted:
				count++
			}
		}
		if count > bestCount {
			best, bestCount = d, count
		}
	}
	return best
}
