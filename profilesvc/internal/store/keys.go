package store

import (
	"crypto/sha256"

	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

// The one list of buckets, created when the store opens. Every key starts
// with the tenant prefix (boltdb.TenantPrefix), so tenants never share a key.
var (
	// bucketMeta holds the schema version.
	bucketMeta = []byte("meta")
	// bucketProfiles: tenant | profile id (16 bytes) → profile record
	// (profile.Encode), with the profile's tokens inline so an audience scan
	// reads one value per profile. IDs grow with time, so new profiles append.
	bucketProfiles = []byte("profiles")
	// bucketIdentities: tenant | namespace | 0x00 | value → profile id.
	bucketIdentities = []byte("identities")
	// bucketTokens: tenant | platform (1 byte) | sha256(app id | 0x00 |
	// token)[:16] → owner profile id. The hash keeps keys short and fixed
	// (FCM tokens run to hundreds of bytes), which keeps this random-key
	// index small; the owner's record holds the token itself and is checked
	// on every lookup.
	bucketTokens = []byte("tokens")
	// bucketDevices: tenant | platform | app id | 0x00 | device id → the
	// device's current token, to detect token rotation.
	bucketDevices = []byte("devices")

	allBuckets = [][]byte{bucketMeta, bucketProfiles, bucketIdentities, bucketTokens, bucketDevices}
)

// schemaVersion is written in bucketMeta; a store refuses to open a file of
// another version instead of misreading it.
const schemaVersion = "1"

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

func (k keyer) token(dst []byte, tk profile.TokenKey) []byte {
	h := sha256.New()
	h.Write([]byte(tk.AppID))
	h.Write([]byte{0})
	h.Write([]byte(tk.Token))
	var sum [sha256.Size]byte
	dst = append(dst, k.prefix...)
	dst = append(dst, byte(tk.Platform))
	return append(dst, h.Sum(sum[:0])[:16]...)
}

func (k keyer) device(dst []byte, dk profile.DeviceKey) []byte {
	dst = append(dst, k.prefix...)
	dst = append(dst, byte(dk.Platform))
	dst = append(dst, dk.AppID...)
	dst = append(dst, 0)
	return append(dst, dk.DeviceID...)
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

// arena hands out byte slices carved from big blocks. bbolt requires keys
// and values passed to Put to stay untouched until the transaction ends, and
// one allocation per block is far cheaper than one per key.
type arena struct {
	buf []byte
}

// build appends with fn into the arena and returns the appended bytes.
func (a *arena) build(fn func(dst []byte) []byte) []byte {
	if cap(a.buf)-len(a.buf) < 4096 {
		a.buf = make([]byte, 0, 1<<20)
	}
	start := len(a.buf)
	a.buf = fn(a.buf)
	// If fn outgrew the block, append moved everything to a new array and
	// the slice below points there; earlier slices keep the old array.
	return a.buf[start:len(a.buf):len(a.buf)]
}
