package profile

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Domain sentinels; the gRPC adapter maps them to status codes.
var (
	// ErrNotFound: the profile or token does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: an identity belongs to another profile.
	ErrAlreadyExists = errors.New("already exists")
)

// CustomerIDNamespace is the identity namespace of the CRM's customer ids.
const CustomerIDNamespace = "customer_id"

// Loader reads stored state for a Workset. The store implements it over one
// bbolt transaction. Absence is reported with nil or found=false, never with
// an error.
type Loader interface {
	// LoadProfile returns the profile record, or nil.
	LoadProfile(id ID) (*Profile, error)
	// ProfileExists reports whether a profile record exists.
	ProfileExists(id ID) (bool, error)
	// LoadToken returns the hot part of the token with key k (Full false),
	// or nil.
	LoadToken(k TokenKey) (*Token, error)
	// LoadTokenDetails fills t's details from the record of token id stored
	// under owner.
	LoadTokenDetails(owner ID, id TokenID, t *Token) error
	// LoadProfileTokens returns the full tokens stored under owner.
	LoadProfileTokens(owner ID) ([]*Token, error)
	LoadIdentityOwner(idn Identity) (owner ID, found bool, err error)
	// LoadDeviceTokens returns the tokens registered for an app install.
	LoadDeviceTokens(k DeviceKey) ([]string, error)
	// CountProfileTokens counts the tokens stored under owner, active and
	// inactive; it may stop counting past limit.
	CountProfileTokens(owner ID, limit int) (int, error)
}

type profileSlot struct {
	id     ID
	p      *Profile // nil: absent, deleted, or not loaded yet
	loaded bool     // p reflects the store (or a change)
	known  bool     // exists is known
	exists bool
	dirty  bool
	// tokens is how many tokens the profile owns, once known; kept apart
	// from the fields above, which describe the record.
	tokens tokenCount
}

// tokenCount is how many tokens (active and inactive) a profile owns as a
// workset sees it: read once before the workset adds a token to the
// profile or moves one away from it, then kept up to date with each such
// change, so it is never a guess even across the batches of an import
// (dirty counts carry over with Overlay).
type tokenCount struct {
	// n saturates at MaxProfileTokens+1, "more than the cap": a profile
	// stored before the cap existed may own more, and then stays over it
	// whatever it loses in one workset.
	n     int32
	known bool
	dirty bool
}

const tokenCountOver = MaxProfileTokens + 1

type tokenSlot struct {
	id TokenID
	t  *Token // nil: absent or deleted
	// stored says records exist in the store; storedOwner is the profile
	// its details are stored under.
	stored       bool
	storedOwner  ID
	hotDirty     bool
	detailsDirty bool
}

type ownerSlot struct {
	idn   Identity
	id    ID
	found bool
	dirty bool
}

// deviceSlot is the set of tokens registered for one app install, with the
// entries changed (token → present) to write back.
type deviceSlot struct {
	members map[string]struct{}
	changed map[string]bool
}

// Workset is the in-memory state one mutation (or one import batch) works
// on: everything it reads is loaded once and cached, every rule applies in
// memory, and Changes lists what to write back, so the store can persist it
// in one transaction with sorted keys. Domain errors are returned before
// anything is changed.
type Workset struct {
	load  Loader
	newID func() ID
	now   int64

	profiles       map[ID]*profileSlot
	tokens         map[TokenID]*tokenSlot
	identityOwners map[Identity]*ownerSlot
	deviceTokens   map[DeviceKey]*deviceSlot

	// prev is the previous batch of an import (see Overlay): a key this
	// workset has not cached is taken from prev's changes, when prev
	// changed it, before it is loaded.
	prev *Workset

	// gained and prevGained list, by owner, the tokens this workset and
	// prev created on a profile or moved to it: the tokens a profile owns
	// that the loader may not list under it yet. Only an eviction needs
	// them (see profileTokenSlots), so they are built at the first one
	// (nil until then) and gained is kept up to date from then on.
	gained, prevGained map[ID][]*tokenSlot

	// storedSlots caches, for profileTokenSlots, the slots of the tokens
	// LoadProfileTokens lists: the loader's view does not change while the
	// workset lives and a key's slot is never replaced, and an import can
	// bring many rows for one full profile, each of which would otherwise
	// load and hash all of its tokens again to look for one to evict.
	storedSlots map[ID][]*tokenSlot

	// Slots come from slabs: a batch makes hundreds of thousands of them.
	// A key's slot is never replaced, only updated in place, so Changes can
	// walk the slabs (in the order the slots were made, which for a batch
	// seeded in key order is key order) instead of the maps.
	profileSlots slab[profileSlot]
	tokenSlots   slab[tokenSlot]
	ownerSlots   slab[ownerSlot]
}

// slab hands out pointers to values allocated in chunks that start small
// (a single registration needs a handful) and grow to a thousand, and
// remembers them in allocation order.
type slab[T any] struct {
	chunks [][]T
	n      int
}

func (s *slab[T]) alloc(v T) *T {
	last := len(s.chunks) - 1
	if last < 0 || len(s.chunks[last]) == cap(s.chunks[last]) {
		c := 8
		if last >= 0 {
			c = min(1024, 2*cap(s.chunks[last]))
		}
		s.chunks = append(s.chunks, make([]T, 0, c))
		last++
	}
	s.chunks[last] = append(s.chunks[last], v)
	s.n++
	return &s.chunks[last][len(s.chunks[last])-1]
}

// Reserve sizes the workset for a batch touching about n rows' worth of
// profiles, tokens and identities, so its maps do not grow step by step.
func (w *Workset) Reserve(n int) {
	w.profiles = make(map[ID]*profileSlot, n)
	w.tokens = make(map[TokenID]*tokenSlot, n)
	w.identityOwners = make(map[Identity]*ownerSlot, n)
}

// NewWorkset starts a workset reading through load; newID makes ids for new
// profiles and now (unix nanoseconds) stamps changes.
func NewWorkset(load Loader, newID func() ID, now int64) *Workset {
	return &Workset{
		load:           load,
		newID:          newID,
		now:            now,
		profiles:       map[ID]*profileSlot{},
		tokens:         map[TokenID]*tokenSlot{},
		identityOwners: map[Identity]*ownerSlot{},
		deviceTokens:   map[DeviceKey]*deviceSlot{},
	}
}

// Now is the workset's clock (unix nanoseconds).
func (w *Workset) Now() int64 { return w.now }

// Bind points a workset seeded ahead of time (possibly with no loader) at
// the loader of the transaction that will apply it, and sets its clock.
func (w *Workset) Bind(load Loader, now int64) {
	w.load, w.now = load, now
}

