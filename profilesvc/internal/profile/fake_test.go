package profile

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// memStore is a hand-written in-memory store for the rules: it keeps the
// same encoded records as the bbolt store (so the codec takes part in every
// test) and applies a workset's Changes the way the store does.
type memStore struct {
	profiles   map[ID][]byte
	hot        map[TokenID][]byte
	details    map[ID]map[TokenID][]byte
	identities map[Identity]ID
	devices    map[DeviceKey]map[string]bool
	gen        *Generator
	now        int64
}

func newMemStore() *memStore {
	clock := time.Unix(1_700_000_000, 0)
	return &memStore{
		profiles:   map[ID][]byte{},
		hot:        map[TokenID][]byte{},
		details:    map[ID]map[TokenID][]byte{},
		identities: map[Identity]ID{},
		devices:    map[DeviceKey]map[string]bool{},
		gen:        NewGenerator(func() time.Time { return clock }),
		now:        clock.UnixNano(),
	}
}

func (m *memStore) LoadProfile(id ID) (*Profile, error) {
	b, ok := m.profiles[id]
	if !ok {
		return nil, nil
	}
	return DecodeProfile(id, b)
}

func (m *memStore) ProfileExists(id ID) (bool, error) {
	_, ok := m.profiles[id]
	return ok, nil
}

func (m *memStore) LoadToken(k TokenKey) (*Token, error) {
	b, ok := m.hot[k.ID()]
	if !ok {
		return nil, nil
	}
	return DecodeHot(k, b)
}

func (m *memStore) LoadTokenDetails(owner ID, id TokenID, t *Token) error {
	b, ok := m.details[owner][id]
	if !ok {
		return fmt.Errorf("details of %x under %s: %w", id, owner, ErrCorrupt)
	}
	return DecodeDetails(t, b)
}

func (m *memStore) CountProfileTokens(owner ID, limit int) (int, error) {
	return min(len(m.details[owner]), limit+1), nil
}

