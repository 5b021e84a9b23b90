package profile

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"sort"
)

// Records are a hand-rolled binary encoding, chosen over JSON or
// reflection-based encodings because imports and audience scans decode
// hundreds of thousands of them a second. Sections carry their length, so a
// scan decodes only what a condition reads.
//
//	profile  = version:1 create:varint update:varint consent:1 consentTime:varint
//	           len(identities):uvarint identities
//	           len(attributes):uvarint attributes
//	identities = count:uvarint { namespace:str value:str }
//	attributes = count:uvarint { key:str time:varint value }
//
//	hot      = owner:16 flags:1 sourceTime:varint sourceTie:4 env:1 (flags&4: replaced)
//	           [envTime:varint envTie:4]        (unless flags&1: same as source)
//	           [deviceFP:8]                     (unless flags&8: zero)
//	           [deviceTime:varint deviceTie:4]  (unless flags&2: same as source)
//	           deactivatedAt:varint reason:1 update:varint
//
//	details  = version:1 platform:1 active:1 appID:str token env:1
//	           deviceID:str model:str os:str appVersion:str locale:str tz:str
//	           create:varint historyCount:uvarint { move }
//	move     = flags:1 [from:16] to:16 time:varint [source:str]
//	           from only when flags&1 (otherwise it is the previous move's
//	           "to", or none for the first); source only when flags>>1 is
//	           sourceOther, else it is one of the knownSources
//	token    = see tokenpack.go
//
//	str      = len:uvarint bytes
//	value    = kind:1 payload (see appendValue)
//
// Version 1 of the details record (still read, no longer written) stored
// the token as a str and each move as from:16 to:16 time:varint source:str.
// Version 2 is about a quarter smaller for typical tokens, which is fewer
// pages for an import to rewrite. The hot record carries no version: flag 8
// is new, and records without it read as before.
const (
	recordVersion  = 1 // profile records
	detailsVersion = 2 // details records written now
	detailsV1      = 1 // details records written before
)

// Hot record flags.
const (
	hotEnvStampIsSource    = 1 << 0
	hotDeviceStampIsSource = 1 << 1
	hotReplaced            = 1 << 2
	hotNoDeviceFP          = 1 << 3
)

// Move sources with a one-byte code in details records; any other source is
// stored as a string.
const sourceOther = 0

var knownSources = [...]string{1: "register", 2: "import"}

// moveExplicitFrom marks a move whose "from" is stored.
const moveExplicitFrom = 1

// Value kinds.
const (
	kindNull   = 0
	kindNumber = 1 // float64 bits, 8 bytes little endian
	kindString = 2
	kindFalse  = 3
	kindTrue   = 4
	kindList   = 5 // count:uvarint values
	kindMap    = 6 // count:uvarint { key:str value }, keys sorted
)

// ErrCorrupt says a stored record cannot be decoded.
var ErrCorrupt = errors.New("corrupt record")

// EncodeProfile appends p's record to dst.
func EncodeProfile(dst []byte, p *Profile) []byte {
	dst = append(dst, recordVersion)
	dst = binary.AppendVarint(dst, p.CreateTime)
	dst = binary.AppendVarint(dst, p.UpdateTime)
	dst = append(dst, byte(p.Consent))
	dst = binary.AppendVarint(dst, p.ConsentTime)

	n := 1
	for _, idn := range p.Identities {
		n += 2*binary.MaxVarintLen16 + len(idn.Namespace) + len(idn.Value)
	}
	sec := make([]byte, 0, n)
	sec = binary.AppendUvarint(sec, uint64(len(p.Identities)))
	for _, idn := range p.Identities {
		sec = appendStr(sec, idn.Namespace)
		sec = appendStr(sec, idn.Value)
	}
	dst = appendBytes(dst, sec)

	sec = sec[:0]
	sec = binary.AppendUvarint(sec, uint64(len(p.Attributes)))
	for _, a := range p.Attributes {
		sec = appendStr(sec, a.Key)
		sec = binary.AppendVarint(sec, a.Time)
		sec = appendValue(sec, a.Value)
	}
	return appendBytes(dst, sec)
}

