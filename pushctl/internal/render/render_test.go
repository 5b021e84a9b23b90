package render

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestCount(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{0, "0"}, {7, "7"}, {999, "999"}, {1000, "1,000"}, {12345, "12,345"}, {123456, "123,456"},
		{1234567, "1,234,567"}, {-1234, "-1,234"}, {-999, "-999"},
	}
	for _, tt := range tests {
		if got := Count(tt.n); got != tt.want {
			t.Errorf("Count(%d): got %q, want %q", tt.n, got, tt.want)
		}
	}
}

func TestPercentAndRate(t *testing.T) {
	if got, want := Percent(2000.0/12300), "16.26%"; got != want {
		t.Errorf("Percent: got %q, want %q", got, want)
	}
	if got, want := Percent(0), "0.00%"; got != want {
		t.Errorf("Percent(0): got %q, want %q", got, want)
	}
	if got, want := Rate(12345.6, "rows"), "12,346 rows/s"; got != want {
		t.Errorf("Rate: got %q, want %q", got, want)
	}
	if got, want := Rate(-1, "rows"), "0 rows/s"; got != want {
		t.Errorf("Rate(-1): got %q, want %q", got, want)
	}
}

func TestTokenNeverShowsAFullToken(t *testing.T) {
	tests := []struct {
		tok  string
		want string
	}{
		{"a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9e8", "a1b2c3…f9e8"},
		{"dQw4w9WgXcQ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx", "dQw4w9…RYqx"},
		{"0123456789abcdefghij", "012345…ghij"},
		{"0123456789abcdef", "012…ef"},
		{"0123456789abcde", "012…de"},
		{"abcdefghi", "ab…i"},
		{"abc", "a…"},
		{"a", "…"},
		{"", "-"},
	}
	for _, tt := range tests {
		got := Token(tt.tok)
		if got != tt.want {
			t.Errorf("Token(%q): got %q, want %q", tt.tok, got, tt.want)
		}
		if tt.tok != "" && strings.Contains(got, tt.tok) {
			t.Errorf("Token(%q) shows the whole token", tt.tok)
		}
		if shown := len([]rune(got)) - 1; len(tt.tok) > 0 && shown*2 > len(tt.tok) {
			t.Errorf("Token(%q) = %q shows more than half the token", tt.tok, got)
		}
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{850 * time.Millisecond, "850ms"}, {12 * time.Second, "12s"}, {185 * time.Second, "3m05s"},
		{2*time.Hour + 10*time.Minute + 20*time.Second, "2h10m"}, {-3 * time.Second, "-3s"},
	}
	for _, tt := range tests {
		if got := Duration(tt.d); got != tt.want {
			t.Errorf("Duration(%v): got %q, want %q", tt.d, got, tt.want)
		}
	}
	if got := Time(nil); got != "-" {
		t.Errorf("Time(nil): got %q", got)
	}
	ts := timestamppb.New(time.Date(2024, 5, 1, 12, 0, 0, 0, time.FixedZone("CEST", 7200)))
	if got, want := Time(ts), "2024-05-01T10:00:00Z"; got != want {
		t.Errorf("Time: got %q, want %q", got, want)
	}
}

func TestTable(t *testing.T) {
	tab := NewTable("NAME", "COUNT", "NOTE").AlignRight(1)
	tab.Row("apns", "1,234", "ok")
	tab.Line("  a free line that is longer than every column")
	tab.Row("fcm", "5", "")
	tab.Row("müller", "12") // runes, not bytes; a missing cell
	want := `NAME    COUNT  NOTE
apns    1,234  ok
  a free line that is longer than every column
fcm         5
müller     12
`
	if got := tab.String(); got != want {
		t.Errorf("table:\n got %q\nwant %q", got, want)
	}
	if tab.Len() != 3 {
		t.Errorf("Len: got %d, want 3", tab.Len())
	}
}

func TestKeyValues(t *testing.T) {
	var kv KeyValues
	kv.Add("journey", "j-1")
	kv.Number(0, "sent", "12,300")
	kv.Number(0, "failed", "100")
	kv.Number(1, "unregistered", "80")
	kv.Number(0, "open rate", "16.26%")
	want := `journey         j-1
sent            12,300
failed             100
  unregistered      80
open rate       16.26%
`
	if got := kv.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