// Overlay makes w, the workset of the next batch of an import, see what
// prev (the batch before, applied but maybe not committed yet) changed
// instead of the store's older state: the slots w was seeded with are
// updated in place (so the refs seeding returned stay valid), and a key w
// has not cached is looked up in prev's changes before the loader. prev's
// values are shared, not copied: prev must not be used afterwards except
// to read the changes already taken from it. The loader must see at least
// everything committed before prev was applied.
func (w *Workset) Overlay(prev *Workset) {
	prev.prev = nil // w needs prev's own changes only
	w.prev = prev
	for _, chunk := range prev.profileSlots.chunks {
		for i := range chunk {
			s := &chunk[i]
			if !s.dirty && !s.tokens.dirty {
				continue
			}
			old, ok := w.profiles[s.id]
			if !ok {
				continue
			}
			if s.dirty {
				tokens := old.tokens
				*old = carriedProfile(s)
				old.tokens = tokens
			}
			if s.tokens.dirty {
				old.tokens = tokenCount{n: s.tokens.n, known: true}
			}
		}
	}
	for _, chunk := range prev.tokenSlots.chunks {
		for i := range chunk {
			if s := &chunk[i]; s.hotDirty || s.detailsDirty {
				if old, ok := w.tokens[s.id]; ok {
					*old = storedTokenSlot(s.id, s.t)
				}
			}
		}
	}
	for _, chunk := range prev.ownerSlots.chunks {
		for i := range chunk {
			if s := &chunk[i]; s.dirty {
				if old, ok := w.identityOwners[s.idn]; ok {
					*old = ownerSlot{idn: s.idn, id: s.id, found: s.found}
				}
			}
		}
	}
	for k, ds := range prev.deviceTokens {
		if _, ok := w.deviceTokens[k]; ok && len(ds.changed) > 0 {
			w.deviceTokens[k] = &deviceSlot{members: ds.members}
		}
	}
}

// carriedProfile is the clean slot of a profile prev changed.
func carriedProfile(s *profileSlot) profileSlot {
	return profileSlot{id: s.id, p: s.p, loaded: true, known: true, exists: s.p != nil}
}

// prevProfile returns the slot of profile id if the previous batch changed
// it.
func (w *Workset) prevProfile(id ID) (profileSlot, bool) {
	if w.prev != nil {
		if s, ok := w.prev.profiles[id]; ok && s.dirty {
			return carriedProfile(s), true
		}
	}
	return profileSlot{}, false
}

// SeedProfile caches a profile loaded ahead (nil when absent), so a batch can
// read its keys in sorted order before applying rows.
func (w *Workset) SeedProfile(id ID, p *Profile) {
	if s, ok := w.profiles[id]; !ok || !s.loaded {
		w.setProfileSlot(profileSlot{id: id, p: p, loaded: true, known: true, exists: p != nil})
	}
}

// SeedTokenCount caches how many tokens a profile owns, counted ahead with
// Loader.CountProfileTokens.
func (w *Workset) SeedTokenCount(id ID, n int) {
	s, ok := w.profiles[id]
	if !ok {
		s = w.profileSlots.alloc(profileSlot{id: id})
		w.profiles[id] = s
	}
	if !s.tokens.known {
		s.tokens = tokenCount{n: int32(min(n, tokenCountOver)), known: true}
	}
}

// TokenRef is a token's slot in a workset, returned by SeedToken so that
// ImportSeeded can reach it without a map lookup.
type TokenRef struct{ s *tokenSlot }

// OwnerRef is an identity's slot in a workset, returned by
// SeedIdentityOwner.
type OwnerRef struct{ s *ownerSlot }

// SeedToken caches a token loaded ahead (nil when absent): its hot part, and
// its details too when t.Full. The token must not be cached yet.
func (w *Workset) SeedToken(id TokenID, t *Token) TokenRef {
	s := w.newTokenSlot(id, t)
	w.tokens[id] = s
	return TokenRef{s}
}

// SeedIdentityOwner caches an identity index entry loaded ahead. The
// identity must not be cached yet.
func (w *Workset) SeedIdentityOwner(idn Identity, owner ID, found bool) OwnerRef {
	s := w.ownerSlots.alloc(ownerSlot{idn: idn, id: owner, found: found})
	w.identityOwners[idn] = s
	return OwnerRef{s}
}

// SeedDevice caches the tokens of an app install loaded ahead.
func (w *Workset) SeedDevice(k DeviceKey, tokens []string) {
	if _, ok := w.deviceTokens[k]; !ok {
		w.deviceTokens[k] = newDeviceSlot(tokens)
	}
}

func newDeviceSlot(tokens []string) *deviceSlot {
	ds := &deviceSlot{members: make(map[string]struct{}, len(tokens))}
	for _, t := range tokens {
		ds.members[t] = struct{}{}
	}
	return ds
}

// TokenOwnerHint returns the stored owner of a token already cached, for
// batches that prefetch the details of tokens about to move.
func (w *Workset) TokenOwnerHint(id TokenID) (ID, bool) {
	s, ok := w.tokens[id]
	if !ok || s.t == nil || !s.stored {
		return ID{}, false
	}
	return s.storedOwner, true
}

func (w *Workset) newTokenSlot(id TokenID, t *Token) *tokenSlot {
	return w.tokenSlots.alloc(storedTokenSlot(id, t))
}

// storedTokenSlot is the clean slot of a token as stored (t nil: absent).
func storedTokenSlot(id TokenID, t *Token) tokenSlot {
	s := tokenSlot{id: id, t: t}
	if t != nil {
		s.stored, s.storedOwner = true, t.Owner
	}
	return s
}

// Profile returns the profile with id, or nil when there is none.
func (w *Workset) Profile(id ID) (*Profile, error) {
	s, ok := w.profiles[id]
	if ok && s.loaded {
		return s.p, nil
	}
	if ok && s.known && !s.exists {
		return nil, nil
	}
	if v, ok := w.prevProfile(id); ok {
		w.setProfileSlot(v)
		return v.p, nil
	}
	p, err := w.load.LoadProfile(id)
	if err != nil {
		return nil, err
	}
	w.setProfileSlot(profileSlot{id: id, p: p, loaded: true, known: true, exists: p != nil})
	return p, nil
}

func (w *Workset) profileExists(id ID) (bool, error) {
	if s, ok := w.profiles[id]; ok && s.known {
		return s.exists, nil
	}
	if v, ok := w.prevProfile(id); ok {
		w.setProfileSlot(v)
		return v.exists, nil
	}
	exists, err := w.load.ProfileExists(id)
	if err != nil {
		return false, err
	}
	w.setProfileSlot(profileSlot{id: id, known: true, exists: exists})
	return exists, nil
}

// setProfileSlot sets the slot of v.id, updating it in place when there is
// one (its token count stays: v describes the record).
func (w *Workset) setProfileSlot(v profileSlot) {
	if s, ok := w.profiles[v.id]; ok {
		v.tokens = s.tokens
		*s = v
		return
	}
	w.profiles[v.id] = w.profileSlots.alloc(v)
}