// EncodeHot appends the hot part of t to dst.
func EncodeHot(dst []byte, t *Token) []byte {
	dst = append(dst, t.Owner[:]...)
	var flags byte
	if t.EnvStamp == t.SourceStamp {
		flags |= hotEnvStampIsSource
	}
	if t.DeviceStamp == t.SourceStamp {
		flags |= hotDeviceStampIsSource
	}
	if t.Replaced {
		flags |= hotReplaced
	}
	if t.DeviceFP == 0 {
		flags |= hotNoDeviceFP
	}
	dst = append(dst, flags)
	dst = appendStamp(dst, t.SourceStamp)
	dst = append(dst, byte(t.Env))
	if flags&hotEnvStampIsSource == 0 {
		dst = appendStamp(dst, t.EnvStamp)
	}
	if flags&hotNoDeviceFP == 0 {
		dst = binary.LittleEndian.AppendUint64(dst, t.DeviceFP)
	}
	if flags&hotDeviceStampIsSource == 0 {
		dst = appendStamp(dst, t.DeviceStamp)
	}
	dst = binary.AppendVarint(dst, t.DeactivatedAt)
	dst = append(dst, byte(t.Reason))
	return binary.AppendVarint(dst, t.UpdateTime)
}

// DecodeHot decodes a hot record into a Token (Full false) for key k.
func DecodeHot(k TokenKey, b []byte) (*Token, error) {
	t := &Token{Platform: k.Platform, AppID: k.AppID, Token: k.Token}
	if err := DecodeHotInto(t, b); err != nil {
		return nil, err
	}
	return t, nil
}

// DecodeHotInto fills t's hot fields from a hot record.
func DecodeHotInto(t *Token, b []byte) error {
	r := reader{b: b}
	t.Owner = r.id()
	flags := r.byte()
	t.Replaced = flags&hotReplaced != 0
	t.SourceStamp = r.stamp()
	t.Env = Environment(r.byte())
	t.EnvStamp = t.SourceStamp
	if flags&hotEnvStampIsSource == 0 {
		t.EnvStamp = r.stamp()
	}
	t.DeviceFP = 0
	if flags&hotNoDeviceFP == 0 {
		t.DeviceFP = r.uint64()
	}
	t.DeviceStamp = t.SourceStamp
	if flags&hotDeviceStampIsSource == 0 {
		t.DeviceStamp = r.stamp()
	}
	t.DeactivatedAt = r.varint()
	t.Reason = InactiveReason(r.byte())
	t.UpdateTime = r.varint()
	return r.err
}

// HotOwner returns the owner stored in a hot record.
func HotOwner(b []byte) (ID, error) {
	r := reader{b: b}
	id := r.id()
	return id, r.err
}

// EncodeDetails appends the details part of t to dst.
func EncodeDetails(dst []byte, t *Token) []byte {
	dst = append(dst, detailsVersion, byte(t.Platform))
	if t.Active() {
		dst = append(dst, 1)
	} else {
		dst = append(dst, 0)
	}
	dst = appendStr(dst, t.AppID)
	dst = appendToken(dst, t.Token)
	dst = append(dst, byte(t.Env))
	dst = appendStr(dst, t.DeviceID)
	dst = appendStr(dst, t.Device.Model)
	dst = appendStr(dst, t.Device.OSVersion)
	dst = appendStr(dst, t.Device.AppVersion)
	dst = appendStr(dst, t.Device.Locale)
	dst = appendStr(dst, t.Device.TimeZone)
	dst = binary.AppendVarint(dst, t.CreateTime)
	dst = binary.AppendUvarint(dst, uint64(len(t.History)))
	var prev ID
	for _, m := range t.History {
		source := byte(sourceOther)
		for code, known := range knownSources {
			if code != sourceOther && m.Source == known {
				source = byte(code)
			}
		}
		flags := source << 1
		if m.From != prev {
			flags |= moveExplicitFrom
		}
		dst = append(dst, flags)
		if flags&moveExplicitFrom != 0 {
			dst = append(dst, m.From[:]...)
		}
		dst = append(dst, m.To[:]...)
		dst = binary.AppendVarint(dst, m.Time)
		if source == sourceOther {
			dst = appendStr(dst, m.Source)
		}
		prev = m.To
	}
	return dst
}

// DecodeDetails fills t's details fields from a details record. The hot
// fields (stamps, Env, deactivation) are left alone: the hot record is
// their authority.
func DecodeDetails(t *Token, b []byte) error {
	var d Token
	if err := decodeDetails(&d, b); err != nil {
		return err
	}
	t.Platform, t.AppID, t.Token = d.Platform, d.AppID, d.Token
	t.DeviceID, t.Device = d.DeviceID, d.Device
	t.CreateTime, t.History = d.CreateTime, d.History
	t.Full = true
	return nil
}

