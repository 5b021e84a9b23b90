package audience

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// fakeProfile is one stored profile of the fake scanner.
type fakeProfile struct {
	id     profile.ID
	p      *profile.Profile
	tokens []*profile.Token
}

// fakeScanner serves encoded records in id order, like the store, with a
// hook to count chunks.
type fakeScanner struct {
	profiles []fakeProfile
	chunks   int
	onChunk  func(n int)
}

func (f *fakeScanner) ScanChunk(ctx context.Context, after profile.ID, first bool, max int,
	visit func(id profile.ID, v *profile.View) (bool, error)) (last profile.ID, visited int, end bool, err error) {
	f.chunks++
	i := 0
	if !first {
		for i < len(f.profiles) && bytes.Compare(f.profiles[i].id[:], after[:]) <= 0 {
			i++
		}
	}
	for ; i < len(f.profiles); i++ {
		if err := ctx.Err(); err != nil {
			return last, visited, false, err
		}
		if visited >= max {
			return last, visited, false, nil
		}
		fp := f.profiles[i]
		var raws [][]byte
		for _, t := range fp.tokens {
			raws = append(raws, profile.EncodeDetails(nil, t))
		}
		v, err := profile.ParseView(profile.EncodeProfile(nil, fp.p), raws)
		if err != nil {
			return last, visited, false, err
		}
		visited++
		last = fp.id
		more, err := visit(fp.id, &v)
		if err != nil || !more {
			return last, visited, false, err
		}
	}
	return last, visited, true, nil
}

type tok struct {
	platform profile.Platform
	app      string
	active   bool
}

func newFake(n int, build func(i int) (attrs map[string]any, consent profile.Consent, tokens []tok)) *fakeScanner {
	f := &fakeScanner{}
	for i := 0; i < n; i++ {
		id := profile.ID{0, 0, 0, 0, 0, 1, byte(i >> 8), byte(i)}
		attrs, consent, toks := build(i)
		p := &profile.Profile{ID: id, Consent: consent,
			Identities: []profile.Identity{{Namespace: "customer_id", Value: fmt.Sprintf("C%d", i)}, {Namespace: "email", Value: fmt.Sprintf("c%d@example.com", i)}}}
		for _, k := range sortedKeys(attrs) {
			profile.MergeAttribute(p, k, attrs[k], 1)
		}
		fp := fakeProfile{id: id, p: p}
		for j, tk := range toks {
			t := &profile.Token{Owner: id, Platform: tk.platform, AppID: tk.app, Token: fmt.Sprintf("t%d-%d", i, j), SourceStamp: profile.Stamp{Time: 10}}
			if !tk.active {
				t.DeactivatedAt = 20
			}
			fp.tokens = append(fp.tokens, t)
		}
		f.profiles = append(f.profiles, fp)
	}
	return f
}

