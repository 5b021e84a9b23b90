package store

import (
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

// The one list of buckets, created when the store opens. Every key starts
// with the tenant prefix (boltdb.TenantPrefix), so tenants never share a key.
var (
	// bucketMeta holds the schema version.
	bucketMeta = []byte("meta")
	// bucketProfiles: tenant | profile id (16 bytes) → profile record
	// (identities, attributes, consent). IDs grow with time, so new profiles
	// append at the end.
	bucketProfiles = []byte("profiles")
	// bucketIdentities: tenant | namespace | 0x00 | value → profile id.
	bucketIdentities = []byte("identities")
	// bucketTokens: tenant | token id (platform + 16 hash bytes) → the
	// token's hot record: owner, stamps, deactivation (profile.EncodeHot).
	// Small on purpose: every registration reads it and most rewrite only
	// it, and random-key writes cost bbolt whole pages.
	bucketTokens = []byte("tokens")
	// bucketProfileTokens: tenant | owner id | token id → the token's
	// details (token string, device, history, active flag). Keyed by owner,
	// so a profile's tokens sit next to each other and an audience scan
	// walks them in step with the profiles bucket.
	bucketProfileTokens = []byte("profile_tokens")
	// bucketDevices: tenant | platform | app id | 0x00 | device id | 0x00 |
	// token id → token: every token registered for an app install, to
	// settle which one is current (token rotation).
	bucketDevices = []byte("devices")

	allBuckets = [][]byte{bucketMeta, bucketProfiles, bucketIdentities, bucketTokens, bucketProfileTokens, bucketDevices}
)

// schemaVersion is written in bucketMeta; a store refuses to open a file of
// another version instead of misreading it. Version 2 packs token details
// (profile.EncodeDetails) in a way version 1 builds cannot read; this build
// reads both kinds of record, so a version 1 file opens as it is and is
// marked version 2, which older builds then refuse.
const schemaVersion = "2"

// upgradableSchema is the older version whose files this build opens.
const upgradableSchema = "1"

var schemaKey = []byte("schema")

type keyer struct {
	prefix []byte // boltdb.TenantPrefix(tenant)
}

func newKeyer(tenant string) keyer { return keyer{prefix: boltdb.TenantPrefix(tenant)} }

func (k keyer) profile(dst []byte, id profile.ID) []byte {
	dst = append(dst, k.prefix...)
	return append(dst, id[:]...)
}

func (k keyer) identity(dst []byte, idn profile.Identity) []byte {
	dst = append(dst, k.prefix...)
	dst = append(dst, idn.Namespace...)
	dst = append(dst, 0)
	return append(dst, idn.Value...)
}

func (k keyer) token(dst []byte, id profile.TokenID) []byte {
	dst = append(dst, k.prefix...)
	return append(dst, id[:]...)
}

// details is the key of a token's details under its owner; with the token
// id left out it is the prefix of all the owner's tokens.
func (k keyer) details(dst []byte, owner profile.ID, id *profile.TokenID) []byte {
	dst = append(dst, k.prefix...)
	dst = append(dst, owner[:]...)
	if id != nil {
		dst = append(dst, id[:]...)
	}
	return dst
}

// device is the prefix of an app install's tokens; with a token id, the key
// of one of them. App ids and device ids never hold 0x00 (validation), so
// the prefix never matches another install.
func (k keyer) device(dst []byte, dk profile.DeviceKey, id *profile.TokenID) []byte {
	dst = append(dst, k.prefix...)
	dst = append(dst, byte(dk.Platform))
	dst = append(dst, dk.AppID...)
	dst = append(dst, 0)
	dst = append(dst, dk.DeviceID...)
	dst = append(dst, 0)
	if id != nil {
		dst = append(dst, id[:]...)
	}
	return dst
}

// idFromKey returns the profile id at the end of a profiles key.
func idFromKey(key []byte) (profile.ID, bool) {
	var id profile.ID
	if len(key) < len(id) {
		return id, false
	}
	copy(id[:], key[len(key)-len(id):])
	return id, true
}

// arena hands out byte slices carved from blocks. bbolt requires keys and
// values passed to Put to stay untouched until the transaction ends, and one
// allocation per block is far cheaper than one per key. Blocks start small
// (a single registration writes well under 2 KiB) and double up to 1 MiB
// for big batches.
type arena struct {
	buf []byte
}

const (
	arenaMinBlock = 2 << 10
	arenaMaxBlock = 1 << 20
)

// build appends with fn into the arena and returns the appended bytes.
func (a *arena) build(fn func(dst []byte) []byte) []byte {
	if cap(a.buf)-len(a.buf) < 512 {
		a.buf = make([]byte, 0, min(arenaMaxBlock, max(arenaMinBlock, 2*cap(a.buf))))
	}
	start := len(a.buf)
	a.buf = fn(a.buf)
	// If fn outgrew the block, append moved everything to a new array and
	// the slice below points there; earlier slices keep the old array,
	// which is never written again.
	return a.buf[start:len(a.buf):len(a.buf)]
}