// DecodeFullDetails decodes a details record into t, including the stored
// Env; fill the hot fields with DecodeHotInto afterwards.
func DecodeFullDetails(t *Token, b []byte) error { return decodeDetails(t, b) }

// decodeDetails decodes a details record into t, including the stored Env;
// scans use it without the hot record.
func decodeDetails(t *Token, b []byte) error {
	r := reader{b: b}
	version := r.byte()
	if version != detailsVersion && version != detailsV1 {
		return ErrCorrupt
	}
	t.Platform = Platform(r.byte())
	r.byte() // active: derived from the hot record when that is at hand
	t.AppID = r.str()
	if version == detailsV1 {
		t.Token = r.str()
	} else {
		var scratch [256]byte
		tok, _ := r.token(scratch[:0])
		t.Token = string(tok)
	}
	t.Env = Environment(r.byte())
	t.DeviceID = r.str()
	t.Device.Model = r.str()
	t.Device.OSVersion = r.str()
	t.Device.AppVersion = r.str()
	t.Device.Locale = r.str()
	t.Device.TimeZone = r.str()
	t.CreateTime = r.varint()
	t.History = nil
	if version == detailsV1 {
		if n := r.count(34); n > 0 {
			t.History = make([]Move, n)
			for i := range t.History {
				t.History[i] = Move{From: r.id(), To: r.id(), Time: r.varint(), Source: r.str()}
			}
		}
	} else if n := r.count(18); n > 0 {
		t.History = make([]Move, n)
		var prev ID
		for i := range t.History {
			m := &t.History[i]
			flags := r.byte()
			m.From = prev
			if flags&moveExplicitFrom != 0 {
				m.From = r.id()
			}
			m.To, m.Time = r.id(), r.varint()
			switch source := int(flags >> 1); {
			case source == sourceOther:
				m.Source = r.str()
			case source < len(knownSources):
				m.Source = knownSources[source]
			default:
				r.fail()
			}
			prev = m.To
		}
	}
	t.Full = true
	return r.err
}

func appendStamp(dst []byte, s Stamp) []byte {
	dst = binary.AppendVarint(dst, s.Time)
	return binary.LittleEndian.AppendUint32(dst, s.Tie)
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// appendValue encodes a JSON-like value; map keys are written sorted so equal
// values always encode to equal bytes (merges compare encodings).
func appendValue(dst []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(dst, kindNull)
	case float64:
		dst = append(dst, kindNumber)
		return binary.LittleEndian.AppendUint64(dst, math.Float64bits(x))
	case string:
		dst = append(dst, kindString)
		return appendStr(dst, x)
	case bool:
		if x {
			return append(dst, kindTrue)
		}
		return append(dst, kindFalse)
	case []any:
		dst = append(dst, kindList)
		dst = binary.AppendUvarint(dst, uint64(len(x)))
		for _, e := range x {
			dst = appendValue(dst, e)
		}
		return dst
	case map[string]any:
		dst = append(dst, kindMap)
		dst = binary.AppendUvarint(dst, uint64(len(x)))
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			dst = appendStr(dst, k)
			dst = appendValue(dst, x[k])
		}
		return dst
	}
	// Validation only lets the types above through; a stray type is stored
	// as null rather than corrupting the record.
	return append(dst, kindNull)
}

// valueSize is len(appendValue(nil, v)), without building the encoding.
func valueSize(v any) int {
	switch x := v.(type) {
	case nil, bool:
		return 1
	case float64:
		return 9
	case string:
		return 1 + uvarintLen(len(x)) + len(x)
	case []any:
		n := 1 + uvarintLen(len(x))
		for _, e := range x {
			n += valueSize(e)
		}
		return n
	case map[string]any:
		n := 1 + uvarintLen(len(x))
		for k, e := range x {
			n += uvarintLen(len(k)) + len(k) + valueSize(e)
		}
		return n
	}
	return 1 // stored as null, see appendValue
}

// uvarintLen is the length of n as a uvarint.
func uvarintLen(n int) int {
	l := 1
	for u := uint64(n); u >= 0x80; u >>= 7 {
		l++
	}
	return l
}