// tokenSlotCount returns the slot of profile id with its token count
// known: cached, carried from the previous batch, or counted through the
// loader.
func (w *Workset) tokenSlotCount(id ID) (*profileSlot, error) {
	s, ok := w.profiles[id]
	if ok && s.tokens.known {
		return s, nil
	}
	var c tokenCount
	if ps, found := w.prevTokenCount(id); found {
		c = ps
	} else {
		n, err := w.load.CountProfileTokens(id, tokenCountOver)
		if err != nil {
			return nil, err
		}
		c = tokenCount{n: int32(min(n, tokenCountOver)), known: true}
	}
	if !ok {
		s = w.profileSlots.alloc(profileSlot{id: id})
		w.profiles[id] = s
	}
	s.tokens = c
	return s, nil
}

// prevTokenCount returns the token count of profile id if the previous
// batch changed it.
func (w *Workset) prevTokenCount(id ID) (tokenCount, bool) {
	if w.prev != nil {
		if s, ok := w.prev.profiles[id]; ok && s.tokens.dirty {
			return tokenCount{n: s.tokens.n, known: true}, true
		}
	}
	return tokenCount{}, false
}

// makeRoomForToken makes sure profile id may own one more token (field
// names the request field that would add it): at the cap, its least
// recently seen inactive token is evicted; when every token it owns is
// active, it fails with a LimitError and nothing changed. The caller must
// then add the token: the count was lowered for it.
func (w *Workset) makeRoomForToken(id ID, field string) (*profileSlot, error) {
	s, err := w.tokenSlotCount(id)
	if err != nil {
		return nil, err
	}
	if s.tokens.n < MaxProfileTokens {
		return s, nil
	}
	victim, err := w.evictionVictim(id)
	if err != nil {
		return nil, err
	}
	if victim == nil {
		return nil, tokenLimitError(field, id.String())
	}
	if err := w.evict(s, victim); err != nil {
		return nil, err
	}
	return s, nil
}

// evictionVictim returns the slot of the token profile id would evict to
// make room for another: the inactive one seen least recently (smallest
// SourceStamp, last_seen_time; equal stamps go to the smaller token id, so
// every order agrees), or nil when all of its tokens are active.
func (w *Workset) evictionVictim(id ID) (*tokenSlot, error) {
	slots, err := w.profileTokenSlots(id)
	if err != nil {
		return nil, err
	}
	var victim *tokenSlot
	for _, s := range slots {
		if s.t.Active() {
			continue
		}
		if victim == nil || s.t.SourceStamp.Less(victim.t.SourceStamp) ||
			(s.t.SourceStamp == victim.t.SourceStamp && bytes.Compare(s.id[:], victim.id[:]) < 0) {
			victim = s
		}
	}
	return victim, nil
}

// evict erases the token in s, which the profile of owner owns: its
// records and its device entry go as Delete erases a profile's tokens,
// and it frees its place in the count as a token moving away does. A
// later registration of the token creates it afresh: what the store knew
// of it (its deactivation by a gateway included) is gone.
func (w *Workset) evict(owner *profileSlot, s *tokenSlot) error {
	if err := w.full(s); err != nil {
		return err
	}
	if err := w.dropToken(s, s.t); err != nil {
		return err
	}
	owner.addTokens(-1)
	return nil
}

// dropToken erases the token t in slot s: both of its records and its
// entry in its device's tokens, whose current token is settled again.
func (w *Workset) dropToken(s *tokenSlot, t *Token) error {
	s.t = nil
	s.hotDirty, s.detailsDirty = true, true
	if t.DeviceID != "" {
		return w.leaveDevice(DeviceKey{t.Platform, t.AppID, t.DeviceID}, s, t.Token)
	}
	return nil
}

// profileTokenSlots returns the slots of every token profile id owns as
// this workset sees it: the tokens the loader lists under it (which may
// predate prev's changes), and those this workset or prev created on it
// or moved to it, each taken from this workset, else prev, else as
// loaded, and kept when it is still the profile's.
func (w *Workset) profileTokenSlots(id ID) ([]*tokenSlot, error) {
	stored, ok := w.storedSlots[id]
	if !ok {
		loaded, err := w.load.LoadProfileTokens(id)
		if err != nil {
			return nil, err
		}
		stored = make([]*tokenSlot, len(loaded))
		for i, t := range loaded {
			stored[i] = w.cachedTokenSlot(t.Key().ID(), t)
		}
		if w.storedSlots == nil {
			w.storedSlots = map[ID][]*tokenSlot{}
		}
		w.storedSlots[id] = stored
	}
	w.indexGains()
	seen := make(map[*tokenSlot]struct{}, len(stored))
	var out []*tokenSlot
	add := func(s *tokenSlot) {
		if s.t == nil || s.t.Owner != id {
			return
		}
		if _, dup := seen[s]; !dup {
			seen[s] = struct{}{}
			out = append(out, s)
		}
	}
	for _, s := range stored {
		add(s)
	}
	for _, ps := range w.prevGained[id] {
		add(w.cachedTokenSlot(ps.id, nil))
	}
	for _, s := range w.gained[id] {
		add(s)
	}
	return out, nil
}

// cachedTokenSlot returns the slot of token id: cached, else made from
// prev's changes, else from loaded (its state in the loader).
func (w *Workset) cachedTokenSlot(id TokenID, loaded *Token) *tokenSlot {
	if s, ok := w.tokens[id]; ok {
		return s
	}
	t := loaded
	if w.prev != nil {
		if ps, ok := w.prev.tokens[id]; ok && (ps.hotDirty || ps.detailsDirty) {
			t = ps.t
		}
	}
	s := w.newTokenSlot(id, t)
	w.tokens[id] = s
	return s
}

// indexGains builds gained and prevGained once.
func (w *Workset) indexGains() {
	if w.gained != nil {
		return
	}
	w.gained, w.prevGained = map[ID][]*tokenSlot{}, map[ID][]*tokenSlot{}
	indexGains(w.gained, &w.tokenSlots, false)
	if w.prev != nil {
		indexGains(w.prevGained, &w.prev.tokenSlots, true)
	}
}

// indexGains adds to index the slots of slab holding a token stored under
// another profile or not at all (only changed ones when changed): a token
// created or moved.
func indexGains(index map[ID][]*tokenSlot, slab *slab[tokenSlot], changed bool) {
	for _, chunk := range slab.chunks {
		for i := range chunk {
			s := &chunk[i]
			if changed && !s.hotDirty && !s.detailsDirty {
				continue
			}
			if s.t != nil && (!s.stored || s.storedOwner != s.t.Owner) {
				index[s.t.Owner] = append(index[s.t.Owner], s)
			}
		}
	}
}

// gain notes that profile id now owns the token in s, for
// profileTokenSlots (once gained is built).
func (w *Workset) gain(id ID, s *tokenSlot) {
	if w.gained != nil {
		w.gained[id] = append(w.gained[id], s)
	}
}

