package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

// openerIdle is how long a message's openers stay in memory after its last
// open; the next open reloads them from disk.
const openerIdle = time.Hour

// messageKey names one message of one journey of one tenant.
type messageKey struct{ tenant, journey, message string }

// openerCache knows who already opened which message, and when first, so
// an open counts as unique exactly once per (journey, message, profile) over
// the message's whole life, in the bucket of the earliest open by event time.
// A random-key index of openers would cost a page write per open; instead
// each message's openers are appended on disk as one contiguous key range
// (one Put per message per batch) and looked up in memory. A message's set
// is loaded on its first open since it went idle, and dropped when it has
// been idle for openerIdle: memory holds only the messages being opened.
// The store's openersMu guards the cache.
//
// Opens arrive out of order (a phone offline for a day sends yesterday's
// open after today's): when an open earlier than a profile's first one
// arrives, the unique open moves to it, in the same transaction: a -1 in the
// rollups of the old open's cell (minute, app, platform), a +1 in the new
// one's. On disk a move is one more record for the profile; the earliest
// record wins on load.
//
// The same type serves action taps (the actors bucket): typ is the event
// type it counts.
type openerCache struct {
	typ  trackingv1.EventType
	sets map[messageKey]*openerSet
	// pending are the openers of the transaction in progress, added to
	// their sets only once it committed.
	pending []pendingOpeners
}

// firstOpen is where a profile's unique open of a message is counted.
type firstOpen struct {
	// at is the event time in unix nanoseconds; unknownTime for an opener
	// recorded before first opens kept their time (never moved).
	at       int64
	app      uint32 // index in the set's apps
	platform commonv1.Platform
}

// unknownTime is earlier than every event time.
const unknownTime = math.MinInt64

type openerSet struct {
	fps map[uint64]firstOpen
	// apps are the app ids of the first opens (a message has few).
	apps     []string
	appIndex map[string]uint32
	lastUsed time.Time
}

func newOpenerCache(typ trackingv1.EventType) openerCache {
	return openerCache{typ: typ, sets: map[messageKey]*openerSet{}}
}

func newOpenerSet() *openerSet {
	return &openerSet{fps: map[uint64]firstOpen{}, appIndex: map[string]uint32{}}
}

// app returns the index of app in the set's apps, adding it if new.
func (s *openerSet) app(app string) uint32 {
	i, ok := s.appIndex[app]
	if !ok {
		i = uint32(len(s.apps))
		s.apps = append(s.apps, app)
		s.appIndex[app] = i
	}
	return i
}

// keepEarliest records f as fp's first open unless an earlier one is known.
func (s *openerSet) keepEarliest(fp uint64, f firstOpen) {
	if cur, ok := s.fps[fp]; !ok || f.at < cur.at {
		s.fps[fp] = f
	}
}

type pendingOpeners struct {
	key   messageKey
	set   *openerSet
	order []uint64 // the profiles with a new first open, in event order
	added map[uint64]pendingOpen
}

// pendingOpen is a profile's first open as of this batch.
type pendingOpen struct {
	first firstOpen
	event int // the event counted as the unique open
	// moved: it replaces was, a committed first open whose count moves.
	moved bool
	was   firstOpen
}

// mark finds, among the new events, the earliest open by event time of each
// (journey, message, profile) ever and reports them per event index (ties
// go to the open stored first); it appends those openers to the message's
// range under seq (unique per batch). The profile is the profile id, or the
// token hash without one. moves are the cells where a unique open counted by
// an earlier batch must be taken back: a new open predates it. Call commit
// or rollback after the transaction.
func (c *openerCache) mark(b *bolt.Bucket, tenant string, evs []*trackingv1.Event, isNew []bool, seq uint64, now time.Time) (unique []bool, moves []cell, err error) {
	c.pending = c.pending[:0]
	batch := map[messageKey]int{} // index in c.pending
	var buf []byte
	for i, e := range evs {
		if !isNew[i] || e.GetType() != c.typ {
			continue
		}
		k := messageKey{tenant, e.GetJourneyId(), e.GetMessageId()}
		p, ok := batch[k]
		if !ok {
			set, err := c.load(b, k)
			if err != nil {
				return nil, nil, err
			}
			set.lastUsed = now
			p = len(c.pending)
			batch[k] = p
			c.pending = append(c.pending, pendingOpeners{key: k, set: set, added: map[uint64]pendingOpen{}})
		}
		buf = appendWho(buf[:0], e)
		fp := xxhash.Sum64(buf)
		pend := &c.pending[p]
		at := eventNanos(e)
		if cur, ok := pend.added[fp]; ok {
			// A first open of this batch already: the earlier one wins.
			if at < cur.first.at {
				unique[cur.event] = false
				unique[i] = true
				cur.first = firstOpen{at, pend.set.app(e.GetAppId()), e.GetPlatform()}
				cur.event = i
				pend.added[fp] = cur
			}
			continue
		}
		was, seen := pend.set.fps[fp]
		if seen && at >= was.at {
			continue
		}
		if unique == nil {
			unique = make([]bool, len(evs))
		}
		unique[i] = true
		pend.order = append(pend.order, fp)
		pend.added[fp] = pendingOpen{first: firstOpen{at, pend.set.app(e.GetAppId()), e.GetPlatform()}, event: i, moved: seen, was: was}
	}
	for _, p := range c.pending {
		if len(p.order) == 0 {
			continue
		}
		if err := b.Put(openerKey(p.key, seq), encodeOpeners(p)); err != nil {
			return nil, nil, err
		}
		for _, fp := range p.order {
			if o := p.added[fp]; o.moved {
				sec := o.was.at / 1e9
				moves = append(moves, cell{dims{p.key.journey, p.key.message, p.set.apps[o.was.app], o.was.platform}, sec - sec%60})
			}
		}
	}
	return unique, moves, nil
}