func (m *memStore) LoadProfileTokens(owner ID) ([]*Token, error) {
	var out []*Token
	for id, b := range m.details[owner] {
		t := &Token{}
		if err := DecodeFullDetails(t, b); err != nil {
			return nil, err
		}
		if err := DecodeHotInto(t, m.hot[id]); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

func (m *memStore) LoadIdentityOwner(idn Identity) (ID, bool, error) {
	id, ok := m.identities[idn]
	return id, ok, nil
}

func (m *memStore) LoadDeviceTokens(k DeviceKey) ([]string, error) {
	var out []string
	for t := range m.devices[k] {
		out = append(out, t)
	}
	return out, nil
}

// do runs fn on a fresh workset and applies its changes unless it fails.
func (m *memStore) do(t testing.TB, fn func(w *Workset) error) error {
	t.Helper()
	m.now += int64(time.Millisecond)
	w := NewWorkset(m, m.gen.New, m.now)
	if err := fn(w); err != nil {
		return err
	}
	m.apply(w.Changes())
	return nil
}

func (m *memStore) apply(ch Changes) {
	for _, c := range ch.Profiles {
		if c.Profile == nil {
			delete(m.profiles, c.ID)
		} else {
			m.profiles[c.ID] = EncodeProfile(nil, c.Profile)
		}
	}
	for _, c := range ch.Tokens {
		if c.Hot {
			if c.Token == nil {
				delete(m.hot, c.ID)
			} else {
				m.hot[c.ID] = EncodeHot(nil, c.Token)
			}
		}
		if c.HasOldDetails {
			delete(m.details[c.DeleteDetailsOf], c.ID)
		}
		if c.Details && c.Token != nil {
			if m.details[c.Token.Owner] == nil {
				m.details[c.Token.Owner] = map[TokenID][]byte{}
			}
			m.details[c.Token.Owner][c.ID] = EncodeDetails(nil, c.Token)
		}
	}
	for _, c := range ch.IdentityOwners {
		if c.Found {
			m.identities[c.Identity] = c.Owner
		} else {
			delete(m.identities, c.Identity)
		}
	}
	for _, c := range ch.DeviceTokens {
		if c.Found {
			if m.devices[c.Key] == nil {
				m.devices[c.Key] = map[string]bool{}
			}
			m.devices[c.Key][c.Token] = true
		} else {
			delete(m.devices[c.Key], c.Token)
			if len(m.devices[c.Key]) == 0 {
				delete(m.devices, c.Key)
			}
		}
	}
}

// checkInvariants verifies the indexes agree with the records: every hot
// record has details under its owner and an existing owner, every details
// record has a hot record naming that owner, every identity points at a
// profile that lists it, and the details' active flags match the hot parts.
func (m *memStore) checkInvariants(t testing.TB) {
	t.Helper()
	for id, hb := range m.hot {
		owner, err := HotOwner(hb)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.profiles[owner]; !ok {
			t.Errorf("token %x: owner %s has no profile", id[:4], owner)
		}
		db, ok := m.details[owner][id]
		if !ok {
			t.Errorf("token %x: no details under owner %s", id[:4], owner)
			continue
		}
		var tok Token
		if err := DecodeFullDetails(&tok, db); err != nil {
			t.Fatal(err)
		}
		if err := DecodeHotInto(&tok, hb); err != nil {
			t.Fatal(err)
		}
		if tok.Key().ID() != id {
			t.Errorf("token %x: details hold another token", id[:4])
		}
		v, _ := ParseView(EncodeProfile(nil, &Profile{}), [][]byte{db})
		_ = v.EachTokenHead(func(h *TokenHead) bool {
			if h.Active != tok.Active() {
				t.Errorf("token %x: details say active=%v, hot part says %v", id[:4], h.Active, tok.Active())
			}
			return true
		})
	}
	for owner, ds := range m.details {
		for id := range ds {
			hb, ok := m.hot[id]
			if !ok {
				t.Errorf("details of %x under %s: no hot record", id[:4], owner)
				continue
			}
			if o, _ := HotOwner(hb); o != owner {
				t.Errorf("details of %x under %s: hot record names %s", id[:4], owner, o)
			}
		}
	}
	for dk, toks := range m.devices {
		var current []string
		for tok := range toks {
			b, ok := m.hot[TokenKey{dk.Platform, dk.AppID, tok}.ID()]
			if !ok {
				t.Errorf("device %s lists token %s that does not exist", dk.DeviceID, tok)
				continue
			}
			h, _ := DecodeHot(TokenKey{dk.Platform, dk.AppID, tok}, b)
			if !h.Replaced {
				current = append(current, tok)
			}
		}
		if len(toks) > 0 && len(current) != 1 {
			t.Errorf("device %s: got current tokens %q, want exactly one", dk.DeviceID, current)
		}
	}
	for idn, owner := range m.identities {
		p, _ := m.LoadProfile(owner)
		if p == nil || !p.HasIdentity(idn) {
			t.Errorf("identity %v: profile %s does not list it", idn, owner)
		}
	}
}

// state renders everything order-independent about the store, with
// profiles named by their identities (ids differ between runs) and without
// server clock times or histories (a history records the order in which
// registrations arrived, which is the one thing that may differ).
func (m *memStore) state(t testing.TB) string {
	t.Helper()
	name := func(id ID) string {
		p, _ := m.LoadProfile(id)
		if p == nil {
			return "missing:" + id.String()
		}
		var parts []string
		for _, idn := range p.Identities {
			parts = append(parts, idn.Namespace+"="+idn.Value)
		}
		return strings.Join(parts, ",")
	}
	var lines []string
	for id := range m.profiles {
		p, _ := m.LoadProfile(id)
		var attrs []string
		for _, a := range p.Attributes {
			attrs = append(attrs, fmt.Sprintf("%s=%v@%d", a.Key, a.Value, a.Time))
		}
		lines = append(lines, fmt.Sprintf("profile %s consent=%d@%d attrs=%v", name(id), p.Consent, p.ConsentTime, attrs))
		ts, _ := m.LoadProfileTokens(id)
		for _, tok := range ts {
			lines = append(lines, fmt.Sprintf("  token %s/%d/%s owner=%s source=%v active=%v replaced=%v reason=%d deact=%d env=%d@%v device=%q %+v@%v",
				tok.AppID, tok.Platform, tok.Token, name(tok.Owner), tok.SourceStamp, tok.Active(), tok.Replaced, tok.Reason, tok.DeactivatedAt,
				tok.Env, tok.EnvStamp, tok.DeviceID, tok.Device, tok.DeviceStamp))
		}
	}
	for dk, toks := range m.devices {
		for tok := range toks {
			lines = append(lines, fmt.Sprintf("device %d/%s/%s has %s", dk.Platform, dk.AppID, dk.DeviceID, tok))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// customer is a ref to the profile of a customer id.
func customer(c string) Ref {
	return Ref{Identity: Identity{Namespace: CustomerIDNamespace, Value: c}, ByIdentity: true}
}

// register registers a token for a customer, returning the result.
func (m *memStore) register(t testing.TB, c string, r Registration) RegisterResult {
	t.Helper()
	var res RegisterResult
	err := m.do(t, func(w *Workset) error {
		id, _, err := w.ResolveOrCreate(customer(c), "profile")
		if err != nil {
			return err
		}
		r.OwnerKey = OwnerKeyOf(customer(c))
		res, err = w.Register(id, r)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// token returns the stored token with key k (nil when none).
func (m *memStore) token(t testing.TB, k TokenKey) *Token {
	t.Helper()
	var tok Token
	var found bool
	w := NewWorkset(m, m.gen.New, m.now)
	tok, found, err := w.Token(k)
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		return nil
	}
	return &tok
}

func (m *memStore) ownerName(t testing.TB, id ID) string {
	t.Helper()
	p, _ := m.LoadProfile(id)
	if p == nil {
		return ""
	}
	for _, idn := range p.Identities {
		if idn.Namespace == CustomerIDNamespace {
			return idn.Value
		}
	}
	return id.String()
}

func sortedIdentities(ids []Identity) []Identity {
	out := slices.Clone(ids)
	slices.SortFunc(out, compareIdentity)
	return out
}
