package profile

import (
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// ID is a profile id: 16 bytes, a 48-bit millisecond timestamp followed by 80
// bits that start random in each millisecond and count up within it. IDs made
// by one Generator are strictly increasing, so new profiles append to the end
// of the profiles bucket (sequential keys are far cheaper in bbolt than random
// ones) and an audience scan in id order can resume after any id.
type ID [16]byte

// IDLen is the length of an ID's string form.
const IDLen = 26

// crockford is Crockford's base32 alphabet, as ULIDs use it: the string form
// sorts like the bytes.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// crockfordDec maps a character to its 5-bit value, 0xFF when invalid.
// Lowercase letters are accepted too.
var crockfordDec = func() [256]byte {
	var d [256]byte
	for i := range d {
		d[i] = 0xFF
	}
	for i := 0; i < len(crockford); i++ {
		c := crockford[i]
		d[c] = byte(i)
		if c >= 'A' && c <= 'Z' {
			d[c+'a'-'A'] = byte(i)
		}
	}
	return d
}()

// ErrBadID says a string is not a profile id.
var ErrBadID = errors.New("not a profile id: want 26 characters of Crockford base32")

// IsZero reports whether id is the zero ID (no profile).
func (id ID) IsZero() bool { return id == ID{} }

// String encodes id as 26 characters of Crockford base32 (the ULID form).
func (id ID) String() string {
	var out [IDLen]byte
	// 128 bits as 26 groups of 5 bits, the first group holding only 3 bits.
	hi := uint64(id[0])<<56 | uint64(id[1])<<48 | uint64(id[2])<<40 | uint64(id[3])<<32 |
		uint64(id[4])<<24 | uint64(id[5])<<16 | uint64(id[6])<<8 | uint64(id[7])
	lo := uint64(id[8])<<56 | uint64(id[9])<<48 | uint64(id[10])<<40 | uint64(id[11])<<32 |
		uint64(id[12])<<24 | uint64(id[13])<<16 | uint64(id[14])<<8 | uint64(id[15])
	for i := IDLen - 1; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// ParseID decodes the string form of an ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != IDLen {
		return id, ErrBadID
	}
	var hi, lo uint64
	for i := 0; i < IDLen; i++ {
		v := crockfordDec[s[i]]
		if v == 0xFF {
			return id, ErrBadID
		}
		if i == 0 && v > 7 {
			return id, ErrBadID // would overflow 128 bits
		}
		hi = hi<<5 | lo>>59
		lo = lo<<5 | uint64(v)
	}
	for i := 0; i < 8; i++ {
		id[i] = byte(hi >> (56 - 8*i))
		id[8+i] = byte(lo >> (56 - 8*i))
	}
	return id, nil
}

// Generator makes strictly increasing IDs, also across restarts once told
// the largest stored ID (Observe), and across wall-clock steps backwards.
type Generator struct {
	mu   sync.Mutex
	last ID
	now  func() time.Time
}

// NewGenerator returns a generator reading the given clock (time.Now when nil).
func NewGenerator(now func() time.Time) *Generator {
	if now == nil {
		now = time.Now
	}
	return &Generator{now: now}
}

// Observe makes every later ID greater than id.
func (g *Generator) Observe(id ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if compareID(id, g.last) > 0 {
		g.last = id
	}
}

// New returns an ID greater than every ID returned or observed before.
func (g *Generator) New() ID {
	g.mu.Lock()
	defer g.mu.Unlock()
	ms := uint64(g.now().UnixMilli()) & (1<<48 - 1)
	lastMS := uint64(g.last[0])<<40 | uint64(g.last[1])<<32 | uint64(g.last[2])<<24 |
		uint64(g.last[3])<<16 | uint64(g.last[4])<<8 | uint64(g.last[5])
	var id ID
	if ms > lastMS {
		putMS(&id, ms)
		// Random start inside the millisecond, top bit clear so the counter
		// has at least 2^79 steps before it would carry into the timestamp.
		r1, r2 := rand.Uint64(), rand.Uint32()
		id[6] = byte(r1>>56) & 0x7F
		for i := 7; i < 14; i++ {
			id[i] = byte(r1 >> (8 * (13 - i)))
		}
		id[14] = byte(r2 >> 8)
		id[15] = byte(r2)
	} else {
		// Same millisecond, or the clock went back: count up from the last
		// ID (a carry into the timestamp bytes is harmless, it stays sorted).
		id = g.last
		for i := 15; i >= 0; i-- {
			id[i]++
			if id[i] != 0 {
				break
			}
		}
	}
	g.last = id
	return id
}

func putMS(id *ID, ms uint64) {
	for i := 0; i < 6; i++ {
		id[i] = byte(ms >> (40 - 8*i))
	}
}

func compareID(a, b ID) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}