// eventNanos is the event time in unix nanoseconds (event times are checked
// to lie between 1970 and a few minutes from now).
func eventNanos(e *trackingv1.Event) int64 {
	t := e.GetEventTime()
	return t.GetSeconds()*1e9 + int64(t.GetNanos())
}

// Openers are stored in two formats, told apart by the key: the first
// kept only who opened (key prefix|seq, value 8-byte fingerprints); the
// current one (key prefix|seq|openersV2) also keeps the first open:
//
//	uvarint count of apps, each app as uvarint length and bytes; then per
//	opener: fingerprint (8), event time in unix nanoseconds (8), platform
//	(uvarint), index of its app in the list (uvarint).
const openersV2 = 2

func openerKey(k messageKey, seq uint64) []byte {
	return append(binary.BigEndian.AppendUint64(openerPrefix(k), seq), openersV2)
}

func encodeOpeners(p pendingOpeners) []byte {
	local := map[uint32]uint64{} // set's app index → index in this value
	var apps []uint32
	for _, fp := range p.order {
		a := p.added[fp].first.app
		if _, ok := local[a]; !ok {
			local[a] = uint64(len(apps))
			apps = append(apps, a)
		}
	}
	val := binary.AppendUvarint(make([]byte, 0, 8+20*len(p.order)), uint64(len(apps)))
	for _, a := range apps {
		val = appendString(val, p.set.apps[a])
	}
	for _, fp := range p.order {
		f := p.added[fp].first
		val = binary.BigEndian.AppendUint64(val, fp)
		val = binary.BigEndian.AppendUint64(val, uint64(f.at))
		val = binary.AppendUvarint(val, uint64(f.platform))
		val = binary.AppendUvarint(val, local[f.app])
	}
	return val
}

// decodeOpeners adds a stored value of the current format to set.
func decodeOpeners(set *openerSet, v []byte) error {
	n, k := binary.Uvarint(v)
	if k <= 0 || n > uint64(len(v)) {
		return errBadOpeners
	}
	v = v[k:]
	apps := make([]uint32, n)
	for i := range apps {
		l, k := binary.Uvarint(v)
		if k <= 0 || l > uint64(len(v)-k) {
			return errBadOpeners
		}
		apps[i] = set.app(string(v[k : k+int(l)]))
		v = v[k+int(l):]
	}
	for len(v) > 0 {
		if len(v) < 16 {
			return errBadOpeners
		}
		fp, at := binary.BigEndian.Uint64(v), int64(binary.BigEndian.Uint64(v[8:]))
		v = v[16:]
		platform, k := binary.Uvarint(v)
		if k <= 0 {
			return errBadOpeners
		}
		v = v[k:]
		app, k := binary.Uvarint(v)
		if k <= 0 || app >= uint64(len(apps)) {
			return errBadOpeners
		}
		v = v[k:]
		set.keepEarliest(fp, firstOpen{at, apps[app], commonv1.Platform(platform)})
	}
	return nil
}

var errBadOpeners = errors.New("corrupt openers")

// commit adds the committed transaction's first opens to their sets.
func (c *openerCache) commit() {
	for _, p := range c.pending {
		for _, fp := range p.order {
			p.set.fps[fp] = p.added[fp].first
		}
	}
	c.pending = c.pending[:0]
}

// rollback forgets the failed transaction's openers. The sets loaded for it
// hold committed data and stay (an app id added to a set's list is unused).
func (c *openerCache) rollback() { c.pending = c.pending[:0] }

// load returns the set of k, reading it from disk if it is not in memory.
func (c *openerCache) load(b *bolt.Bucket, k messageKey) (*openerSet, error) {
	if set, ok := c.sets[k]; ok {
		return set, nil
	}
	set := newOpenerSet()
	prefix := openerPrefix(k)
	cur := b.Cursor()
	for key, v := cur.Seek(prefix); key != nil && bytes.HasPrefix(key, prefix); key, v = cur.Next() {
		// Only this message's keys start with the prefix (the strings are
		// length-prefixed); the length tells the format.
		switch {
		case len(key) == len(prefix)+8:
			if len(v)%8 != 0 {
				return nil, fmt.Errorf("openers of %q/%q: value of %d bytes", k.journey, k.message, len(v))
			}
			for i := 0; i < len(v); i += 8 {
				set.keepEarliest(binary.BigEndian.Uint64(v[i:]), firstOpen{at: unknownTime})
			}
		case len(key) == len(prefix)+9 && key[len(key)-1] == openersV2:
			if err := decodeOpeners(set, v); err != nil {
				return nil, fmt.Errorf("openers of %q/%q, key %x: %w", k.journey, k.message, key, err)
			}
		}
	}
	c.sets[k] = set
	return set, nil
}

// evictIdle drops the sets of messages without opens since before cutoff.
func (c *openerCache) evictIdle(cutoff time.Time) {
	for k, set := range c.sets {
		if set.lastUsed.Before(cutoff) {
			delete(c.sets, k)
		}
	}
}

func openerPrefix(k messageKey) []byte {
	p := boltdb.TenantPrefix(k.tenant)
	p = appendString(p, k.journey)
	return appendString(p, k.message)
}

// appendWho appends the identity an open is unique for.
func appendWho(b []byte, e *trackingv1.Event) []byte {
	if p := e.GetProfileId(); p != "" {
		return append(append(b, 'p'), p...)
	}
	return append(append(b, 't'), e.GetTokenHash()...)
}
