package progress

import (
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestPlainLinesAreThrottled(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	var b strings.Builder
	m := New(&b, false, c.now)
	calls := 0
	status := func() string { calls++; return "line" }
	for i := 0; i < 20; i++ { // 20 updates over 10 s: one line per 5 s
		c.t = c.t.Add(500 * time.Millisecond)
		m.Update(status)
	}
	m.Done("final")
	if got, want := b.String(), "line\nline\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if calls != 2 {
		t.Errorf("status computed %d times, want 2 (only when shown)", calls)
	}
}

func TestTerminalRedrawsInPlace(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	var b strings.Builder
	m := New(&b, true, c.now)
	m.Update(func() string { return "too soon" })
	c.t = c.t.Add(150 * time.Millisecond)
	m.Update(func() string { return "a long first frame" })
	m.Now("state change")
	m.Done("done")
	want := "\ra long first frame\x1b[K\rstate change\x1b[K\rdone\x1b[K\n"
	if got := b.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestDoneWithoutOutputWritesNothing(t *testing.T) {
	var b strings.Builder
	m := New(&b, true, time.Now)
	m.Done("")
	if b.Len() != 0 {
		t.Errorf("got %q, want nothing", b.String())
	}
}

func TestBar(t *testing.T) {
	tests := []struct {
		f    float64
		want string
	}{
		{0, "[----------]"}, {0.45, "[#####-----]"}, {1, "[##########]"}, {1.7, "[##########]"}, {-1, "[----------]"},
	}
	for _, tt := range tests {
		if got := Bar(tt.f, 10); got != tt.want {
			t.Errorf("Bar(%v): got %q, want %q", tt.f, got, tt.want)
		}
	}
}
