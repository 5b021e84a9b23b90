package profile

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/pushmesh/pushmesh/servicekit/fault"
)

const sec = int64(1_000_000_000)

// t0 is a base source time; tests add seconds to it.
const t0 = int64(1_690_000_000) * sec

func apnsKey(tok string) TokenKey {
	return TokenKey{Platform: PlatformAPNS, AppID: "com.example", Token: tok}
}

// step is one operation of a rule scenario.
type step struct {
	customer string // register for this customer (when reg is set)
	reg      *Registration
	feedback *feedbackStep
	unreg    *TokenKey

	wantOutcome  Outcome
	wantReplaced []string
}

type feedbackStep struct {
	key    TokenKey
	reason InactiveReason
	at     int64
	want   FeedbackOutcome
}

// want is the expected state of one token after a scenario.
type wantToken struct {
	key     TokenKey
	owner   string // customer id
	active  bool
	reason  InactiveReason
	history []string // "from>to" customer ids; "" for none
}

func reg(tok string, at int64) *Registration {
	return &Registration{Key: apnsKey(tok), Time: t0 + at*sec, Source: "test"}
}

func regDev(tok, device string, at int64) *Registration {
	r := reg(tok, at)
	r.DeviceID = device
	return r
}

func TestRegistrationRules(t *testing.T) {
	tests := []struct {
		name   string
		steps  []step
		tokens []wantToken
	}{
		{
			name: "new token is created on the profile",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: true, history: []string{">A"}}},
		},
		{
			name: "shared device: a newer login moves the token, with history",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{customer: "B", reg: reg("aa", 2), wantOutcome: OutcomeMoved},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "B", active: true, history: []string{">A", "A>B"}}},
		},
		{
			name: "shared device: an older login never overrides",
			steps: []step{
				{customer: "A", reg: reg("aa", 5), wantOutcome: OutcomeCreated},
				{customer: "B", reg: reg("aa", 3), wantOutcome: OutcomeUnchanged},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: true, history: []string{">A"}}},
		},
		{
			name: "shared device: back and forth keeps every move",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{customer: "B", reg: reg("aa", 2), wantOutcome: OutcomeMoved},
				{customer: "A", reg: reg("aa", 3), wantOutcome: OutcomeMoved},
				{customer: "B", reg: reg("aa", 1), wantOutcome: OutcomeUnchanged},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: true, history: []string{">A", "A>B", "B>A"}}},
		},
		{
			name: "same registration twice changes nothing",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeUnchanged},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: true, history: []string{">A"}}},
		},
		{
			name: "newer registration by the owner updates",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{customer: "A", reg: reg("aa", 2), wantOutcome: OutcomeUpdated},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: true, history: []string{">A"}}},
		},
		{
			name: "rotation: a new token for the same device replaces the old one",
			steps: []step{
				{customer: "A", reg: regDev("aa", "d1", 1), wantOutcome: OutcomeCreated},
				{customer: "A", reg: regDev("bb", "d1", 2), wantOutcome: OutcomeCreated, wantReplaced: []string{"aa"}},
			},
			tokens: []wantToken{
				{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonReplaced, history: []string{">A"}},
				{key: apnsKey("bb"), owner: "A", active: true, history: []string{">A"}},
			},
		},
		{
			name: "rotation in reverse order: the older token is the replaced one",
			steps: []step{
				{customer: "A", reg: regDev("bb", "d1", 2), wantOutcome: OutcomeCreated},
				{customer: "A", reg: regDev("aa", "d1", 1), wantOutcome: OutcomeCreated},
			},
			tokens: []wantToken{
				{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonReplaced, history: []string{">A"}},
				{key: apnsKey("bb"), owner: "A", active: true, history: []string{">A"}},
			},
		},
		{
			name: "rotation across profiles: another login on the device replaces the old profile's token",
			steps: []step{
				{customer: "A", reg: regDev("aa", "d1", 1), wantOutcome: OutcomeCreated},
				{customer: "B", reg: regDev("bb", "d1", 2), wantOutcome: OutcomeCreated, wantReplaced: []string{"aa"}},
			},
			tokens: []wantToken{
				{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonReplaced, history: []string{">A"}},
				{key: apnsKey("bb"), owner: "B", active: true, history: []string{">B"}},
			},
		},
		{
			name: "replaced token revived by a registration newer than its replacement",
			steps: []step{
				{customer: "A", reg: regDev("aa", "d1", 1), wantOutcome: OutcomeCreated},
				{customer: "A", reg: regDev("bb", "d1", 2), wantOutcome: OutcomeCreated, wantReplaced: []string{"aa"}},
				{customer: "A", reg: regDev("aa", "d1", 3), wantOutcome: OutcomeUpdated, wantReplaced: []string{"bb"}},
			},
			tokens: []wantToken{
				{key: apnsKey("aa"), owner: "A", active: true, reason: ReasonNone, history: []string{">A"}},
				{key: apnsKey("bb"), owner: "A", active: false, reason: ReasonReplaced, history: []string{">A"}},
			},
		},
		{
			name: "dead token: gateway feedback deactivates",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonUnregistered, at: t0 + 5*sec, want: FeedbackDeactivated}},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonUnregistered, history: []string{">A"}}},
		},
		{
			name: "dead token: a registration older than the gateway time does not revive",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonUnregistered, at: t0 + 5*sec, want: FeedbackDeactivated}},
				{customer: "A", reg: reg("aa", 4), wantOutcome: OutcomeUpdated},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonUnregistered, history: []string{">A"}}},
		},
		{
			name: "dead token: a registration at the gateway time does not revive",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonBadToken, at: t0 + 5*sec, want: FeedbackDeactivated}},
				{customer: "A", reg: reg("aa", 5), wantOutcome: OutcomeUpdated},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonBadToken, history: []string{">A"}}},
		},
		{
			name: "dead token: a registration newer than the gateway time revives",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonUnregistered, at: t0 + 5*sec, want: FeedbackDeactivated}},
				{customer: "A", reg: reg("aa", 6), wantOutcome: OutcomeUpdated},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: true, history: []string{">A"}}},
		},
		{
			name: "feedback older than the last registration changes nothing",
			steps: []step{
				{customer: "A", reg: reg("aa", 10), wantOutcome: OutcomeCreated},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonUnregistered, at: t0 + 5*sec, want: FeedbackUnchanged}},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: true, history: []string{">A"}}},
		},
		{
			name: "feedback on an inactive token changes nothing",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonUnregistered, at: t0 + 5*sec, want: FeedbackDeactivated}},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonUnregistered, at: t0 + 6*sec, want: FeedbackUnchanged}},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonUnregistered, history: []string{">A"}}},
		},
		{
			name: "feedback on an unknown token",
			steps: []step{
				{feedback: &feedbackStep{key: apnsKey("cc"), reason: ReasonUnregistered, at: t0, want: FeedbackUnknown}},
			},
		},
		{
			name: "a move of a dead token keeps it dead unless newer than the gateway time",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{feedback: &feedbackStep{key: apnsKey("aa"), reason: ReasonUnregistered, at: t0 + 5*sec, want: FeedbackDeactivated}},
				{customer: "B", reg: reg("aa", 3), wantOutcome: OutcomeMoved},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "B", active: false, reason: ReasonUnregistered, history: []string{">A", "A>B"}}},
		},
		{
			name: "unregister deactivates; a later registration revives",
			steps: []step{
				{customer: "A", reg: reg("aa", 1), wantOutcome: OutcomeCreated},
				{unreg: ptr(apnsKey("aa"))},
			},
			tokens: []wantToken{{key: apnsKey("aa"), owner: "A", active: false, reason: ReasonUninstalled, history: []string{">A"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMemStore()
			for i, s := range tt.steps {
				switch {
				case s.reg != nil:
					res := m.register(t, s.customer, *s.reg)
					if res.Outcome != s.wantOutcome {
						t.Fatalf("step %d: got outcome %d, want %d", i, res.Outcome, s.wantOutcome)
					}
					if !slices.Equal(res.Replaced, s.wantReplaced) {
						t.Fatalf("step %d: got replaced %q, want %q", i, res.Replaced, s.wantReplaced)
					}
				case s.feedback != nil:
					var got FeedbackOutcome
					err := m.do(t, func(w *Workset) (err error) {
						got, err = w.Feedback(s.feedback.key, s.feedback.reason, s.feedback.at)
						return err
					})
					if err != nil {
						t.Fatal(err)
					}
					if got != s.feedback.want {
						t.Fatalf("step %d: got feedback outcome %d, want %d", i, got, s.feedback.want)
					}
				case s.unreg != nil:
					err := m.do(t, func(w *Workset) error {
						_, err := w.Unregister(*s.unreg, ReasonUninstalled)
						return err
					})
					if err != nil {
						t.Fatal(err)
					}
				}
				m.checkInvariants(t)
			}
			for _, wt := range tt.tokens {
				tok := m.token(t, wt.key)
				if tok == nil {
					t.Fatalf("token %s: got none", wt.key.Token)
				}
				if got := m.ownerName(t, tok.Owner); got != wt.owner {
					t.Errorf("token %s: got owner %q, want %q", wt.key.Token, got, wt.owner)
				}
				if tok.Active() != wt.active {
					t.Errorf("token %s: got active %v, want %v", wt.key.Token, tok.Active(), wt.active)
				}
				if tok.InactiveReason() != wt.reason {
					t.Errorf("token %s: got reason %d, want %d", wt.key.Token, tok.InactiveReason(), wt.reason)
				}
				var hist []string
				for _, mv := range tok.History {
					from := ""
					if !mv.From.IsZero() {
						from = m.ownerName(t, mv.From)
					}
					hist = append(hist, from+">"+m.ownerName(t, mv.To))
				}
				if !slices.Equal(hist, wt.history) {
					t.Errorf("token %s: got history %q, want %q", wt.key.Token, hist, wt.history)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func applyOp(m *memStore, t testing.TB, customer string, r Registration) (Outcome, bool, error) {
	var out Outcome
	var created bool
	err := m.do(t, func(w *Workset) (err error) {
		out, created, err = w.Import(ImportRow{CustomerID: customer, Reg: r})
		return err
	})
	return out, created, err
}

func TestUnregisterThenNewerRegistrationRevives(t *testing.T) {
	m := newMemStore()
	m.register(t, "A", *reg("aa", 1))
	if err := m.do(t, func(w *Workset) error {
		_, err := w.Unregister(apnsKey("aa"), ReasonUninstalled)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// Unregistration is dated by the server clock (m.now): a registration
	// from before it keeps the token dead, one after revives it.
	m.register(t, "A", Registration{Key: apnsKey("aa"), Time: m.now - sec})
	if tok := m.token(t, apnsKey("aa")); tok.Active() {
		t.Fatalf("got active after an older registration, want inactive")
	}
	m.register(t, "A", Registration{Key: apnsKey("aa"), Time: m.now + 10*sec})
	if tok := m.token(t, apnsKey("aa")); !tok.Active() {
		t.Fatalf("got inactive after a newer registration, want active")
	}
	m.checkInvariants(t)
}

func TestUnregisterUnknownToken(t *testing.T) {
	m := newMemStore()
	err := m.do(t, func(w *Workset) error {
		_, err := w.Unregister(apnsKey("ff"), ReasonUninstalled)
		return err
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	if f, _ := fault.FieldOf(err); f != "token" {
		t.Fatalf("got field %q, want %q", f, "token")
	}
}

func TestAttributeMergeCommutes(t *testing.T) {
	type write struct {
		key string
		val any
		at  int64
	}
	writes := []write{
		{"tier", "gold", 1},
		{"tier", "silver", 2},
		{"tier", nil, 3}, // deleted at 3
		{"tier", "bronze", 2},
		{"locale", "en-GB", 5},
		{"locale", "fr-FR", 5}, // tie: the larger encoding wins
		{"age", 41.0, 1},
		{"tags", []any{"a", "b"}, 4},
		{"nested", map[string]any{"x": 1.0, "y": "z"}, 4},
	}
	var want []Attribute
	for i := 0; i < 50; i++ {
		order := rand.New(rand.NewPCG(uint64(i), 1)).Perm(len(writes))
		p := &Profile{}
		for _, j := range order {
			MergeAttribute(p, writes[j].key, writes[j].val, writes[j].at)
		}
		got := EncodeProfile(nil, p)
		if want == nil {
			want = p.Attributes
			continue
		}
		if wantEnc := EncodeProfile(nil, &Profile{Attributes: want}); string(got) != string(wantEnc) {
			t.Fatalf("order %v: got attributes %v, want %v", order, p.Attributes, want)
		}
	}
	vis := (&Profile{Attributes: want}).VisibleAttributes()
	if _, ok := vis["tier"]; ok {
		t.Errorf("got tier %v, want it deleted (the delete at 3 is newest)", vis["tier"])
	}
	if got := vis["locale"]; got != "fr-FR" {
		t.Errorf("got locale %v, want fr-FR (equal times: larger value)", got)
	}
}

func TestUpsertRules(t *testing.T) {
	m := newMemStore()
	email := Identity{Namespace: "email", Value: "ada@example.com"}
	cust := Identity{Namespace: CustomerIDNamespace, Value: "C1"}
	var first *Profile
	if err := m.do(t, func(w *Workset) (err error) {
		first, _, err = w.Upsert(UpsertRequest{Identities: []Identity{cust}, Attributes: map[string]any{"tier": "gold", "locale": "en-GB"},
			Consent: &ConsentUpdate{State: ConsentOptedIn, Time: t0}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		req         UpsertRequest
		wantErr     error
		wantField   string
		wantCreated bool
		check       func(t *testing.T, p *Profile)
	}{
		{
			name: "found by identity, attributes merged, null deletes",
			req:  UpsertRequest{Identities: []Identity{cust}, Attributes: map[string]any{"tier": "silver", "locale": nil}},
			check: func(t *testing.T, p *Profile) {
				if p.ID != first.ID {
					t.Errorf("got profile %s, want %s", p.ID, first.ID)
				}
				want := map[string]any{"tier": "silver"}
				if got := p.VisibleAttributes(); len(got) != 1 || got["tier"] != "silver" {
					t.Errorf("got attributes %v, want %v", got, want)
				}
			},
		},
		{
			name: "identity added by profile id",
			req:  UpsertRequest{ID: first.ID, Identities: []Identity{email}},
			check: func(t *testing.T, p *Profile) {
				if got := sortedIdentities(p.Identities); !slices.Equal(got, []Identity{cust, email}) {
					t.Errorf("got identities %v, want %v", got, []Identity{cust, email})
				}
			},
		},
		{
			name:      "identity of another profile is AlreadyExists",
			req:       UpsertRequest{Identities: []Identity{{Namespace: "email", Value: "new@example.com"}, email}, Attributes: map[string]any{"x": 1.0}},
			wantErr:   nil, // found by email: no conflict, the new email is added
			wantField: "",
		},
		{
			name:        "two identities of two profiles conflict",
			req:         UpsertRequest{Identities: []Identity{{Namespace: CustomerIDNamespace, Value: "C2"}}},
			wantErr:     nil,
			wantField:   "",
			wantCreated: true,
		},
		{
			name:      "conflict names the field",
			req:       UpsertRequest{Identities: []Identity{{Namespace: CustomerIDNamespace, Value: "C2"}, cust}},
			wantErr:   ErrAlreadyExists,
			wantField: "identities[1]",
		},
		{
			name:      "unknown profile id is NotFound",
			req:       UpsertRequest{ID: ID{1}},
			wantErr:   ErrNotFound,
			wantField: "profile_id",
		},
		{
			name: "older consent is ignored",
			req:  UpsertRequest{ID: first.ID, Consent: &ConsentUpdate{State: ConsentOptedOut, Time: t0 - sec}},
			check: func(t *testing.T, p *Profile) {
				if p.Consent != ConsentOptedIn {
					t.Errorf("got consent %d, want opted in", p.Consent)
				}
			},
		},
		{
			name: "newer consent wins",
			req:  UpsertRequest{ID: first.ID, Consent: &ConsentUpdate{State: ConsentOptedOut, Time: t0 + sec}},
			check: func(t *testing.T, p *Profile) {
				if p.Consent != ConsentOptedOut {
					t.Errorf("got consent %d, want opted out", p.Consent)
				}
			},
		},
		{
			name: "replace attributes drops the others",
			req:  UpsertRequest{ID: first.ID, Attributes: map[string]any{"only": true}, ReplaceAttributes: true},
			check: func(t *testing.T, p *Profile) {
				if got := p.VisibleAttributes(); len(got) != 1 || got["only"] != true {
					t.Errorf("got attributes %v, want only=true", got)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p *Profile
			var created bool
			err := m.do(t, func(w *Workset) (err error) {
				p, created, err = w.Upsert(tt.req)
				return err
			})
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if f, _ := fault.FieldOf(err); f != tt.wantField {
					t.Fatalf("got field %q, want %q", f, tt.wantField)
				}
				return
			}
			if created != tt.wantCreated {
				t.Errorf("got created %v, want %v", created, tt.wantCreated)
			}
			if tt.check != nil {
				tt.check(t, p)
			}
			m.checkInvariants(t)
		})
	}
}

func TestDeleteRemovesEveryIndexEntry(t *testing.T) {
	m := newMemStore()
	m.register(t, "A", *regDev("aa", "d1", 1))
	m.register(t, "A", *regDev("bb", "d2", 1))
	m.register(t, "B", *regDev("cc", "d3", 1))
	var n int
	err := m.do(t, func(w *Workset) error {
		p, err := w.Resolve(customer("A"), "profile")
		if err != nil {
			return err
		}
		n, err = w.Delete(p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("got %d tokens deleted, want 2", n)
	}
	for _, tok := range []string{"aa", "bb"} {
		if got := m.token(t, apnsKey(tok)); got != nil {
			t.Errorf("token %s: still found after erasure", tok)
		}
	}
	if _, ok := m.identities[Identity{CustomerIDNamespace, "A"}]; ok {
		t.Errorf("identity customer_id=A: still indexed after erasure")
	}
	for dk := range m.devices {
		if dk.DeviceID == "d1" || dk.DeviceID == "d2" {
			t.Errorf("device %s: still indexed after erasure", dk.DeviceID)
		}
	}
	if got := m.token(t, apnsKey("cc")); got == nil {
		t.Errorf("token cc of another profile: got erased, want kept")
	}
	m.checkInvariants(t)
}

// TestRegistrationsConvergeInAnyOrder applies the same registrations and
// gateway verdicts in many orders (and batchings) and checks every order
// ends in the same state: the property CRM imports rely on.
func TestRegistrationsConvergeInAnyOrder(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprintf("seed %d", seed), func(t *testing.T) { testConvergence(t, seed) })
	}
}

func testConvergence(t *testing.T, seed uint64) {
	type op struct {
		customer string
		reg      Registration
		attrs    map[string]any
		fb       *feedbackStep
	}
	rng := rand.New(rand.NewPCG(seed, 42))
	var ops []op
	tokens := []string{"a1", "b2", "c3", "d4", "e5"}
	customers := []string{"C1", "C2", "C3", "C4"}
	devices := []string{"", "", "dev1", "dev2"}
	for i := 0; i < 60; i++ {
		r := Registration{
			Key:      apnsKey(tokens[rng.IntN(len(tokens))]),
			Time:     t0 + int64(rng.IntN(8))*sec, // few distinct times: many ties
			DeviceID: devices[rng.IntN(len(devices))],
			Env:      Environment(rng.IntN(3)),
			Source:   "import",
		}
		if rng.IntN(5) == 0 {
			r.Device = Device{Model: "iPhone", OSVersion: "17." + string(rune('0'+rng.IntN(3)))}
		}
		o := op{customer: customers[rng.IntN(len(customers))], reg: r}
		if rng.IntN(3) == 0 {
			o.attrs = map[string]any{"tier": []string{"gold", "silver"}[rng.IntN(2)]}
			if rng.IntN(2) == 0 {
				o.attrs["locale"] = nil
			} else {
				o.attrs["locale"] = "en-GB"
			}
		}
		ops = append(ops, o)
	}
	for i := 0; i < 6; i++ {
		ops = append(ops, op{fb: &feedbackStep{key: apnsKey(tokens[rng.IntN(len(tokens))]), reason: ReasonUnregistered, at: t0 + int64(rng.IntN(8))*sec}})
	}
	// Gateway verdicts only concern tokens that exist (a verdict on an
	// unknown token is dropped), so every token is registered first, in
	// every order; everything after that is shuffled.
	var first []op
	for _, tok := range tokens {
		first = append(first, op{customer: "C0", reg: Registration{Key: apnsKey(tok), Time: t0 - sec, Source: "import"}})
	}
	var want string
	for trial := 0; trial < 40; trial++ {
		order := rand.New(rand.NewPCG(uint64(trial), 7)).Perm(len(ops))
		batch := 1 + trial%7 // several rows per workset, like an import batch
		m := newMemStore()
		for _, o := range first {
			if _, _, err := applyOp(m, t, o.customer, o.reg); err != nil {
				t.Fatal(err)
			}
		}
		for start := 0; start < len(order); start += batch {
			err := m.do(t, func(w *Workset) error {
				for _, j := range order[start:min(start+batch, len(order))] {
					o := ops[j]
					if o.fb != nil {
						if _, err := w.Feedback(o.fb.key, o.fb.reason, o.fb.at); err != nil {
							return err
						}
						continue
					}
					if _, _, err := w.Import(ImportRow{CustomerID: o.customer, Reg: o.reg, Attributes: o.attrs}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		m.checkInvariants(t)
		got := m.state(t)
		if trial == 0 {
			want = got
			continue
		}
		if got != want {
			for _, j := range order {
				o := ops[j]
				if o.fb != nil {
					t.Logf("fb %s at %d", o.fb.key.Token, (o.fb.at-t0)/sec)
					continue
				}
				if o.reg.Key.Token == "c3" || o.reg.Key.Token == "e5" {
					t.Logf("%s %s t=%d dev=%q dev=%+v env=%d", o.customer, o.reg.Key.Token, (o.reg.Time-t0)/sec, o.reg.DeviceID, o.reg.Device, o.reg.Env)
				}
			}
			t.Fatalf("order %d (batches of %d) diverged:\ngot:\n%s\nwant:\n%s", trial, batch, got, want)
		}
	}
}