// addTokens changes the count of the profile in s by d (+1 or -1).
func (s *profileSlot) addTokens(d int32) {
	if s.tokens.n < tokenCountOver || d > 0 {
		s.tokens.n = min(s.tokens.n+d, tokenCountOver)
	}
	s.tokens.dirty = true
}

func (w *Workset) markDirty(p *Profile) {
	p.UpdateTime = w.now
	w.setProfileSlot(profileSlot{id: p.ID, p: p, loaded: true, known: true, exists: true, dirty: true})
}

func (w *Workset) newProfile() *Profile {
	p := &Profile{ID: w.newID(), CreateTime: w.now, attrBytesKnown: true}
	w.markDirty(p)
	w.profiles[p.ID].tokens = tokenCount{known: true, dirty: true}
	return p
}

// token returns the slot of the token with key k, loading its hot part.
func (w *Workset) token(k TokenKey) (*tokenSlot, error) { return w.tokenByID(k, k.ID()) }

// tokenByID is token for a key whose id the caller already has.
func (w *Workset) tokenByID(k TokenKey, id TokenID) (*tokenSlot, error) {
	if s, ok := w.tokens[id]; ok {
		return s, nil
	}
	if w.prev != nil {
		if ps, ok := w.prev.tokens[id]; ok && (ps.hotDirty || ps.detailsDirty) {
			s := w.newTokenSlot(id, ps.t)
			w.tokens[id] = s
			return s, nil
		}
	}
	t, err := w.load.LoadToken(k)
	if err != nil {
		return nil, err
	}
	s := w.newTokenSlot(id, t)
	w.tokens[id] = s
	return s, nil
}

// full loads the token's details unless they are at hand.
func (w *Workset) full(s *tokenSlot) error {
	if s.t == nil || s.t.Full {
		return nil
	}
	if !s.stored {
		s.t.Full = true // a new token: nothing stored yet
		return nil
	}
	return w.load.LoadTokenDetails(s.storedOwner, s.id, s.t)
}

// IdentityOwner returns the id of the profile owning idn.
func (w *Workset) IdentityOwner(idn Identity) (ID, bool, error) {
	if s, ok := w.identityOwners[idn]; ok {
		return s.id, s.found, nil
	}
	if w.prev != nil {
		if ps, ok := w.prev.identityOwners[idn]; ok && ps.dirty {
			w.identityOwners[idn] = w.ownerSlots.alloc(ownerSlot{idn: idn, id: ps.id, found: ps.found})
			return ps.id, ps.found, nil
		}
	}
	id, found, err := w.load.LoadIdentityOwner(idn)
	if err != nil {
		return ID{}, false, err
	}
	w.identityOwners[idn] = w.ownerSlots.alloc(ownerSlot{idn: idn, id: id, found: found})
	return id, found, nil
}

func (w *Workset) setIdentityOwner(idn Identity, id ID, found bool) {
	if s, ok := w.identityOwners[idn]; ok {
		*s = ownerSlot{idn: idn, id: id, found: found, dirty: true}
		return
	}
	w.identityOwners[idn] = w.ownerSlots.alloc(ownerSlot{idn: idn, id: id, found: found, dirty: true})
}

func (w *Workset) device(k DeviceKey) (*deviceSlot, error) {
	if ds, ok := w.deviceTokens[k]; ok {
		return ds, nil
	}
	if w.prev != nil {
		if ps, ok := w.prev.deviceTokens[k]; ok && len(ps.changed) > 0 {
			ds := &deviceSlot{members: ps.members}
			w.deviceTokens[k] = ds
			return ds, nil
		}
	}
	tokens, err := w.load.LoadDeviceTokens(k)
	if err != nil {
		return nil, err
	}
	ds := newDeviceSlot(tokens)
	w.deviceTokens[k] = ds
	return ds, nil
}

func (ds *deviceSlot) set(token string, present bool) {
	if _, ok := ds.members[token]; ok == present {
		return
	}
	if present {
		ds.members[token] = struct{}{}
	} else {
		delete(ds.members, token)
	}
	if ds.changed == nil {
		ds.changed = map[string]bool{}
	}
	ds.changed[token] = present
}

// Token returns a full copy of the token with key k; found is false when no
// profile owns it.
func (w *Workset) Token(k TokenKey) (t Token, found bool, err error) {
	s, err := w.token(k)
	if err != nil || s.t == nil {
		return Token{}, false, err
	}
	if err := w.full(s); err != nil {
		return Token{}, false, err
	}
	return cloneToken(s.t), true, nil
}

// ProfileTokens returns the full tokens of a profile, ordered by app id then
// token (the workset must not have changed them).
func (w *Workset) ProfileTokens(id ID) ([]Token, error) {
	ts, err := w.load.LoadProfileTokens(id)
	if err != nil {
		return nil, err
	}
	out := make([]Token, len(ts))
	for i, t := range ts {
		out[i] = *t
	}
	SortTokens(out)
	return out, nil
}

// Ref names a profile by id or by identity.
type Ref struct {
	ID         ID
	Identity   Identity
	ByIdentity bool
}

// Field is the request field a Ref came from, under prefix (e.g. "profile").
func (r Ref) Field(prefix string) string {
	if r.ByIdentity {
		return prefix + ".identity"
	}
	return prefix + ".profile_id"
}

func (r Ref) String() string {
	if r.ByIdentity {
		return fmt.Sprintf("identity %s=%q", r.Identity.Namespace, r.Identity.Value)
	}
	return "profile " + r.ID.String()
}

// ResolveID finds the id of the profile ref names; NotFound on the ref's
// field under prefix otherwise.
func (w *Workset) ResolveID(ref Ref, prefix string) (ID, error) {
	if ref.ByIdentity {
		owner, found, err := w.IdentityOwner(ref.Identity)
		if err != nil {
			return ID{}, err
		}
		if !found {
			return ID{}, fault.OnField(ErrNotFound, ref.Field(prefix), "%s not found", ref)
		}
		return owner, nil
	}
	exists, err := w.profileExists(ref.ID)
	if err != nil {
		return ID{}, err
	}
	if !exists {
		return ID{}, fault.OnField(ErrNotFound, ref.Field(prefix), "%s not found", ref)
	}
	return ref.ID, nil
}

// Resolve loads the profile ref names; NotFound on the ref's field under
// prefix otherwise.
func (w *Workset) Resolve(ref Ref, prefix string) (*Profile, error) {
	id, err := w.ResolveID(ref, prefix)
	if err != nil {
		return nil, err
	}
	p, err := w.Profile(id)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fault.OnField(ErrNotFound, ref.Field(prefix), "%s not found", ref)
	}
	return p, nil
}