// reader decodes a record; the first error sticks and later reads return
// zero values, so decoders check r.err once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = ErrCorrupt
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail()
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) uint64() uint64 {
	if len(r.b) < 8 {
		r.fail()
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// bytes returns the next length-prefixed bytes without copying.
func (r *reader) bytes() []byte {
	n := r.uvarint()
	if uint64(len(r.b)) < n {
		r.fail()
		return nil
	}
	b := r.b[:n:n]
	r.b = r.b[n:]
	return b
}

func (r *reader) str() string { return string(r.bytes()) }

func (r *reader) uint32() uint32 {
	if len(r.b) < 4 {
		r.fail()
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) stamp() Stamp { return Stamp{Time: r.varint(), Tie: r.uint32()} }

func (r *reader) id() ID {
	var id ID
	if len(r.b) < len(id) {
		r.fail()
		return id
	}
	copy(id[:], r.b)
	r.b = r.b[len(id):]
	return id
}

// count reads an element count and rejects counts that cannot fit in the
// remaining bytes (each element takes at least min bytes), so a corrupt
// count never triggers a huge allocation.
func (r *reader) count(min int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/min) {
		r.fail()
		return 0
	}
	return int(n)
}

func (r *reader) value(depth int) any {
	if depth > MaxAttributeDepth+1 {
		r.fail()
		return nil
	}
	switch r.byte() {
	case kindNull:
		return nil
	case kindNumber:
		return math.Float64frombits(r.uint64())
	case kindString:
		return r.str()
	case kindFalse:
		return false
	case kindTrue:
		return true
	case kindList:
		n := r.count(1)
		l := make([]any, n)
		for i := range l {
			l[i] = r.value(depth + 1)
		}
		return l
	case kindMap:
		n := r.count(2)
		m := make(map[string]any, n)
		for i := 0; i < n; i++ {
			k := r.str()
			m[k] = r.value(depth + 1)
		}
		return m
	}
	r.fail()
	return nil
}

// skipValue moves past one encoded value without building it.
func (r *reader) skipValue(depth int) {
	if depth > MaxAttributeDepth+1 {
		r.fail()
		return
	}
	switch r.byte() {
	case kindNull, kindFalse, kindTrue:
	case kindNumber:
		r.uint64()
	case kindString:
		r.bytes()
	case kindList:
		n := r.count(1)
		for i := 0; i < n && r.err == nil; i++ {
			r.skipValue(depth + 1)
		}
	case kindMap:
		n := r.count(2)
		for i := 0; i < n && r.err == nil; i++ {
			r.bytes()
			r.skipValue(depth + 1)
		}
	default:
		r.fail()
	}
}

// DecodeProfile decodes a profile record stored under id. The result shares
// no memory with b, so it can outlive the transaction b came from.
func DecodeProfile(id ID, b []byte) (*Profile, error) {
	v, err := ParseView(b, nil)
	if err != nil {
		return nil, err
	}
	p := &Profile{ID: id, CreateTime: v.CreateTime, UpdateTime: v.UpdateTime, Consent: v.Consent, ConsentTime: v.ConsentTime}
	if p.Identities, err = v.Identities(); err != nil {
		return nil, err
	}
	if p.Attributes, p.attrBytes, err = v.allAttributes(); err != nil {
		return nil, err
	}
	p.attrBytesKnown = true
	return p, nil
}

// View is a profile record and its tokens' details records parsed just
// enough to evaluate audience conditions: the fixed fields are decoded,
// sections located, everything else decoded on demand. A View borrows its
// bytes; nothing it returns does.
type View struct {
	CreateTime  int64
	UpdateTime  int64
	Consent     Consent
	ConsentTime int64

	identities []byte
	attributes []byte
	tokens     [][]byte
}

// ParseView parses a profile record with the details records of its tokens.
func ParseView(profile []byte, tokens [][]byte) (View, error) {
	r := reader{b: profile}
	var v View
	if r.byte() != recordVersion {
		return v, ErrCorrupt
	}
	v.CreateTime = r.varint()
	v.UpdateTime = r.varint()
	v.Consent = Consent(r.byte())
	v.ConsentTime = r.varint()
	v.identities = r.bytes()
	v.attributes = r.bytes()
	v.tokens = tokens
	return v, r.err
}

// TokenCount is the number of tokens the profile owns.
func (v *View) TokenCount() int { return len(v.tokens) }

// Identities decodes the identities.
func (v *View) Identities() ([]Identity, error) {
	r := reader{b: v.identities}
	n := r.count(2)
	ids := make([]Identity, n)
	for i := range ids {
		ids[i] = Identity{Namespace: r.str(), Value: r.str()}
	}
	return ids, r.err
}

// allAttributes decodes every attribute, tombstones included, and measures
// the ones that are set (see Profile.AttributeBytes) from their encoding.
func (v *View) allAttributes() ([]Attribute, int, error) {
	r := reader{b: v.attributes}
	n := r.count(3)
	attrs := make([]Attribute, n)
	size := 0
	for i := range attrs {
		a := &attrs[i]
		a.Key, a.Time = r.str(), r.varint()
		rest := len(r.b)
		if a.Value = r.value(1); a.Value != nil {
			size += len(a.Key) + rest - len(r.b)
		}
	}
	return attrs, size, r.err
}

// Attributes decodes the attributes that are set (no tombstones) into a map.
func (v *View) Attributes() (map[string]any, error) {
	r := reader{b: v.attributes}
	n := r.count(3)
	m := make(map[string]any, n)
	for i := 0; i < n; i++ {
		k := r.str()
		r.varint()
		if val := r.value(1); val != nil {
			m[k] = val
		}
	}
	return m, r.err
}

// AttributesNamed decodes the set attributes whose key is in keys into a
// map, skipping over the others without decoding them.
func (v *View) AttributesNamed(keys map[string]struct{}) (map[string]any, error) {
	r := reader{b: v.attributes}
	n := r.count(3)
	m := make(map[string]any, min(n, len(keys)))
	for i := 0; i < n && r.err == nil; i++ {
		k := r.bytes()
		r.varint()
		if _, ok := keys[string(k)]; !ok {
			r.skipValue(1)
			continue
		}
		if val := r.value(1); val != nil {
			m[string(k)] = val
		}
	}
	return m, r.err
}

// LookupAttribute decodes the value of one attribute (found is false when
// it is not set), skipping over the others without decoding them: a
// condition usually reads two or three attributes of many.
func (v *View) LookupAttribute(key string) (val any, found bool, err error) {
	r := reader{b: v.attributes}
	n := r.count(3)
	for i := 0; i < n && r.err == nil; i++ {
		k := r.bytes()
		r.varint()
		if string(k) == key {
			val = r.value(1)
			return val, val != nil && r.err == nil, r.err
		}
		r.skipValue(1)
	}
	return nil, false, r.err
}

// AttributeCount counts the attributes that are set.
func (v *View) AttributeCount() (int, error) {
	r := reader{b: v.attributes}
	n := r.count(3)
	set := 0
	for i := 0; i < n && r.err == nil; i++ {
		r.bytes()
		r.varint()
		if len(r.b) > 0 && r.b[0] != kindNull {
			set++
		}
		r.skipValue(1)
	}
	return set, r.err
}

// TokenHead is the part of a token a scan needs to decide whether it can be
// targeted. AppID borrows the record's memory.
type TokenHead struct {
	Platform Platform
	AppID    []byte
	Active   bool
	raw      []byte
	version  byte
	token    []byte // the rest of the record, from the token on
}

// Size is about the size of the token's details once decoded (its record's
// size with the token's text in place of its packed form): what it adds to
// a message carrying it.
func (h *TokenHead) Size() int {
	if h.version == detailsV1 {
		return len(h.raw)
	}
	r := reader{b: h.token}
	text := r.tokenLen()
	return len(h.raw) - (len(h.token) - len(r.b)) + text
}

// Full decodes the token's details (the hot fields stay zero, except Env).
func (h *TokenHead) Full() (Token, error) {
	var t Token
	err := decodeDetails(&t, h.raw)
	return t, err
}

// EachTokenHead calls fn for each token, stopping when fn returns false.
// The head passed to fn is only valid during the call.
func (v *View) EachTokenHead(fn func(h *TokenHead) bool) error {
	var h TokenHead
	for _, raw := range v.tokens {
		r := reader{b: raw}
		h.version = r.byte()
		if h.version != detailsVersion && h.version != detailsV1 {
			return ErrCorrupt
		}
		h.raw = raw
		h.Platform = Platform(r.byte())
		h.Active = r.byte() == 1
		h.AppID = r.bytes()
		if r.err != nil {
			return ErrCorrupt
		}
		h.token = r.b
		if !fn(&h) {
			return nil
		}
	}
	return nil
}

// compareValues orders two encoded values, for deterministic merge ties.
func compareValues(a, b any) int {
	return slices.Compare(appendValue(nil, a), appendValue(nil, b))
}
