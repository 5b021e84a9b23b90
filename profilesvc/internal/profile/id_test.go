package profile

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestIDStringRoundTrip(t *testing.T) {
	g := NewGenerator(nil)
	for i := 0; i < 1000; i++ {
		id := g.New()
		s := id.String()
		if len(s) != IDLen {
			t.Fatalf("got %d characters, want %d", len(s), IDLen)
		}
		back, err := ParseID(s)
		if err != nil || back != id {
			t.Fatalf("ParseID(%q): got %v, %v; want %v", s, back, err, id)
		}
		if lower, err := ParseID(strings.ToLower(s)); err != nil || lower != id {
			t.Fatalf("ParseID(lowercase %q): got %v, %v; want %v", s, lower, err, id)
		}
	}
	max := ID{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}
	if got := max.String(); got != "7ZZZZZZZZZZZZZZZZZZZZZZZZZ" {
		t.Fatalf("got %q for the largest id, want 7ZZ...Z", got)
	}
}

func TestParseIDRejects(t *testing.T) {
	for _, s := range []string{"", "01ARZ3NDEKTSV4RRFFQ69G5FA", "01ARZ3NDEKTSV4RRFFQ69G5FAVX", "01ARZ3NDEKTSV4RRFFQ69G5FAU", "81ARZ3NDEKTSV4RRFFQ69G5FAV", "01ARZ3NDEKTSV4RRFFQ69G5F-V"} {
		if _, err := ParseID(s); !errors.Is(err, ErrBadID) {
			t.Errorf("ParseID(%q): got %v, want ErrBadID", s, err)
		}
	}
}

func TestGeneratorIsStrictlyIncreasing(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	g := NewGenerator(func() time.Time { return clock })
	prev := g.New()
	for i := 0; i < 10000; i++ {
		switch i {
		case 3000:
			clock = clock.Add(time.Millisecond)
		case 6000:
			clock = clock.Add(-time.Hour) // the clock steps back
		}
		id := g.New()
		if bytes.Compare(id[:], prev[:]) <= 0 {
			t.Fatalf("id %d: got %s after %s, want greater", i, id, prev)
		}
		if id.String() <= prev.String() {
			t.Fatalf("id %d: string %s sorts before %s", i, id, prev)
		}
		prev = id
	}
}

func TestGeneratorObserve(t *testing.T) {
	clock := time.Unix(1_700_000_000, 0)
	g := NewGenerator(func() time.Time { return clock })
	stored := NewGenerator(func() time.Time { return clock.Add(time.Hour) }).New()
	g.Observe(stored)
	if id := g.New(); bytes.Compare(id[:], stored[:]) <= 0 {
		t.Fatalf("got %s after observing %s, want greater", id, stored)
	}
}
