package profile

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestValueSizeIsTheEncodedSize(t *testing.T) {
	values := []any{
		nil, true, false, 1.5, "", "x", strings.Repeat("é", 100),
		[]any{}, []any{nil, true, 2.0, "s", []any{[]any{}}, map[string]any{}},
		map[string]any{"": nil, "k": map[string]any{"n": []any{strings.Repeat("z", 300)}}},
		make([]any, 200), // 200 nils: a two-byte count
		int64(3),         // not an attribute type: stored as null
	}
	for i, v := range values {
		if got, want := valueSize(v), len(appendValue(nil, v)); got != want {
			t.Errorf("value %d (%T): valueSize %d, encoded %d bytes", i, v, got, want)
		}
	}
	attrs := map[string]any{"a": "x", "bb": nil, "list": []any{true}}
	if got, want := AttributesSize(attrs), 1+3+2+1+4+3; got != want {
		t.Errorf("AttributesSize: got %d, want %d", got, want)
	}
}

// TestAttributeBytesFollowMerges: the size MergeAttribute keeps is the
// size of the attributes that are set, whatever the merges did, and
// decoding measures the same.
func TestAttributeBytesFollowMerges(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	values := []any{nil, "short", strings.Repeat("long", 50), 7.0, []any{"a", false}, map[string]any{"k": "v"}}
	p := &Profile{attrBytesKnown: true}
	for i := 0; i < 2000; i++ {
		MergeAttribute(p, fmt.Sprintf("k%d", rng.IntN(40)), values[rng.IntN(len(values))], int64(rng.IntN(50)))
		if i%97 != 0 {
			continue
		}
		fresh := &Profile{Attributes: p.Attributes}
		if got, want := p.AttributeBytes(), fresh.AttributeBytes(); got != want {
			t.Fatalf("after %d merges: kept %d, measured %d", i+1, got, want)
		}
		decoded, err := DecodeProfile(p.ID, EncodeProfile(nil, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := decoded.AttributeBytes(); got != p.AttributeBytes() {
			t.Fatalf("after %d merges: decoded %d, kept %d", i+1, got, p.AttributeBytes())
		}
	}
}

func importRow(c, tok string, at int64) ImportRow {
	return ImportRow{CustomerID: c, Reg: Registration{Key: TokenKey{PlatformFCM, "app", tok}, Time: at, Source: "import"}}
}

// TestTokenCountsCarryAcrossOverlay: the next batch of an import is applied
// on top of the previous one before that one commits, on a snapshot that
// may or may not hold it. A count the previous batch changed must be taken
// from it, exactly once either way.
func TestTokenCountsCarryAcrossOverlay(t *testing.T) {
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprintf("previous batch committed=%v", committed), func(t *testing.T) {
			m := newMemStore()
			if err := m.do(t, func(w *Workset) error {
				for i := 0; i < MaxProfileTokens; i++ {
					if _, _, err := w.Import(importRow("P", fmt.Sprintf("p%d", i), 1)); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			prev := NewWorkset(m, m.gen.New, m.now)
			if out, _, err := prev.Import(importRow("Q", "p0", 2)); err != nil || out != OutcomeMoved {
				t.Fatalf("got %v, %v, want p0 moved to Q", out, err)
			}
			prevChanges := prev.Changes() // taken before the next batch shares its state
			if committed {
				m.apply(prevChanges)
			}
			next := NewWorkset(m, m.gen.New, m.now)
			next.Overlay(prev)
			if out, _, err := next.Import(importRow("P", "new1", 2)); err != nil || out != OutcomeCreated {
				t.Fatalf("got %v, %v, want the place p0 left taken", out, err)
			}
			_, _, err := next.Import(importRow("P", "new2", 2))
			var le *LimitError
			if !errors.As(err, &le) || !errors.Is(err, ErrLimit) || le.Field() != "token" || le.Limit != "MaxProfileTokens" {
				t.Fatalf("got %v, want the token cap on token", err)
			}
			if !committed {
				m.apply(prevChanges) // the writer commits the batches in order
			}
			m.apply(next.Changes())
			if n, _ := m.CountProfileTokens(m.identities[Identity{CustomerIDNamespace, "P"}], 1000); n != MaxProfileTokens {
				t.Fatalf("P owns %d tokens, want %d", n, MaxProfileTokens)
			}
			m.checkInvariants(t)
		})
	}
}

// TestCapsChangeNothing: a change over a cap fails before anything in the
// workset changed.
func TestCapsChangeNothing(t *testing.T) {
	m := newMemStore()
	if err := m.do(t, func(w *Workset) error {
		for i := 0; i < MaxProfileTokens; i++ {
			if _, _, err := w.Import(importRow("P", fmt.Sprintf("p%d", i), 1)); err != nil {
				return err
			}
		}
		_, _, err := w.Import(importRow("Q", "q", 1))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	before := m.state(t)
	w := NewWorkset(m, m.gen.New, m.now)
	row := importRow("P", "q", 2) // would move Q's token to P
	row.Attributes = map[string]any{"tier": "gold"}
	if _, _, err := w.Import(row); !errors.Is(err, ErrLimit) {
		t.Fatalf("got %v, want the token cap", err)
	}
	big := importRow("Q", "q", 3)
	big.Attributes = map[string]any{"a": strings.Repeat("x", MaxProfileAttributesBytes/2), "b": strings.Repeat("x", MaxProfileAttributesBytes/2)}
	if _, _, err := w.Import(big); !errors.Is(err, ErrLimit) {
		t.Fatalf("got %v, want the attributes cap", err)
	}
	if ch := w.Changes(); !ch.Empty() {
		t.Fatalf("rejected rows changed %+v", ch)
	}
	m.apply(w.Changes())
	if got := m.state(t); got != before {
		t.Fatalf("state changed:\n%s\nwant\n%s", got, before)
	}
}

// TestEvictionsCarryAcrossOverlay: at the cap, a new token evicts the
// profile's least recently seen inactive token. The next batch of an import
// is applied on top of the previous one, on a snapshot that may or may not
// hold it: a token the previous batch evicted must not be evicted (or
// counted) again, a token it created must be seen, and the count must
// stay exact either way.
func TestEvictionsCarryAcrossOverlay(t *testing.T) {
	key := func(tok string) TokenKey { return TokenKey{PlatformFCM, "app", tok} }
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprintf("previous batch committed=%v", committed), func(t *testing.T) {
			m := newMemStore()
			// P's tokens p0..p99 last seen at 1..100; p99 is the current
			// token of device d.
			if err := m.do(t, func(w *Workset) error {
				for i := 0; i < MaxProfileTokens; i++ {
					row := importRow("P", fmt.Sprintf("p%d", i), int64(i+1))
					if i == 99 {
						row.Reg.DeviceID = "d"
					}
					if _, _, err := w.Import(row); err != nil {
						return err
					}
				}
				// Dead: p30 first, then p10, then p20 (the order of their
				// deactivation is not the order of eviction).
				for _, tok := range []string{"p30", "p10", "p20"} {
					if _, err := w.Feedback(key(tok), ReasonUnregistered, 500); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}

			prev := NewWorkset(m, m.gen.New, m.now)
			if out, _, err := prev.Import(importRow("P", "new1", 200)); err != nil || out != OutcomeCreated {
				t.Fatalf("got %v, %v, want new1 created, evicting p10", out, err)
			}
			// r, seen at 1 (before every dead token), is created and then
			// reported dead in the same batch. (A token its device had
			// already replaced is not stored on a full profile at all: see
			// TestReimportAfterEvictionsChangesNothing in the store.)
			if out, _, err := prev.Import(importRow("P", "r", 1)); err != nil || out != OutcomeCreated {
				t.Fatalf("got %v, %v, want r created, evicting p20", out, err)
			}
			if _, err := prev.Feedback(key("r"), ReasonUnregistered, 500); err != nil {
				t.Fatal(err)
			}
			prevChanges := prev.Changes()
			if committed {
				m.apply(prevChanges)
			}

			next := NewWorkset(m, m.gen.New, m.now)
			next.Overlay(prev)
			for _, tok := range []string{"new2", "new3"} { // evicting r, then p30
				if out, _, err := next.Import(importRow("P", tok, 200)); err != nil || out != OutcomeCreated {
					t.Fatalf("%s: got %v, %v, want it created", tok, out, err)
				}
			}
			_, _, err := next.Import(importRow("P", "new4", 200))
			if le := (*LimitError)(nil); !errors.As(err, &le) || le.Field() != "token" {
				t.Fatalf("got %v, want the token cap: every token of P is active", err)
			}
			if !committed {
				m.apply(prevChanges)
			}
			m.apply(next.Changes())
			m.checkInvariants(t)

			p := m.identities[Identity{CustomerIDNamespace, "P"}]
			if n, _ := m.CountProfileTokens(p, 1000); n != MaxProfileTokens {
				t.Fatalf("P owns %d tokens, want %d", n, MaxProfileTokens)
			}
			for _, tok := range []string{"p10", "p20", "p30", "r", "new4"} {
				if m.token(t, key(tok)) != nil {
					t.Errorf("%s: still stored, want it evicted (or refused)", tok)
				}
			}
			for _, tok := range []string{"p0", "p99", "new1", "new2", "new3"} {
				if tk := m.token(t, key(tok)); tk == nil || !tk.Active() {
					t.Errorf("%s: got %+v, want it active", tok, tk)
				}
			}
			if got := m.devices[DeviceKey{PlatformFCM, "app", "d"}]; len(got) != 1 || !got["p99"] {
				t.Errorf("device d lists %v, want p99 alone", got)
			}
		})
	}
}
