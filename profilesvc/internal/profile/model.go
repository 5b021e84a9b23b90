// Package profile is profilesvc's domain: profiles, their identities and
// attributes, the push tokens they own, the rules that decide who owns a token
// and whether it is active, and the compact binary record they are stored as.
// It knows nothing of gRPC or bbolt: the store feeds it through a Loader and
// persists what a Workset changed.
package profile

import (
	"crypto/sha256"
	"slices"
	"strings"
)

// Platform is the push gateway of a token. The numbers match the API's.
type Platform uint8

// Platforms.
const (
	PlatformUnspecified Platform = 0
	PlatformAPNS        Platform = 1
	PlatformFCM         Platform = 2
)

// String is the platform's name as CEL conditions see it.
func (p Platform) String() string {
	switch p {
	case PlatformAPNS:
		return "apns"
	case PlatformFCM:
		return "fcm"
	}
	return "unspecified"
}

// Environment is the APNs environment of a token. The numbers match the API's.
type Environment uint8

// Environments.
const (
	EnvUnspecified Environment = 0
	EnvSandbox     Environment = 1
	EnvProduction  Environment = 2
)

// Consent is a profile's push consent. The numbers match the API's.
type Consent uint8

// Consent states.
const (
	ConsentUnspecified Consent = 0
	ConsentOptedIn     Consent = 1
	ConsentOptedOut    Consent = 2
)

// String is the consent as CEL conditions see it.
func (c Consent) String() string {
	switch c {
	case ConsentOptedIn:
		return "opted_in"
	case ConsentOptedOut:
		return "opted_out"
	}
	return "unspecified"
}

// InactiveReason says why a token is not targeted. The numbers match the API's.
type InactiveReason uint8

// Inactive reasons.
const (
	ReasonNone         InactiveReason = 0
	ReasonUnregistered InactiveReason = 1
	ReasonReplaced     InactiveReason = 2
	ReasonUninstalled  InactiveReason = 3
	ReasonStale        InactiveReason = 4
	ReasonBadToken     InactiveReason = 5
)

// FromGateway reports whether the reason came from APNs or FCM.
func (r InactiveReason) FromGateway() bool {
	return r == ReasonUnregistered || r == ReasonBadToken
}

// Identity is a namespaced id resolving to exactly one profile.
type Identity struct {
	Namespace string
	Value     string
}

func compareIdentity(a, b Identity) int {
	if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
		return c
	}
	return strings.Compare(a.Value, b.Value)
}

// Attribute is one profile attribute. Value is JSON-like: nil, float64,
// string, bool, []any or map[string]any. A nil Value is a deletion kept as a
// tombstone, so that an older write arriving later cannot bring the key back.
type Attribute struct {
	Key   string
	Value any
	// Time is when the value was set, by the setter's clock (the row's source
	// time for imports, the server's clock for UpsertProfile). The newest
	// write of a key wins; see MergeAttribute.
	Time int64
}

// Device describes a device; every field is informative.
type Device struct {
	Model      string
	OSVersion  string
	AppVersion string
	Locale     string
	TimeZone   string
}

// IsZero reports whether no field is set.
func (d Device) IsZero() bool { return d == Device{} }

// Stamp orders registrations: the source time, then a deterministic
// tie-break derived from the registration's content, so two registrations
// with the same time resolve the same way whatever order they arrive in.
type Stamp struct {
	Time int64
	Tie  uint32
}

// Less reports whether s is older than o.
func (s Stamp) Less(o Stamp) bool {
	return s.Time < o.Time || (s.Time == o.Time && s.Tie < o.Tie)
}

// Move is one change of a token's owner.
type Move struct {
	From   ID // zero when the token was first stored
	To     ID
	Time   int64
	Source string
}

// TokenKey identifies a token: the same string for another app or platform
// is another token.
type TokenKey struct {
	Platform Platform
	AppID    string
	Token    string
}

// TokenID is the fixed-size identity of a token: its platform and the first
// 16 bytes of sha256(app id, 0x00, token). Indexes key tokens by it (FCM
// tokens run to hundreds of bytes); a collision would take about 2^64
// tokens.
type TokenID [17]byte