func sortedKeys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func run(t *testing.T, sc Scanner, q Query) ([]Batch, []Member) {
	t.Helper()
	var batches []Batch
	var members []Member
	err := Run(context.Background(), sc, q, func(b *Batch) error {
		c := *b
		c.Members = slices.Clone(b.Members)
		batches = append(batches, c)
		members = append(members, b.Members...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return batches, members
}

func mustCompile(t *testing.T, src string) *Condition {
	t.Helper()
	c, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCompileErrors(t *testing.T) {
	for _, src := range []string{
		`attributes.tier ==`, // syntax
		`unknown_var == 1`,   // undeclared
		`attributes.tier`,    // not a bool (dyn is allowed, see below)... compiles as dyn
		`consent + 1`,        // type error
		`profile_id`,         // string, not bool
		strings.Repeat("true && ", 2000) + "true", // too long
	} {
		_, err := Compile(src)
		if src == `attributes.tier` {
			if err != nil {
				t.Errorf("Compile(%q): got %v, want accepted (dyn may be a bool at run time)", src, err)
			}
			continue
		}
		var v *fault.ValidationError
		if !errors.As(err, &v) || len(v.Violations) != 1 || v.Violations[0].Field != "condition" {
			t.Errorf("Compile(%.40q): got %v, want one violation on condition", src, err)
		}
	}
	_, err := Compile(`attributes.tier == `)
	if !strings.Contains(err.Error(), "Syntax error") {
		t.Errorf("got %q, want the CEL error text", err)
	}
}

func TestConditionVariables(t *testing.T) {
	f := newFake(8, func(i int) (map[string]any, profile.Consent, []tok) {
		attrs := map[string]any{"tier": []string{"gold", "silver"}[i%2], "locale": []string{"en-GB", "fr-FR", "en-US", "de-DE"}[i%4], "age": float64(20 + i), "tags": []any{"a", fmt.Sprint(i)}}
		toks := []tok{{profile.PlatformAPNS, "com.a", true}}
		if i%3 == 0 {
			toks = append(toks, tok{profile.PlatformFCM, "com.b", true})
		}
		if i == 5 {
			toks = []tok{{profile.PlatformFCM, "com.b", false}}
		}
		return attrs, profile.Consent(i % 3), toks
	})
	tests := []struct {
		cond string
		want []int
	}{
		{``, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{`attributes.tier == "gold"`, []int{0, 2, 4, 6}},
		{`attributes.tier == "gold" && attributes.locale.startsWith("en")`, []int{0, 2, 4, 6}},
		{`attributes.locale.startsWith("en") && attributes.tier == "silver"`, nil},
		{`attributes.age > 24`, []int{5, 6, 7}},
		{`attributes.age == 21`, []int{1}},
		{`"3" in attributes.tags`, []int{3}},
		{`has(attributes.nope)`, nil},
		{`attributes.nope == "x"`, nil}, // a missing key fails the evaluation: not qualified
		{`attributes.?nope.orValue("x") == "x"`, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{`consent == "opted_in"`, []int{1, 4, 7}},
		{`consent == "unspecified"`, []int{0, 3, 6}},
		{`"fcm" in platforms`, []int{0, 3, 6}},
		{`"apns" in platforms && !("fcm" in platforms)`, []int{1, 2, 4, 7}},
		{`size(platforms) == 0`, []int{5}}, // its only token is inactive
		{`"com.b" in apps`, []int{0, 3, 6}},
		{`identities.email.exists(e, e.endsWith("7@example.com"))`, []int{7}},
		{`"customer_id" in identities && identities.customer_id[0] == "C2"`, []int{2}},
		{`profile_id.startsWith("00000001")`, nil},
		{`profile_id.size() == 26`, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{`attributes.locale.lowerAscii() == "de-de"`, []int{3, 7}},
		{`size(attributes) == 4`, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{`attributes.exists(k, k == "tier")`, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{`attributes.all(k, k != "age")`, nil},
		{`"tier" in attributes && !("nope" in attributes)`, []int{0, 1, 2, 3, 4, 5, 6, 7}},
		{`attributes.tags[1] == "6"`, []int{6}},
		{`attributes.tier in ["gold", "platinum"] && attributes.age < 23`, []int{0, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.cond, func(t *testing.T) {
			_, members := run(t, f, Query{Condition: mustCompile(t, tt.cond)})
			var got []int
			for _, m := range members {
				got = append(got, int(m.ID[7]))
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestExclusionsAndTokenFilters(t *testing.T) {
	f := newFake(6, func(i int) (map[string]any, profile.Consent, []tok) {
		switch i {
		case 0: // reachable on both apps
			return nil, profile.ConsentOptedIn, []tok{{profile.PlatformAPNS, "com.a", true}, {profile.PlatformFCM, "com.b", true}}
		case 1: // opted out
			return nil, profile.ConsentOptedOut, []tok{{profile.PlatformAPNS, "com.a", true}}
		case 2: // consent never given
			return nil, profile.ConsentUnspecified, []tok{{profile.PlatformAPNS, "com.a", true}}
		case 3: // no token at all
			return nil, profile.ConsentOptedIn, nil
		case 4: // only an inactive token
			return nil, profile.ConsentOptedIn, []tok{{profile.PlatformAPNS, "com.a", false}}
		default: // only a token of another app
			return nil, profile.ConsentOptedIn, []tok{{profile.PlatformFCM, "com.b", true}}
		}
	})
	type want struct {
		excluded bool
		reason   ExclusionReason
		tokens   int
	}
	tests := []struct {
		name string
		q    Query
		want []want
	}{
		{"all apps", Query{}, []want{{false, 0, 2}, {true, ExcludedNoConsent, 0}, {false, 0, 1}, {true, ExcludedNoActiveToken, 0}, {true, ExcludedNoActiveToken, 0}, {false, 0, 1}}},
		{"explicit consent", Query{RequireExplicitConsent: true}, []want{{false, 0, 2}, {true, ExcludedNoConsent, 0}, {true, ExcludedNoConsent, 0}, {true, ExcludedNoActiveToken, 0}, {true, ExcludedNoActiveToken, 0}, {false, 0, 1}}},
		{"app filter", Query{AppIDs: []string{"com.a"}}, []want{{false, 0, 1}, {true, ExcludedNoConsent, 0}, {false, 0, 1}, {true, ExcludedNoActiveToken, 0}, {true, ExcludedNoActiveToken, 0}, {true, ExcludedNoActiveToken, 0}}},
		{"platform filter", Query{Platforms: []profile.Platform{profile.PlatformFCM}}, []want{{false, 0, 1}, {true, ExcludedNoConsent, 0}, {true, ExcludedNoActiveToken, 0}, {true, ExcludedNoActiveToken, 0}, {true, ExcludedNoActiveToken, 0}, {false, 0, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.q.Condition = mustCompile(t, "")
			batches, members := run(t, f, tt.q)
			if len(members) != len(tt.want) {
				t.Fatalf("got %d members, want %d", len(members), len(tt.want))
			}
			var excluded [3]int64
			var tokens int64
			for i, m := range members {
				w := tt.want[i]
				if m.Excluded != w.excluded || m.Reason != w.reason || len(m.Tokens) != w.tokens {
					t.Errorf("profile %d: got excluded=%v reason=%d tokens=%d, want %+v", i, m.Excluded, m.Reason, len(m.Tokens), w)
				}
				if m.Excluded && (m.Attributes != nil || m.Identities != nil || m.Tokens != nil) {
					t.Errorf("profile %d: excluded member carries data", i)
				}
				if !m.Excluded && len(m.Identities) != 2 {
					t.Errorf("profile %d: got %d identities, want 2", i, len(m.Identities))
				}
				if m.Excluded {
					excluded[m.Reason]++
				}
				tokens += int64(len(m.Tokens))
			}
			st := batches[len(batches)-1].Stats
			if st.Scanned != 6 || st.Qualified != 6 || st.Excluded != excluded || st.Tokens != tokens {
				t.Errorf("got stats %+v, want scanned 6, qualified 6, excluded %v, tokens %d", st, excluded, tokens)
			}

			// A count-only query reaches the same stats without members.
			q := tt.q
			q.CountOnly = true
			counted, none := run(t, f, q)
			if len(none) != 0 {
				t.Errorf("count only: got %d members, want none", len(none))
			}
			if got := counted[len(counted)-1].Stats; got != st {
				t.Errorf("count only: got stats %+v, want %+v", got, st)
			}
		})
	}
}

func TestBatchesResumeAndLimit(t *testing.T) {
	f := newFake(1000, func(i int) (map[string]any, profile.Consent, []tok) {
		return map[string]any{"even": i%2 == 0}, profile.ConsentOptedIn, []tok{{profile.PlatformAPNS, "com.a", true}}
	})
	cond := mustCompile(t, "attributes.even")

	batches, members := run(t, f, Query{Condition: cond, BatchSize: 64})
	if len(members) != 500 {
		t.Fatalf("got %d members, want 500", len(members))
	}
	for i, b := range batches[:len(batches)-1] {
		if len(b.Members) != 64 {
			t.Fatalf("batch %d: got %d members, want 64", i, len(b.Members))
		}
		if b.ResumeAfter != b.Members[len(b.Members)-1].ID {
			t.Fatalf("batch %d: got resume after %x, want its last member %x", i, b.ResumeAfter, b.Members[len(b.Members)-1].ID)
		}
	}
	last := batches[len(batches)-1]
	if last.Stats.Scanned != 1000 || last.Stats.Qualified != 500 {
		t.Fatalf("got final stats %+v, want scanned 1000, qualified 500", last.Stats)
	}

	// Resuming after any batch yields exactly the rest.
	cut := batches[3]
	_, rest := run(t, f, Query{Condition: cond, BatchSize: 64, StartAfter: cut.ResumeAfter, HasStart: true})
	var ids []profile.ID
	for _, m := range rest {
		ids = append(ids, m.ID)
	}
	var want []profile.ID
	for _, m := range members[4*64:] {
		want = append(want, m.ID)
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("resumed: got %d members, want %d (the rest)", len(ids), len(want))
	}

	// Limit.
	_, limited := run(t, f, Query{Condition: cond, BatchSize: 64, Limit: 100})
	if len(limited) != 100 {
		t.Fatalf("got %d members with limit 100, want 100", len(limited))
	}

	// A count-only query stops at the limit too.
	counted, _ := run(t, f, Query{Condition: cond, Limit: 100, CountOnly: true})
	if st := counted[len(counted)-1].Stats; st.Qualified != 100 || st.Scanned != 199 {
		t.Fatalf("count only with limit 100: got stats %+v, want 100 qualified of 199 scanned", st)
	}

	// An empty audience still reports its stats once.
	batches, _ = run(t, f, Query{Condition: mustCompile(t, "false")})
	if len(batches) != 1 || batches[0].Stats.Scanned != 1000 || len(batches[0].Members) != 0 {
		t.Fatalf("empty audience: got %d batches, want one with stats and no members", len(batches))
	}
}

func TestRunStopsOnCancelAndEmitError(t *testing.T) {
	f := newFake(5000, func(i int) (map[string]any, profile.Consent, []tok) {
		return nil, profile.ConsentOptedIn, []tok{{profile.PlatformAPNS, "com.a", true}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	sent := 0
	err := Run(ctx, f, Query{Condition: mustCompile(t, ""), BatchSize: 10}, func(b *Batch) error {
		sent++
		if sent == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	boom := errors.New("client gone")
	err = Run(context.Background(), f, Query{Condition: mustCompile(t, ""), BatchSize: 10}, func(b *Batch) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the emit error", err)
	}
}

func TestQueryValidate(t *testing.T) {
	tests := []struct {
		q     Query
		field string
	}{
		{Query{BatchSize: -1}, "batch_size"},
		{Query{BatchSize: MaxBatchSize + 1}, "batch_size"},
		{Query{Limit: -1}, "limit"},
		{Query{BatchSize: MaxBatchSize}, ""},
	}
	for _, tt := range tests {
		err := tt.q.Validate()
		if tt.field == "" {
			if err != nil {
				t.Errorf("%+v: got %v, want valid", tt.q, err)
			}
			continue
		}
		var v *fault.ValidationError
		if !errors.As(err, &v) || v.Violations[0].Field != tt.field {
			t.Errorf("%+v: got %v, want a violation on %s", tt.q, err, tt.field)
		}
	}
}
