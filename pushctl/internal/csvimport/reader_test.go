package csvimport

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// readAll reads every record, rendering each as "line:field|field" or
// "line:ERR reason" for a malformed one.
func readAll(t *testing.T, input string) (header string, got []string) {
	t.Helper()
	r := NewReader(strings.NewReader(input))
	h, err := r.ReadHeader()
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	header = strings.Join(h.Fields, "|")
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return header, got
		}
		var le *LineError
		if errors.As(err, &le) {
			got = append(got, itoa(le.Line)+":ERR "+le.Err.Error())
			continue
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		got = append(got, itoa(rec.Line)+":"+strings.Join(rec.Fields, "|"))
	}
}

func itoa(n int) string { return fmt.Sprintf("%03d", n) }

func TestReader(t *testing.T) {
	tests := []struct {
		name       string
		input      string
		wantHeader string
		want       []string
	}{
		{
			name:       "plain, no final newline",
			input:      "a,b,c\n1,2,3\n4,5,6",
			wantHeader: "a|b|c",
			want:       []string{"002:1|2|3", "003:4|5|6"},
		},
		{
			name:       "CRLF, BOM and blank lines",
			input:      "\ufeffa,b\r\n\r\n1,2\r\n   \r\n3,4\r\n",
			wantHeader: "a|b",
			want:       []string{"003:1|2", "005:3|4"},
		},
		{
			name:       "quoted fields with delimiters, quotes and empty values",
			input:      "a,b,c\n\"x, y\",\"say \"\"hi\"\"\",\"\"\n,,\n",
			wantHeader: "a|b|c",
			want:       []string{`002:x, y|say "hi"|`, "003:||"},
		},
		{
			name:       "a quoted field spanning lines keeps its first line number",
			input:      "a,b\n\"line one\nline two\",2\n3,4\n",
			wantHeader: "a|b",
			want:       []string{"002:line one\nline two|2", "004:3|4"},
		},
		{
			name:       "semicolon detected from the header",
			input:      "token;app;note\nt1;a1;\"x;y\"\n",
			wantHeader: "token|app|note",
			want:       []string{"002:t1|a1|x;y"},
		},
		{
			name:       "tab detected from the header",
			input:      "token\tapp\nt1\ta,1\n",
			wantHeader: "token|app",
			want:       []string{"002:t1|a,1"},
		},
		{
			name:       "a bare quote is malformed and reading continues",
			input:      "a,b\n1,x\"y\n2,3\n",
			wantHeader: "a|b",
			want:       []string{"002:ERR " + errBareQuote.Error(), "003:2|3"},
		},
		{
			name:       "text after a closing quote is malformed",
			input:      "a,b\n\"1\"x,2\n3,4\n",
			wantHeader: "a|b",
			want:       []string{"002:ERR " + errAfterQuote.Error(), "003:3|4"},
		},
		{
			name:       "an unclosed quote does not swallow the rest of the file",
			input:      "a,b\n\"oops,1\n2,3\n4,5\n",
			wantHeader: "a|b",
			want:       []string{"002:ERR " + errUnterminated.Error(), "003:2|3", "004:4|5"},
		},
		{
			name:       "a malformed multi-line record resumes on its second line",
			input:      "a,b\n\"x\ny\"z,1\n5,6\n",
			wantHeader: "a|b",
			want:       []string{"002:ERR " + errAfterQuote.Error(), "003:ERR " + errBareQuote.Error(), "004:5|6"},
		},
		{
			name:       "trailing delimiter is an empty last field",
			input:      "a,b\n1,\n",
			wantHeader: "a|b",
			want:       []string{"002:1|"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header, got := readAll(t, tt.input)
			if header != tt.wantHeader {
				t.Errorf("header: got %q, want %q", header, tt.wantHeader)
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("records:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestReaderGivesUpOnRunawayQuotes(t *testing.T) {
	var b strings.Builder
	b.WriteString("a,b\n\"never closed,1\n")
	for i := 0; i < maxRecordLines+10; i++ {
		b.WriteString("x,y\n")
	}
	_, got := readAll(t, b.String())
	if len(got) != maxRecordLines+11 {
		t.Fatalf("records: got %d, want %d", len(got), maxRecordLines+11)
	}
	if want := "002:ERR " + errRecordTooLarge.Error(); got[0] != want {
		t.Errorf("first: got %q, want %q", got[0], want)
	}
	if got[1] != "003:x|y" || got[len(got)-1] != itoa(maxRecordLines+12)+":x|y" {
		t.Errorf("records after the runaway quote: got %q ... %q", got[1], got[len(got)-1])
	}
}

func TestReaderLongLines(t *testing.T) {
	long := strings.Repeat("x", 200_000) // longer than the read buffer
	_, got := readAll(t, "a,b\n"+long+",1\n2,3\n")
	if len(got) != 2 || got[0] != "002:"+long+"|1" || got[1] != "003:2|3" {
		t.Errorf("got %d records, first %.20q…", len(got), got[0])
	}
}

func TestReaderEmptyFile(t *testing.T) {
	for _, input := range []string{"", "\n\n  \n", "\ufeff"} {
		_, err := NewReader(strings.NewReader(input)).ReadHeader()
		if !errors.Is(err, errNoHeader) {
			t.Errorf("ReadHeader(%q): got %v, want errNoHeader", input, err)
		}
	}
}

func TestSniffDelimiter(t *testing.T) {
	tests := []struct {
		header string
		want   byte
	}{
		{"a,b,c", ','},
		{"a;b;c", ';'},
		{"a\tb\tc", '\t'},
		{"a|b|c", '|'},
		{`"a;b",c,d`, ','},
		{"token", ','},
	}
	for _, tt := range tests {
		if got := sniffDelimiter(tt.header); got != tt.want {
			t.Errorf("sniffDelimiter(%q): got %q, want %q", tt.header, got, tt.want)
		}
	}
}