// ID returns the token's TokenID.
func (k TokenKey) ID() TokenID {
	h := sha256.New()
	h.Write([]byte(k.AppID))
	h.Write([]byte{0})
	h.Write([]byte(k.Token))
	var sum [sha256.Size]byte
	var id TokenID
	id[0] = byte(k.Platform)
	copy(id[1:], h.Sum(sum[:0]))
	return id
}

// DeviceKey identifies an app install, to detect token rotation.
type DeviceKey struct {
	Platform Platform
	AppID    string
	DeviceID string
}

// Token is one push token. Its state is a few last-writer-wins registers,
// each ordered by Stamp, which is what makes imports converge whatever the
// order of their rows:
//   - ownership (Owner; SourceStamp is the winning registration),
//   - the APNs environment (EnvStamp),
//   - the device id and device details (DeviceStamp),
//   - the last deactivation by a gateway or an unregistration
//     (DeactivatedAt, Reason).
//
// A token is active when its newest registration is newer than its last
// deactivation, so a registration newer than a gateway's 410 timestamp
// revives it and an older one does not, and when no other token of the same
// app and device id was registered for that device more recently (token
// rotation: it is then Replaced). Replaced is derived from the device's
// tokens each time one of them changes, never accumulated, so it too ends up
// the same whatever order registrations come in.
//
// The store keeps a token in two parts: the small "hot" part every
// registration reads and most write (Owner, the stamps, Env, DeviceFP,
// DeactivatedAt, Reason, UpdateTime), keyed by TokenID, and the details
// (token string, device, history, CreateTime) stored next to the owner's
// profile for audience scans. A Token loaded from the hot part only has
// Full false; details are loaded when a rule needs to change them.
type Token struct {
	Owner       ID
	Platform    Platform
	AppID       string
	Token       string
	SourceStamp Stamp

	DeactivatedAt int64
	Reason        InactiveReason
	// Replaced says a newer token was registered for the same app and
	// device id.
	Replaced bool

	Env      Environment
	EnvStamp Stamp

	DeviceID    string
	Device      Device
	DeviceFP    uint64 // fingerprint of DeviceID and Device; 0 when neither is set
	DeviceStamp Stamp

	CreateTime int64
	UpdateTime int64
	History    []Move

	// Full says the details fields (DeviceID, Device, CreateTime, History)
	// are loaded.
	Full bool
}

// Key returns the token's key.
func (t *Token) Key() TokenKey { return TokenKey{t.Platform, t.AppID, t.Token} }

// Active reports whether the token is targeted.
func (t *Token) Active() bool { return !t.Replaced && t.DeactivatedAt < t.SourceStamp.Time }

// InactiveReason returns why the token is inactive, or ReasonNone.
func (t *Token) InactiveReason() InactiveReason {
	switch {
	case t.Active():
		return ReasonNone
	case t.Replaced:
		return ReasonReplaced
	}
	return t.Reason
}

// deactivate records a deactivation at time at; the newest deactivation
// wins (ties: the larger reason, to stay order independent). It reports
// whether the stored state changed.
func (t *Token) deactivate(at int64, reason InactiveReason) bool {
	if at > t.DeactivatedAt || (at == t.DeactivatedAt && reason > t.Reason) {
		t.DeactivatedAt = at
		t.Reason = reason
		return true
	}
	return false
}

// Profile is one customer: identities, attributes and consent. Its tokens
// are stored apart (see Token) and loaded separately.
type Profile struct {
	ID          ID
	CreateTime  int64
	UpdateTime  int64
	Consent     Consent
	ConsentTime int64
	// Identities, sorted by namespace then value.
	Identities []Identity
	// Attributes, sorted by key, tombstones included. Change them through
	// MergeAttribute, which keeps the size AttributeBytes reports.
	Attributes []Attribute

	// attrBytes caches AttributeBytes when attrBytesKnown.
	attrBytes      int
	attrBytesKnown bool
}

// AttributeBytes is the size of the attributes that are set (tombstones
// left out), measured as AttributesSize measures a request's: what
// MaxProfileAttributesBytes bounds. Decoding and MergeAttribute keep it, so
// it is only computed for profiles built otherwise.
func (p *Profile) AttributeBytes() int {
	if !p.attrBytesKnown {
		n := 0
		for _, a := range p.Attributes {
			n += setAttributeSize(a.Key, a.Value)
		}
		p.attrBytes, p.attrBytesKnown = n, true
	}
	return p.attrBytes
}