// ResolveOrCreate is ResolveID, except that a profile named by an identity
// nobody owns yet is created with that identity.
func (w *Workset) ResolveOrCreate(ref Ref, prefix string) (id ID, created bool, err error) {
	if !ref.ByIdentity {
		id, err := w.ResolveID(ref, prefix)
		return id, false, err
	}
	owner, found, err := w.IdentityOwner(ref.Identity)
	if err != nil || found {
		return owner, false, err
	}
	p := w.newProfile()
	p.addIdentity(ref.Identity)
	w.setIdentityOwner(ref.Identity, p.ID, true)
	return p.ID, true, nil
}

// ConsentUpdate is a consent change with the source's time.
type ConsentUpdate struct {
	State Consent
	Time  int64
}

// UpsertRequest creates or updates a profile.
type UpsertRequest struct {
	ID                ID // zero: find by identities, or create
	Identities        []Identity
	Attributes        map[string]any // nil values delete keys
	ReplaceAttributes bool
	Consent           *ConsentUpdate
}

// Upsert applies req. Identities owned by another profile fail with
// AlreadyExists on "identities[i]" before anything changes.
func (w *Workset) Upsert(req UpsertRequest) (*Profile, bool, error) {
	var p *Profile
	if !req.ID.IsZero() {
		var err error
		if p, err = w.Profile(req.ID); err != nil {
			return nil, false, err
		}
		if p == nil {
			return nil, false, fault.OnField(ErrNotFound, "profile_id", "profile %s not found", req.ID)
		}
	}
	for i, idn := range req.Identities {
		owner, found, err := w.IdentityOwner(idn)
		if err != nil {
			return nil, false, err
		}
		if !found {
			continue
		}
		if p == nil {
			if p, err = w.Profile(owner); err != nil {
				return nil, false, err
			}
			continue
		}
		if owner != p.ID {
			return nil, false, fault.OnField(ErrAlreadyExists, fmt.Sprintf("identities[%d]", i),
				"identity %s=%q belongs to another profile", idn.Namespace, idn.Value)
		}
	}
	// The caps are checked on what the profile would become before
	// anything changes: the attributes are merged into a copy.
	var (
		name    = "(new)"
		idns    []Identity
		attrs   = &Profile{attrBytesKnown: true}
		changed bool
	)
	if p != nil {
		name, idns = p.ID.String(), p.Identities
		attrs = &Profile{Attributes: slices.Clone(p.Attributes), attrBytes: p.AttributeBytes(), attrBytesKnown: true}
	}
	added := 0
	for i, idn := range req.Identities {
		if !slices.Contains(idns, idn) && !slices.Contains(req.Identities[:i], idn) {
			added++
		}
	}
	if n := len(idns) + added; n > MaxProfileIdentities {
		return nil, false, identitiesLimitError("identities", name, n)
	}
	if req.ReplaceAttributes {
		for _, a := range p.attributes() {
			if _, keep := req.Attributes[a.Key]; !keep && a.Value != nil {
				changed = MergeAttribute(attrs, a.Key, nil, w.now) || changed
			}
		}
	}
	changed = mergeAttributes(attrs, req.Attributes, w.now) || changed
	if size := attrs.AttributeBytes(); size > MaxProfileAttributesBytes {
		return nil, false, attributesLimitError("attributes", name, size)
	}
	created := false
	if p == nil {
		p = w.newProfile()
		created = true
	}
	p.Attributes, p.attrBytes, p.attrBytesKnown = attrs.Attributes, attrs.attrBytes, true
	changed = changed || created
	for _, idn := range req.Identities {
		if p.addIdentity(idn) {
			w.setIdentityOwner(idn, p.ID, true)
			changed = true
		}
	}
	if c := req.Consent; c != nil {
		if c.Time > p.ConsentTime || (c.Time == p.ConsentTime && c.State > p.Consent) {
			p.Consent, p.ConsentTime = c.State, c.Time
			changed = true
		}
	}
	if changed {
		w.markDirty(p)
	}
	return p, created, nil
}

// attributes returns p's attributes; none when p is nil.
func (p *Profile) attributes() []Attribute {
	if p == nil {
		return nil
	}
	return p.Attributes
}

// mergeAttributes merges attrs (keys in sorted order, so the result never
// depends on map iteration) set at time t.
func mergeAttributes(p *Profile, attrs map[string]any, t int64) bool {
	if len(attrs) == 0 {
		return false
	}
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	changed := false
	for _, k := range keys {
		changed = MergeAttribute(p, k, attrs[k], t) || changed
	}
	return changed
}

// MergeAttribute sets key to val (nil deletes it) as of time t, unless the
// stored value is newer. Equal times keep the larger encoded value, so merges
// commute: any order of the same writes leaves the same attributes. It
// reports whether anything changed.
func MergeAttribute(p *Profile, key string, val any, t int64) bool {
	i, found := slices.BinarySearchFunc(p.Attributes, key, func(a Attribute, k string) int { return strings.Compare(a.Key, k) })
	if !found {
		p.Attributes = slices.Insert(p.Attributes, i, Attribute{Key: key, Value: val, Time: t})
		if p.attrBytesKnown {
			p.attrBytes += setAttributeSize(key, val)
		}
		return true
	}
	a := &p.Attributes[i]
	if !mergeWins(a, val, t) {
		return false
	}
	if p.attrBytesKnown {
		p.attrBytes += setAttributeSize(key, val) - setAttributeSize(key, a.Value)
	}
	a.Value, a.Time = val, t
	return true
}

// mergeWins reports whether writing val at time t over a changes it.
func mergeWins(a *Attribute, val any, t int64) bool {
	return t > a.Time || (t == a.Time && compareValues(val, a.Value) > 0)
}

// attributeBytesAfter is p.AttributeBytes() once attrs, set at time t, are
// merged, without merging them.
func attributeBytesAfter(p *Profile, attrs map[string]any, t int64) int {
	size := p.AttributeBytes()
	for k, val := range attrs {
		i, found := slices.BinarySearchFunc(p.Attributes, k, func(a Attribute, k string) int { return strings.Compare(a.Key, k) })
		if !found {
			size += setAttributeSize(k, val)
			continue
		}
		if a := &p.Attributes[i]; mergeWins(a, val, t) {
			size += setAttributeSize(k, val) - setAttributeSize(k, a.Value)
		}
	}
	return size
}

// Outcome says what a registration changed. The numbers match the API's.
type Outcome uint8

// Outcomes.
const (
	OutcomeCreated   Outcome = 1
	OutcomeUpdated   Outcome = 2
	OutcomeMoved     Outcome = 3
	OutcomeUnchanged Outcome = 4
)

// RegisterResult is what Register did.
type RegisterResult struct {
	Outcome Outcome
	// Owner is the profile owning the token afterwards.
	Owner ID
	// Replaced lists tokens this registration deactivated as REPLACED.
	Replaced []string
}

