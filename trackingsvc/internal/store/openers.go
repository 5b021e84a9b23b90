package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

// openerIdle is how long a message's openers stay in memory after its last
// open; the next open reloads them from disk.
const openerIdle = time.Hour

// messageKey names one message of one journey of one tenant.
type messageKey struct{ tenant, journey, message string }

// openerCache knows who already opened which message, so an open counts as
// unique exactly once per (journey, message, profile) over the message's
// whole life. A random-key index of openers would cost a page write per open;
// instead each message's openers are appended on disk as one contiguous key
// range (one Put per message per batch) and looked up in memory. A message's
// set is loaded on its first open since it went idle, and dropped when it
// has been idle for openerIdle: memory holds only the messages being opened.
// The store's mutex guards the cache.
type openerCache struct {
	sets map[messageKey]*openerSet
	// pending are the openers of the transaction in progress, added to
	// their sets only once it committed.
	pending []pendingOpeners
}

type openerSet struct {
	fps      map[uint64]struct{}
	lastUsed time.Time
}

type pendingOpeners struct {
	set   *openerSet
	fps   []uint64            // in event order
	added map[uint64]struct{} // the same, to look up
}

// mark finds, among the new events, the first open of each (journey,
// message, profile) ever and reports them per event index; it appends those
// openers to the message's range under seq (unique per batch). The profile
// is the profile id, or the token hash without one. Call commit or rollback
// after the transaction.
func (c *openerCache) mark(b *bolt.Bucket, tenant string, evs []*trackingv1.Event, isNew []bool, seq uint64, now time.Time) ([]bool, error) {
	c.pending = c.pending[:0]
	var unique []bool
	batch := map[messageKey]int{} // index in c.pending
	var buf []byte
	for i, e := range evs {
		if !isNew[i] || e.GetType() != trackingv1.EventType_EVENT_TYPE_OPENED {
			continue
		}
		k := messageKey{tenant, e.GetJourneyId(), e.GetMessageId()}
		p, ok := batch[k]
		if !ok {
			set, err := c.load(b, k)
			if err != nil {
				return nil, err
			}
			set.lastUsed = now
			p = len(c.pending)
			batch[k] = p
			c.pending = append(c.pending, pendingOpeners{set: set, added: map[uint64]struct{}{}})
		}
		buf = appendWho(buf[:0], e)
		fp := xxhash.Sum64(buf)
		pend := &c.pending[p]
		if _, seen := pend.set.fps[fp]; seen {
			continue
		}
		if _, seen := pend.added[fp]; seen {
			continue
		}
		pend.fps = append(pend.fps, fp)
		pend.added[fp] = struct{}{}
		if unique == nil {
			unique = make([]bool, len(evs))
		}
		unique[i] = true
	}
	for k, p := range batch {
		fps := c.pending[p].fps
		if len(fps) == 0 {
			continue
		}
		val := make([]byte, 0, 8*len(fps))
		for _, fp := range fps {
			val = binary.BigEndian.AppendUint64(val, fp)
		}
		if err := b.Put(binary.BigEndian.AppendUint64(openerPrefix(k), seq), val); err != nil {
			return nil, err
		}
	}
	return unique, nil
}

// commit adds the committed transaction's openers to their sets.
func (c *openerCache) commit() {
	for _, p := range c.pending {
		for _, fp := range p.fps {
			p.set.fps[fp] = struct{}{}
		}
	}
	c.pending = c.pending[:0]
}

// rollback forgets the failed transaction's openers. The sets loaded for it
// hold committed data and stay.
func (c *openerCache) rollback() { c.pending = c.pending[:0] }

// load returns the set of k, reading it from disk if it is not in memory.
func (c *openerCache) load(b *bolt.Bucket, k messageKey) (*openerSet, error) {
	if set, ok := c.sets[k]; ok {
		return set, nil
	}
	set := &openerSet{fps: map[uint64]struct{}{}}
	prefix := openerPrefix(k)
	cur := b.Cursor()
	for key, v := cur.Seek(prefix); key != nil && bytes.HasPrefix(key, prefix); key, v = cur.Next() {
		// Only this message's keys are the prefix and 8 bytes (the strings
		// are length-prefixed).
		if len(key) != len(prefix)+8 {
			continue
		}
		if len(v)%8 != 0 {
			return nil, fmt.Errorf("openers of %q/%q: value of %d bytes", k.journey, k.message, len(v))
		}
		for i := 0; i < len(v); i += 8 {
			set.fps[binary.BigEndian.Uint64(v[i:])] = struct{}{}
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