// setAttributeSize is what a key set to val adds to AttributeBytes: nothing
// for a tombstone.
func setAttributeSize(key string, val any) int {
	if val == nil {
		return 0
	}
	return len(key) + valueSize(val)
}

// HasIdentity reports whether the profile owns idn.
func (p *Profile) HasIdentity(idn Identity) bool {
	_, found := slices.BinarySearchFunc(p.Identities, idn, compareIdentity)
	return found
}

// addIdentity adds idn unless present, keeping the order.
func (p *Profile) addIdentity(idn Identity) bool {
	i, found := slices.BinarySearchFunc(p.Identities, idn, compareIdentity)
	if found {
		return false
	}
	p.Identities = slices.Insert(p.Identities, i, idn)
	return true
}

// VisibleAttributes returns the attributes that are set (no tombstones) as a
// map, the form conditions and the API use.
func (p *Profile) VisibleAttributes() map[string]any {
	m := make(map[string]any, len(p.Attributes))
	for _, a := range p.Attributes {
		if a.Value != nil {
			m[a.Key] = a.Value
		}
	}
	return m
}

// SortTokens orders tokens by app id, then token, then platform: the order
// ListPushTokens promises.
func SortTokens(ts []Token) {
	slices.SortFunc(ts, func(a, b Token) int {
		if c := strings.Compare(a.AppID, b.AppID); c != 0 {
			return c
		}
		if c := strings.Compare(a.Token, b.Token); c != 0 {
			return c
		}
		return int(a.Platform) - int(b.Platform)
	})
}

// Registration is one attempt to attach a token to a profile.
type Registration struct {
	Key      TokenKey
	Env      Environment
	DeviceID string
	Device   Device
	// Time is the source's timestamp of the registration (unix nanoseconds).
	Time int64
	// Source labels the registration in the token's history.
	Source string
	// OwnerKey names the target profile the same way in every run (e.g. its
	// customer id), so ties on Time break identically whatever the order of
	// arrival and whatever profile ids were generated.
	OwnerKey string
	// ID caches Key.ID() for callers that computed it already; zero means
	// not computed.
	ID TokenID
}

func (r *Registration) tokenID() TokenID {
	if r.ID == (TokenID{}) {
		return r.Key.ID()
	}
	return r.ID
}

// stamp returns the registration's stamp: its time and a hash of everything
// it would write.
func (r *Registration) stamp() Stamp {
	h := fnvStrings(fnvOffset64, r.OwnerKey, r.DeviceID, r.Device.Model, r.Device.OSVersion, r.Device.AppVersion, r.Device.Locale, r.Device.TimeZone)
	h = fnvByte(h, byte(r.Env))
	return Stamp{Time: r.Time, Tie: uint32(h) ^ uint32(h>>32)}
}

// deviceFP fingerprints the registration's device id and details.
func (r *Registration) deviceFP() uint64 { return DeviceFingerprint(r.DeviceID, r.Device) }

// DeviceFingerprint hashes a device id and details; 0 means neither is set.
func DeviceFingerprint(deviceID string, d Device) uint64 {
	if deviceID == "" && d.IsZero() {
		return 0
	}
	return fnvStrings(fnvOffset64, deviceID, d.Model, d.OSVersion, d.AppVersion, d.Locale, d.TimeZone) | 1 // never 0
}

// FNV-1a, 64 bits, over strings separated by 0x00: a stable hash (unlike
// hash/maphash) without the allocations of hash.Hash.
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

func fnvByte(h uint64, c byte) uint64 { return (h ^ uint64(c)) * fnvPrime64 }

func fnvStrings(h uint64, ss ...string) uint64 {
	for _, s := range ss {
		for i := 0; i < len(s); i++ {
			h = fnvByte(h, s[i])
		}
		h = fnvByte(h, 0)
	}
	return h
}

func (r *Registration) hasDevice() bool { return r.DeviceID != "" || !r.Device.IsZero() }