// Register attaches r's token to the profile target under the rules:
//   - a new token is stored on target;
//   - a registration newer (by Stamp) than the token's winning one takes
//     ownership: the token moves to target if another profile owned it, and
//     the move is appended to its history (last login wins on shared
//     devices); an older one never overrides;
//   - its APNs environment and device details are kept from the newest
//     registration that carried them;
//   - a token becomes the current token of its app+device; the older token of
//     that device becomes inactive REPLACED;
//   - a token is active when its newest registration is newer than its last
//     deactivation, which is how a late registration revives a dead token.
//
// The common case (a newer registration by the same owner) only changes the
// token's hot part; the details are read and rewritten only on a move, a
// device or environment change, or a change of active state.
func (w *Workset) Register(target ID, r Registration) (RegisterResult, error) {
	s, err := w.tokenByID(r.Key, r.tokenID())
	if err != nil {
		return RegisterResult{}, err
	}
	return w.register(target, r, s)
}

// register is Register on the token's slot s.
func (w *Workset) register(target ID, r Registration, s *tokenSlot) (RegisterResult, error) {
	var err error
	st := r.stamp()
	res := RegisterResult{Outcome: OutcomeUnchanged, Owner: target}
	if s.t == nil {
		// A token its device already replaced, new to a full profile,
		// would evict an inactive token only to be stored inactive
		// itself. It is the row of a token this profile evicted before,
		// imported again (a rerun of the file, or the resume of an import
		// a crash interrupted): storing it would evict another token at
		// every rerun, report rows created, and leave another state than
		// the first import. It changes nothing, like an older
		// registration.
		if r.DeviceID != "" {
			c, err := w.tokenSlotCount(target)
			if err != nil {
				return RegisterResult{}, err
			}
			if c.tokens.n >= MaxProfileTokens {
				stale, err := w.replacedOnArrival(r.Key, r.DeviceID, st)
				if err != nil || stale {
					return res, err
				}
			}
		}
		owner, err := w.makeRoomForToken(target, "token")
		if err != nil {
			return RegisterResult{}, err
		}
		owner.addTokens(1)
		t := &Token{
			Owner:       target,
			Platform:    r.Key.Platform,
			AppID:       r.Key.AppID,
			Token:       r.Key.Token,
			SourceStamp: st,
			CreateTime:  w.now,
			UpdateTime:  w.now,
			History:     []Move{{To: target, Time: r.Time, Source: r.Source}},
			Full:        true,
		}
		if r.Env != EnvUnspecified {
			t.Env, t.EnvStamp = r.Env, st
		}
		if r.hasDevice() {
			t.DeviceID, t.Device, t.DeviceFP, t.DeviceStamp = r.DeviceID, r.Device, r.deviceFP(), st
		}
		s.t, s.hotDirty, s.detailsDirty = t, true, true
		w.gain(target, s)
		res.Outcome = OutcomeCreated
		if t.DeviceID != "" {
			if res.Replaced, err = w.joinDevice(s, t.DeviceID); err != nil {
				return RegisterResult{}, err
			}
		}
		return res, nil
	}

	t := s.t
	wins := t.SourceStamp.Less(st)
	move := wins && t.Owner != target
	var gainer, loser *profileSlot
	if move {
		if gainer, err = w.makeRoomForToken(target, "token"); err != nil {
			return RegisterResult{}, err
		}
		if loser, err = w.tokenSlotCount(t.Owner); err != nil {
			return RegisterResult{}, err
		}
	}
	// Read after an eviction, which may settle this token's device again.
	wasActive := t.Active()
	envAdvance := r.Env != EnvUnspecified && t.EnvStamp.Less(st)
	deviceAdvance := r.hasDevice() && t.DeviceStamp.Less(st)
	deviceChange := deviceAdvance && r.deviceFP() != t.DeviceFP
	nowActive := wasActive
	if wins {
		nowActive = t.DeactivatedAt < st.Time
	}
	if move || deviceChange || (envAdvance && t.Env != r.Env) || nowActive != wasActive {
		if err := w.full(s); err != nil {
			return RegisterResult{}, err
		}
		s.detailsDirty = true
	}
	oldDevice := t.DeviceID // loaded above when the device changes
	changed := false
	if wins {
		t.SourceStamp = st
		changed = true
		if move {
			t.History = appendMove(t.History, Move{From: t.Owner, To: target, Time: r.Time, Source: r.Source})
			t.Owner = target
			gainer.addTokens(1)
			loser.addTokens(-1)
			w.gain(target, s)
			res.Outcome = OutcomeMoved
		}
	}
	if envAdvance {
		t.Env, t.EnvStamp = r.Env, st
		changed = true
	}
	if deviceAdvance {
		t.DeviceStamp = st
		changed = true
		if deviceChange {
			t.DeviceID, t.Device, t.DeviceFP = r.DeviceID, r.Device, r.deviceFP()
		}
	}
	res.Owner = t.Owner
	if !changed {
		return res, nil
	}
	t.UpdateTime = w.now
	s.hotDirty = true
	if res.Outcome == OutcomeUnchanged {
		res.Outcome = OutcomeUpdated
	}
	if deviceAdvance {
		// A newer device registration can make this token its device's
		// current one again, or move it to another device.
		if deviceChange && oldDevice != "" && oldDevice != t.DeviceID {
			if err := w.leaveDevice(DeviceKey{t.Platform, t.AppID, oldDevice}, s, t.Token); err != nil {
				return RegisterResult{}, err
			}
		}
		// The device id is the registration's: it either just changed to it
		// or matched it already (same fingerprint), even when the token's
		// details are not loaded.
		if r.DeviceID != "" {
			if res.Replaced, err = w.joinDevice(s, r.DeviceID); err != nil {
				return RegisterResult{}, err
			}
		}
	}
	return res, nil
}

// appendMove appends m to a token's history, dropping the oldest moves
// beyond MaxTokenHistory.
func appendMove(h []Move, m Move) []Move {
	if len(h) < MaxTokenHistory {
		return append(h, m)
	}
	n := copy(h, h[len(h)-MaxTokenHistory+1:])
	h = h[:n]
	return append(h, m)
}

// deactivate records a deactivation of the token in s; it reports whether
// the token went from active to inactive.
func (w *Workset) deactivate(s *tokenSlot, at int64, reason InactiveReason) (bool, error) {
	wasActive := s.t.Active()
	if !s.t.deactivate(at, reason) {
		return false, nil
	}
	s.t.UpdateTime = w.now
	s.hotDirty = true
	if s.t.Active() == wasActive {
		return false, nil
	}
	// The details carry the active flag audience scans read.
	if err := w.full(s); err != nil {
		return false, err
	}
	s.detailsDirty = true
	return true, nil
}

// joinDevice adds the token in s to its device and settles which of the
// device's tokens is current; it returns the tokens this replaced.
func (w *Workset) joinDevice(s *tokenSlot, deviceID string) ([]string, error) {
	dk := DeviceKey{s.t.Platform, s.t.AppID, deviceID}
	ds, err := w.device(dk)
	if err != nil {
		return nil, err
	}
	ds.set(s.t.Token, true)
	replaced, err := w.settleDevice(dk)
	// The token itself may turn out older than the device's current one:
	// it is replaced, but it did not replace itself.
	return slices.DeleteFunc(replaced, func(t string) bool { return t == s.t.Token }), err
}

