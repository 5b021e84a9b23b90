package profile

import (
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
// bbolt transaction. Every method reports absence with found=false (or a nil
// profile), not with an error.
type Loader interface {
	LoadProfile(id ID) (*Profile, error)
	LoadTokenOwner(k TokenKey) (owner ID, found bool, err error)
	LoadIdentityOwner(idn Identity) (owner ID, found bool, err error)
	LoadDeviceToken(k DeviceKey) (token string, found bool, err error)
}

type profileSlot struct {
	p     *Profile // nil: absent, or deleted when dirty
	dirty bool
}

type ownerSlot struct {
	id    ID
	found bool
	dirty bool
}

type deviceSlot struct {
	token string
	found bool
	dirty bool
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
	tokenOwners    map[TokenKey]*ownerSlot
	identityOwners map[Identity]*ownerSlot
	deviceTokens   map[DeviceKey]*deviceSlot
}

// NewWorkset starts a workset reading through load; newID makes ids for new
// profiles and now (unix nanoseconds) stamps changes.
func NewWorkset(load Loader, newID func() ID, now int64) *Workset {
	return &Workset{
		load:           load,
		newID:          newID,
		now:            now,
		profiles:       map[ID]*profileSlot{},
		tokenOwners:    map[TokenKey]*ownerSlot{},
		identityOwners: map[Identity]*ownerSlot{},
		deviceTokens:   map[DeviceKey]*deviceSlot{},
	}
}

// Now is the workset's clock (unix nanoseconds).
func (w *Workset) Now() int64 { return w.now }

// SeedProfile caches a profile loaded ahead (nil when absent), so a batch can
// read its keys in sorted order before applying rows.
func (w *Workset) SeedProfile(id ID, p *Profile) {
	if _, ok := w.profiles[id]; !ok {
		w.profiles[id] = &profileSlot{p: p}
	}
}

// SeedTokenOwner caches a token index entry loaded ahead.
func (w *Workset) SeedTokenOwner(k TokenKey, owner ID, found bool) {
	if _, ok := w.tokenOwners[k]; !ok {
		w.tokenOwners[k] = &ownerSlot{id: owner, found: found}
	}
}

// SeedIdentityOwner caches an identity index entry loaded ahead.
func (w *Workset) SeedIdentityOwner(idn Identity, owner ID, found bool) {
	if _, ok := w.identityOwners[idn]; !ok {
		w.identityOwners[idn] = &ownerSlot{id: owner, found: found}
	}
}

// SeedDeviceToken caches a device index entry loaded ahead.
func (w *Workset) SeedDeviceToken(k DeviceKey, token string, found bool) {
	if _, ok := w.deviceTokens[k]; !ok {
		w.deviceTokens[k] = &deviceSlot{token: token, found: found}
	}
}

// Profile returns the profile with id, or nil when there is none.
func (w *Workset) Profile(id ID) (*Profile, error) {
	if s, ok := w.profiles[id]; ok {
		return s.p, nil
	}
	p, err := w.load.LoadProfile(id)
	if err != nil {
		return nil, err
	}
	w.profiles[id] = &profileSlot{p: p}
	return p, nil
}

func (w *Workset) markDirty(p *Profile) {
	p.UpdateTime = w.now
	s, ok := w.profiles[p.ID]
	if !ok {
		s = &profileSlot{p: p}
		w.profiles[p.ID] = s
	}
	s.dirty = true
}

func (w *Workset) newProfile() *Profile {
	p := &Profile{ID: w.newID(), CreateTime: w.now, UpdateTime: w.now}
	w.profiles[p.ID] = &profileSlot{p: p, dirty: true}
	return p
}

func (w *Workset) tokenOwner(k TokenKey) (ID, bool, error) {
	if s, ok := w.tokenOwners[k]; ok {
		return s.id, s.found, nil
	}
	id, found, err := w.load.LoadTokenOwner(k)
	if err != nil {
		return ID{}, false, err
	}
	w.tokenOwners[k] = &ownerSlot{id: id, found: found}
	return id, found, nil
}

func (w *Workset) setTokenOwner(k TokenKey, id ID, found bool) {
	w.tokenOwners[k] = &ownerSlot{id: id, found: found, dirty: true}
}

// IdentityOwner returns the id of the profile owning idn.
func (w *Workset) IdentityOwner(idn Identity) (ID, bool, error) {
	if s, ok := w.identityOwners[idn]; ok {
		return s.id, s.found, nil
	}
	id, found, err := w.load.LoadIdentityOwner(idn)
	if err != nil {
		return ID{}, false, err
	}
	w.identityOwners[idn] = &ownerSlot{id: id, found: found}
	return id, found, nil
}

func (w *Workset) setIdentityOwner(idn Identity, id ID, found bool) {
	w.identityOwners[idn] = &ownerSlot{id: id, found: found, dirty: true}
}

func (w *Workset) deviceToken(k DeviceKey) (string, bool, error) {
	if s, ok := w.deviceTokens[k]; ok {
		return s.token, s.found, nil
	}
	tok, found, err := w.load.LoadDeviceToken(k)
	if err != nil {
		return "", false, err
	}
	w.deviceTokens[k] = &deviceSlot{token: tok, found: found}
	return tok, found, nil
}

func (w *Workset) setDeviceToken(k DeviceKey, token string, found bool) {
	w.deviceTokens[k] = &deviceSlot{token: token, found: found, dirty: true}
}

// LocateToken returns the token with key k and the profile owning it, or
// nils when no profile owns it.
func (w *Workset) LocateToken(k TokenKey) (*Profile, *Token, error) {
	id, found, err := w.tokenOwner(k)
	if err != nil || !found {
		return nil, nil, err
	}
	p, err := w.Profile(id)
	if err != nil || p == nil {
		return nil, nil, err
	}
	t := p.FindToken(k)
	if t == nil {
		return nil, nil, nil
	}
	return p, t, nil
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

// Resolve finds the profile ref names; NotFound on the ref's field under
// prefix otherwise.
func (w *Workset) Resolve(ref Ref, prefix string) (*Profile, error) {
	id := ref.ID
	if ref.ByIdentity {
		owner, found, err := w.IdentityOwner(ref.Identity)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fault.OnField(ErrNotFound, ref.Field(prefix), "%s not found", ref)
		}
		id = owner
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

// ResolveOrCreate is Resolve, except that a profile named by an identity
// nobody owns yet is created with that identity.
func (w *Workset) ResolveOrCreate(ref Ref, prefix string) (p *Profile, created bool, err error) {
	if !ref.ByIdentity {
		p, err := w.Resolve(ref, prefix)
		return p, false, err
	}
	owner, found, err := w.IdentityOwner(ref.Identity)
	if err != nil {
		return nil, false, err
	}
	if found {
		if p, err = w.Profile(owner); err != nil || p != nil {
			return p, false, err
		}
		// The index names a profile that is gone: repair by recreating.
	}
	p = w.newProfile()
	p.addIdentity(ref.Identity)
	w.setIdentityOwner(ref.Identity, p.ID, true)
	return p, true, nil
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
	created := false
	if p == nil {
		p = w.newProfile()
		created = true
	}
	changed := created
	for _, idn := range req.Identities {
		if p.addIdentity(idn) {
			w.setIdentityOwner(idn, p.ID, true)
			changed = true
		}
	}
	if req.ReplaceAttributes {
		for _, a := range slices.Clone(p.Attributes) {
			if _, keep := req.Attributes[a.Key]; !keep && a.Value != nil {
				changed = MergeAttribute(p, a.Key, nil, w.now) || changed
			}
		}
	}
	changed = mergeAttributes(p, req.Attributes, w.now) || changed
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
		return true
	}
	a := &p.Attributes[i]
	if t < a.Time {
		return false
	}
	if t == a.Time && compareValues(val, a.Value) <= 0 {
		return false
	}
	a.Value, a.Time = val, t
	return true
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
	// Token is a copy of the token after the registration.
	Token Token
	// Owner is the profile owning the token afterwards.
	Owner ID
	// Replaced lists tokens this registration deactivated as REPLACED.
	Replaced []string
}

// Register attaches r's token to target under the rules:
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
func (w *Workset) Register(target *Profile, r Registration) (RegisterResult, error) {
	st := r.stamp()
	owner, tok, err := w.LocateToken(r.Key)
	if err != nil {
		return RegisterResult{}, err
	}
	res := RegisterResult{Outcome: OutcomeUnchanged}
	if tok == nil {
		t := Token{
			Platform:    r.Key.Platform,
			AppID:       r.Key.AppID,
			Token:       r.Key.Token,
			SourceStamp: st,
			CreateTime:  w.now,
			UpdateTime:  w.now,
			History:     []Move{{To: target.ID, Time: r.Time, Source: r.Source}},
		}
		if r.Env != EnvUnspecified {
			t.Env, t.EnvStamp = r.Env, st
		}
		if r.hasDevice() {
			t.DeviceID, t.Device, t.DeviceStamp = r.DeviceID, r.Device, st
		}
		tok = target.insertToken(t)
		owner = target
		w.setTokenOwner(r.Key, target.ID, true)
		w.markDirty(target)
		res.Outcome = OutcomeCreated
		if tok.DeviceID != "" {
			if res.Replaced, err = w.rotate(owner, tok); err != nil {
				return RegisterResult{}, err
			}
		}
		res.Token, res.Owner = cloneToken(tok), owner.ID
		return res, nil
	}

	changed := false
	if tok.SourceStamp.Less(st) {
		tok.SourceStamp = st
		changed = true
		if owner.ID != target.ID {
			t, _ := owner.removeToken(r.Key)
			t.History = append(t.History, Move{From: owner.ID, To: target.ID, Time: r.Time, Source: r.Source})
			t.UpdateTime = w.now
			w.markDirty(owner)
			tok = target.insertToken(t)
			owner = target
			w.setTokenOwner(r.Key, target.ID, true)
			res.Outcome = OutcomeMoved
		}
	}
	if r.Env != EnvUnspecified && tok.EnvStamp.Less(st) {
		tok.Env, tok.EnvStamp = r.Env, st
		changed = true
	}
	oldDevice := tok.DeviceID
	deviceChanged := false
	if r.hasDevice() && tok.DeviceStamp.Less(st) {
		tok.DeviceID, tok.Device, tok.DeviceStamp = r.DeviceID, r.Device, st
		changed, deviceChanged = true, true
	}
	if changed {
		tok.UpdateTime = w.now
		w.markDirty(owner)
		if res.Outcome == OutcomeUnchanged {
			res.Outcome = OutcomeUpdated
		}
	}
	if deviceChanged {
		if oldDevice != "" && oldDevice != tok.DeviceID {
			if err := w.releaseDevice(DeviceKey{tok.Platform, tok.AppID, oldDevice}, tok.Token); err != nil {
				return RegisterResult{}, err
			}
		}
		if tok.DeviceID != "" {
			if res.Replaced, err = w.rotate(owner, tok); err != nil {
				return RegisterResult{}, err
			}
		}
	}
	res.Token, res.Owner = cloneToken(tok), owner.ID
	return res, nil
}

// rotate makes tok the current token of its device unless the device's
// current token is newer, deactivating whichever of the two is older as
// REPLACED. It returns the tokens it replaced.
func (w *Workset) rotate(owner *Profile, tok *Token) ([]string, error) {
	dk := DeviceKey{tok.Platform, tok.AppID, tok.DeviceID}
	cur, found, err := w.deviceToken(dk)
	if err != nil {
		return nil, err
	}
	if found && cur == tok.Token {
		return nil, nil
	}
	if !found {
		w.setDeviceToken(dk, tok.Token, true)
		return nil, nil
	}
	curOwner, curTok, err := w.LocateToken(TokenKey{tok.Platform, tok.AppID, cur})
	if err != nil {
		return nil, err
	}
	if curTok == nil || curTok.DeviceID != tok.DeviceID {
		// The index is stale (the token is gone or moved devices).
		w.setDeviceToken(dk, tok.Token, true)
		return nil, nil
	}
	if curTok.DeviceStamp.Less(tok.DeviceStamp) {
		if curTok.deactivate(tok.DeviceStamp.Time, ReasonReplaced) {
			curTok.UpdateTime = w.now
			w.markDirty(curOwner)
		}
		w.setDeviceToken(dk, tok.Token, true)
		return []string{cur}, nil
	}
	// The device already has a newer token: this one is the replaced one.
	if tok.deactivate(curTok.DeviceStamp.Time, ReasonReplaced) {
		tok.UpdateTime = w.now
		w.markDirty(owner)
	}
	return nil, nil
}

// releaseDevice drops the device index entry dk if it points at token.
func (w *Workset) releaseDevice(dk DeviceKey, token string) error {
	cur, found, err := w.deviceToken(dk)
	if err != nil {
		return err
	}
	if found && cur == token {
		w.setDeviceToken(dk, "", false)
	}
	return nil
}

// Unregister deactivates a token for reason; NotFound on "token" when no
// profile owns it. The deactivation is dated now, or at the token's source
// time if that is later (a device clock ahead of ours must not make the
// unregistration a no-op); a registration newer than that revives it.
func (w *Workset) Unregister(k TokenKey, reason InactiveReason) (Token, ID, error) {
	owner, tok, err := w.LocateToken(k)
	if err != nil {
		return Token{}, ID{}, err
	}
	if tok == nil {
		return Token{}, ID{}, fault.OnField(ErrNotFound, "token", "token not found for app %q on %s", k.AppID, k.Platform)
	}
	at := max(w.now, tok.SourceStamp.Time)
	if tok.deactivate(at, reason) {
		tok.UpdateTime = w.now
		w.markDirty(owner)
	}
	return cloneToken(tok), owner.ID, nil
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
	owner, tok, err := w.LocateToken(k)
	if err != nil {
		return 0, err
	}
	if tok == nil {
		return FeedbackUnknown, nil
	}
	wasActive := tok.Active()
	if tok.deactivate(at, reason) {
		tok.UpdateTime = w.now
		w.markDirty(owner)
	}
	if wasActive && !tok.Active() {
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
	for i := range p.Tokens {
		t := &p.Tokens[i]
		owner, found, err := w.tokenOwner(t.Key())
		if err != nil {
			return 0, err
		}
		if found && owner == p.ID {
			w.setTokenOwner(t.Key(), ID{}, false)
		}
		if t.DeviceID != "" {
			if err := w.releaseDevice(DeviceKey{t.Platform, t.AppID, t.DeviceID}, t.Token); err != nil {
				return 0, err
			}
		}
	}
	w.profiles[p.ID] = &profileSlot{p: nil, dirty: true}
	return len(p.Tokens), nil
}

// ImportRow is one valid CRM row.
type ImportRow struct {
	CustomerID string
	Reg        Registration
	// Attributes merged into the profile as of Reg.Time.
	Attributes map[string]any
}

// Import applies one CRM row: the customer's profile is found (or created)
// through its customer_id identity, the row's attributes merge in as of the
// row's time, and the token registers under the usual rules. It reports the
// registration's outcome and whether a profile was created.
func (w *Workset) Import(row ImportRow) (Outcome, bool, error) {
	idn := Identity{Namespace: CustomerIDNamespace, Value: row.CustomerID}
	p, created, err := w.ResolveOrCreate(Ref{Identity: idn, ByIdentity: true}, "customer_id")
	if err != nil {
		return 0, false, err
	}
	if mergeAttributes(p, row.Attributes, row.Reg.Time) {
		w.markDirty(p)
	}
	row.Reg.OwnerKey = CustomerIDNamespace + "\x00" + row.CustomerID
	res, err := w.Register(p, row.Reg)
	if err != nil {
		return 0, false, err
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

// ProfileChange is one profile to write (Profile nil: delete ID).
type ProfileChange struct {
	ID      ID
	Profile *Profile
}

// TokenOwnerChange is one token index entry to write (Found false: delete).
type TokenOwnerChange struct {
	Key   TokenKey
	Owner ID
	Found bool
}

// IdentityOwnerChange is one identity index entry to write.
type IdentityOwnerChange struct {
	Identity Identity
	Owner    ID
	Found    bool
}

// DeviceTokenChange is one device index entry to write.
type DeviceTokenChange struct {
	Key   DeviceKey
	Token string
	Found bool
}

// Changes lists what a workset changed, for the store to persist.
type Changes struct {
	Profiles       []ProfileChange
	TokenOwners    []TokenOwnerChange
	IdentityOwners []IdentityOwnerChange
	DeviceTokens   []DeviceTokenChange
}

// Empty reports whether nothing changed.
func (c *Changes) Empty() bool {
	return len(c.Profiles)+len(c.TokenOwners)+len(c.IdentityOwners)+len(c.DeviceTokens) == 0
}

// Changes returns everything the workset changed, in no particular order.
func (w *Workset) Changes() Changes {
	var c Changes
	for id, s := range w.profiles {
		if s.dirty {
			c.Profiles = append(c.Profiles, ProfileChange{ID: id, Profile: s.p})
		}
	}
	for k, s := range w.tokenOwners {
		if s.dirty {
			c.TokenOwners = append(c.TokenOwners, TokenOwnerChange{Key: k, Owner: s.id, Found: s.found})
		}
	}
	for k, s := range w.identityOwners {
		if s.dirty {
			c.IdentityOwners = append(c.IdentityOwners, IdentityOwnerChange{Identity: k, Owner: s.id, Found: s.found})
		}
	}
	for k, s := range w.deviceTokens {
		if s.dirty {
			c.DeviceTokens = append(c.DeviceTokens, DeviceTokenChange{Key: k, Token: s.token, Found: s.found})
		}
	}
	return c
}