// leaveDevice removes the token in s from device dk and settles the tokens
// left: when the current token leaves, the next newest becomes current
// again. The token itself is no longer replaced by anything on dk (joining
// its new device, if any, settles it there). s.t is nil for a deleted token.
func (w *Workset) leaveDevice(dk DeviceKey, s *tokenSlot, token string) error {
	ds, err := w.device(dk)
	if err != nil {
		return err
	}
	if _, ok := ds.members[token]; !ok {
		return nil
	}
	ds.set(token, false)
	if s.t != nil {
		if err := w.setReplaced(s, false); err != nil {
			return err
		}
	}
	_, err = w.settleDevice(dk)
	return err
}

// replacedOnArrival reports whether a token k, new to device deviceID with
// stamp st, would be replaced at once: the device has a token registered
// for it more recently (by settleDevice's order).
func (w *Workset) replacedOnArrival(k TokenKey, deviceID string, st Stamp) (bool, error) {
	ds, err := w.device(DeviceKey{k.Platform, k.AppID, deviceID})
	if err != nil {
		return false, err
	}
	for tok := range ds.members {
		s, err := w.token(TokenKey{k.Platform, k.AppID, tok})
		if err != nil {
			return false, err
		}
		if s.t == nil {
			continue // a stale entry: the token is gone
		}
		if st.Less(s.t.DeviceStamp) || (s.t.DeviceStamp == st && k.Token < s.t.Token) {
			return true, nil
		}
	}
	return false, nil
}

// settleDevice marks every token of device dk Replaced except the one
// registered for the device most recently (by device stamp; equal stamps
// go to the larger token, so every order agrees). It returns the tokens that
// became replaced.
func (w *Workset) settleDevice(dk DeviceKey) ([]string, error) {
	ds, err := w.device(dk)
	if err != nil {
		return nil, err
	}
	slots := make([]*tokenSlot, 0, len(ds.members))
	var newest *tokenSlot
	for tok := range ds.members {
		s, err := w.token(TokenKey{dk.Platform, dk.AppID, tok})
		if err != nil {
			return nil, err
		}
		if s.t == nil {
			ds.set(tok, false) // a stale entry: the token is gone
			continue
		}
		slots = append(slots, s)
		if newest == nil || newest.t.DeviceStamp.Less(s.t.DeviceStamp) ||
			(newest.t.DeviceStamp == s.t.DeviceStamp && newest.t.Token < s.t.Token) {
			newest = s
		}
	}
	var replaced []string
	for _, s := range slots {
		was := s.t.Replaced
		if err := w.setReplaced(s, s != newest); err != nil {
			return nil, err
		}
		if !was && s.t.Replaced {
			replaced = append(replaced, s.t.Token)
		}
	}
	slices.Sort(replaced)
	return replaced, nil
}

func (w *Workset) setReplaced(s *tokenSlot, replaced bool) error {
	if s.t.Replaced == replaced {
		return nil
	}
	wasActive := s.t.Active()
	s.t.Replaced = replaced
	s.t.UpdateTime = w.now
	s.hotDirty = true
	if s.t.Active() != wasActive {
		// The details carry the active flag audience scans read.
		if err := w.full(s); err != nil {
			return err
		}
		s.detailsDirty = true
	}
	return nil
}

// Unregister deactivates a token for reason; NotFound on "token" when no
// profile owns it. The deactivation is dated now, or at the token's source
// time if that is later (a device clock ahead of ours must not make the
// unregistration a no-op); a registration newer than that revives it.
func (w *Workset) Unregister(k TokenKey, reason InactiveReason) (Token, error) {
	s, err := w.token(k)
	if err != nil {
		return Token{}, err
	}
	if s.t == nil {
		return Token{}, fault.OnField(ErrNotFound, "token", "token not found for app %q on %s", k.AppID, k.Platform)
	}
	if _, err := w.deactivate(s, max(w.now, s.t.SourceStamp.Time), reason); err != nil {
		return Token{}, err
	}
	if err := w.full(s); err != nil {
		return Token{}, err
	}
	return cloneToken(s.t), nil
}

// FeedbackOutcome says what one gateway verdict changed.
type FeedbackOutcome uint8

// Feedback outcomes.
const (
	FeedbackDeactivated FeedbackOutcome = iota + 1
	FeedbackUnchanged
	FeedbackUnknown
)

// Feedback records a gateway verdict on a token dated at (the gateway's
// timestamp). The token becomes inactive unless it was registered after at.
func (w *Workset) Feedback(k TokenKey, reason InactiveReason, at int64) (FeedbackOutcome, error) {
	s, err := w.token(k)
	if err != nil {
		return 0, err
	}
	if s.t == nil {
		return FeedbackUnknown, nil
	}
	deactivated, err := w.deactivate(s, at, reason)
	if err != nil {
		return 0, err
	}
	if deactivated {
		return FeedbackDeactivated, nil
	}
	return FeedbackUnchanged, nil
}

// Delete erases p with its identities, tokens and every index entry
// pointing at them. It returns how many tokens were erased.
func (w *Workset) Delete(p *Profile) (int, error) {
	for _, idn := range p.Identities {
		owner, found, err := w.IdentityOwner(idn)
		if err != nil {
			return 0, err
		}
		if found && owner == p.ID {
			w.setIdentityOwner(idn, ID{}, false)
		}
	}
	tokens, err := w.load.LoadProfileTokens(p.ID)
	if err != nil {
		return 0, err
	}
	for _, t := range tokens {
		id := t.Key().ID()
		s, ok := w.tokens[id]
		if !ok {
			s = w.newTokenSlot(id, t)
			w.tokens[id] = s
		}
		if err := w.dropToken(s, t); err != nil {
			return 0, err
		}
	}
	w.setProfileSlot(profileSlot{id: p.ID, loaded: true, known: true, exists: false, dirty: true})
	w.profiles[p.ID].tokens = tokenCount{known: true, dirty: true}
	return len(tokens), nil
}

// ImportRow is one valid CRM row.
type ImportRow struct {
	CustomerID string
	Reg        Registration
	// Attributes merged into the profile as of Reg.Time.
	Attributes map[string]any
	// AttrSize measures Attributes as ValidateAttributes did; a zero
	// Encoded with attributes present is measured when needed.
	AttrSize AttrSize
	// Index is the row's zero-based index across the import's stream, to
	// report it if the row is rejected while it is applied.
	Index int64
}

// importRowOverhead is what a row holds in memory besides its strings and
// attributes: the row itself. (What the workset holds for each row is
// bounded by the batch's row count; what its attributes hold is not.)
const importRowOverhead = 256

// MemSize estimates the memory the row holds while it waits in an import
// batch, from what validation measured (no walk over the row): about 450
// bytes for a row with a typical FCM token and no attributes, 6 KB for
// one with 40 attributes of 40-character strings (5.7 KB measured).
func (r *ImportRow) MemSize() int {
	return importRowOverhead + len(r.CustomerID) + len(r.Reg.Key.AppID) + len(r.Reg.Key.Token) + len(r.Reg.DeviceID) +
		r.AttrSize.Memory
}

// Import applies one CRM row: the customer's profile is found (or created)
// through its customer_id identity, the row's attributes merge in as of the
// row's time, and the token registers under the usual rules. It reports the
// registration's outcome and whether a profile was created.
func (w *Workset) Import(row ImportRow) (Outcome, bool, error) {
	return w.ImportSeeded(row, OwnerRef{}, TokenRef{})
}

// ImportSeeded is Import for a row whose customer id and token were seeded
// into this workset: owner and token are the refs seeding returned (zero
// refs are looked up).
func (w *Workset) ImportSeeded(row ImportRow, owner OwnerRef, token TokenRef) (Outcome, bool, error) {
	idn := Identity{Namespace: CustomerIDNamespace, Value: row.CustomerID}
	var (
		id      ID
		created bool
		err     error
	)
	if o := owner.s; o != nil {
		id = o.id
		if !o.found {
			p := w.newProfile()
			p.addIdentity(idn)
			*o = ownerSlot{idn: idn, id: p.ID, found: true, dirty: true}
			id, created = p.ID, true
		}
	} else if id, created, err = w.ResolveOrCreate(Ref{Identity: idn, ByIdentity: true}, "customer_id"); err != nil {
		return 0, false, err
	}
	// A row over a cap (LimitError) changes nothing: the attributes are
	// checked, then the token registers (which checks the token cap before
	// it changes anything), then the attributes merge. A row that created
	// its profile is never over a cap: a new profile has no tokens, and one
	// row's attributes are at most MaxAttributesBytes.
	var p *Profile
	if len(row.Attributes) > 0 {
		if p, err = w.Profile(id); err != nil {
			return 0, false, err
		}
		if p != nil {
			added := row.AttrSize.Encoded
			if added == 0 {
				added = AttributesSize(row.Attributes)
			}
			// The exact size after the merge is only computed when the
			// row could take the profile past the cap.
			if p.AttributeBytes()+added > MaxProfileAttributesBytes {
				if size := attributeBytesAfter(p, row.Attributes, row.Reg.Time); size > MaxProfileAttributesBytes {
					return 0, false, attributesLimitError("attributes", id.String(), size)
				}
			}
		}
	}
	row.Reg.OwnerKey = CustomerIDNamespace + "\x00" + row.CustomerID
	var res RegisterResult
	if token.s != nil {
		res, err = w.register(id, row.Reg, token.s)
	} else {
		res, err = w.Register(id, row.Reg)
	}
	if err != nil {
		return 0, false, err
	}
	if p != nil && mergeAttributes(p, row.Attributes, row.Reg.Time) {
		w.markDirty(p)
	}
	return res.Outcome, created, nil
}

// OwnerKeyOf names a profile reference for tie-breaks: the identity when
// given, so that imports and registrations naming the same customer break
// ties alike; the id otherwise.
func OwnerKeyOf(ref Ref) string {
	if ref.ByIdentity {
		return ref.Identity.Namespace + "\x00" + ref.Identity.Value
	}
	return "\x01" + ref.ID.String()
}

func cloneToken(t *Token) Token {
	c := *t
	c.History = slices.Clone(t.History)
	return c
}

// ProfileChange is one profile record to write (Profile nil: delete ID).
type ProfileChange struct {
	ID      ID
	Profile *Profile
}

// TokenChange is one token to write. Token nil deletes both parts (details
// under DeleteDetailsOf). Otherwise Hot writes the hot part and Details the
// details under Token.Owner, after deleting the details stored under
// DeleteDetailsOf (a move) when HasOldDetails.
type TokenChange struct {
	ID              TokenID
	Token           *Token
	Hot             bool
	Details         bool
	HasOldDetails   bool
	DeleteDetailsOf ID
}

// IdentityOwnerChange is one identity index entry to write.
type IdentityOwnerChange struct {
	Identity Identity
	Owner    ID
	Found    bool
}

// DeviceTokenChange adds (Found) or removes a token of an app install.
type DeviceTokenChange struct {
	Key   DeviceKey
	Token string
	Found bool
}

// Changes lists what a workset changed, for the store to persist.
type Changes struct {
	Profiles       []ProfileChange
	Tokens         []TokenChange
	IdentityOwners []IdentityOwnerChange
	DeviceTokens   []DeviceTokenChange
}

// Empty reports whether nothing changed.
func (c *Changes) Empty() bool {
	return len(c.Profiles)+len(c.Tokens)+len(c.IdentityOwners)+len(c.DeviceTokens) == 0
}

// Changes returns everything the workset changed, each kind in the order
// its slots were made: for a batch seeded in key order, mostly key order.
func (w *Workset) Changes() Changes {
	var c Changes
	c.Profiles = make([]ProfileChange, 0, w.profileSlots.n)
	for _, chunk := range w.profileSlots.chunks {
		for i := range chunk {
			if s := &chunk[i]; s.dirty {
				c.Profiles = append(c.Profiles, ProfileChange{ID: s.id, Profile: s.p})
			}
		}
	}
	c.Tokens = make([]TokenChange, 0, w.tokenSlots.n)
	for _, chunk := range w.tokenSlots.chunks {
		for i := range chunk {
			s := &chunk[i]
			if !s.hotDirty && !s.detailsDirty {
				continue
			}
			if s.t == nil && !s.stored {
				continue // created and deleted in the same workset
			}
			tc := TokenChange{ID: s.id, Token: s.t, Hot: s.hotDirty, Details: s.detailsDirty}
			if s.stored && (s.t == nil || (s.detailsDirty && s.storedOwner != s.t.Owner)) {
				tc.HasOldDetails, tc.DeleteDetailsOf = true, s.storedOwner
			}
			c.Tokens = append(c.Tokens, tc)
		}
	}
	c.IdentityOwners = make([]IdentityOwnerChange, 0, w.ownerSlots.n)
	for _, chunk := range w.ownerSlots.chunks {
		for i := range chunk {
			if s := &chunk[i]; s.dirty {
				c.IdentityOwners = append(c.IdentityOwners, IdentityOwnerChange{Identity: s.idn, Owner: s.id, Found: s.found})
			}
		}
	}
	for k, ds := range w.deviceTokens {
		for tok, present := range ds.changed {
			c.DeviceTokens = append(c.DeviceTokens, DeviceTokenChange{Key: k, Token: tok, Found: present})
		}
	}
	return c
}
