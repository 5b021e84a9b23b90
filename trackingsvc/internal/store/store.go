// Package store keeps trackingsvc's events, the index that deduplicates them
// and the aggregates derived from them in bbolt.
//
// Layout (every key starts with the tenant, see boltdb.TenantPrefix):
//
//	events      tenant|seq of its first event(8)       → block of events (see block.go)
//	dedupe      one nested bucket per receive day (8), in it:
//	            tenant|first seq of the batch(8)       → fingerprints (8 bytes each)
//	aggregates  tenant|level(1)|mask(1)|dims|start(8)  → Metrics (protobuf)
//	openers     tenant|journey|message|first seq of the batch(8)
//	                                                   → profile fingerprints (8 bytes each)
//
// Ingest writes sequential keys only: events append in blocks under a sequence,
// and a
// batch's event-id fingerprints append as one value in today's dedupe
// partition. Whether an id was seen is answered from memory (idSet, rebuilt
// from the dedupe partitions on Open), so no random-key index sits on the
// hot path; the window of remembered ids is bounded (Options.DedupeWindow)
// and expires by dropping whole day partitions. Aggregates are rolled up at
// ingest, in the same transaction, per minute, hour and day and for every
// combination of the filter dimensions, so a metrics query is one short
// range scan whatever the filter and never reads events. Unique opens need
// to know who already opened a message, forever: each message's openers are
// one contiguous, append-only key range, held in memory while the message
// receives opens (openerCache).
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

var tracer = otel.Tracer("github.com/pushmesh/pushmesh/trackingsvc/internal/store")

// The buckets, created on Open: the one list.
var (
	bucketEvents     = []byte("events")
	bucketDedupe     = []byte("dedupe")
	bucketAggregates = []byte("aggregates")
	bucketOpeners    = []byte("openers")
	allBuckets       = [][]byte{bucketEvents, bucketDedupe, bucketAggregates, bucketOpeners}
)

// ErrBadPageToken is a page token this store did not issue.
var ErrBadPageToken = errors.New("invalid page token")

// Defaults of Options.
const (
	DefaultDedupeWindow = 7 * 24 * time.Hour
	DefaultRetention    = 30 * 24 * time.Hour
)

// Options configure a Store.
type Options struct {
	// DedupeWindow is how long an event id is remembered after the event
	// was received: the same id arriving again within the window is a
	// duplicate. Ids are kept per receive day (UTC), so an id is remembered
	// for at least the window and at most a day longer. Default 7 days.
	DedupeWindow time.Duration
	// Retention is how long an event is kept after it was received; Sweep
	// removes older ones. Aggregates are kept forever. Default 30 days.
	Retention time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Store is the event store. It is safe for concurrent use.
type Store struct {
	db   *bolt.DB
	opts Options

	// mu serializes writers (bbolt does too) and guards ids, so the set in
	// memory always equals what is committed: a batch's ids are added only
	// after its transaction committed, before the next batch looks.
	mu      sync.Mutex
	ids     idSet
	openers openerCache
}

// Open creates the buckets if needed and loads the event ids received
// within the dedupe window into memory, dropping expired dedupe partitions.
func Open(db *bolt.DB, opts Options) (*Store, error) {
	if opts.DedupeWindow <= 0 {
		opts.DedupeWindow = DefaultDedupeWindow
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{db: db, opts: opts, openers: openerCache{sets: map[messageKey]*openerSet{}}}
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create buckets: %w", err)
	}
	if err := s.sweepDedupe(); err != nil {
		return nil, err
	}
	if err := s.loadIDs(); err != nil {
		return nil, err
	}
	return s, nil
}

// loadIDs fills the in-memory id set from the dedupe partitions.
func (s *Store) loadIDs() error {
	return s.db.View(func(tx *bolt.Tx) error {
		dedupe := tx.Bucket(bucketDedupe)
		return dedupe.ForEachBucket(func(name []byte) error {
			day, ok := partitionDay(name)
			if !ok {
				return fmt.Errorf("dedupe partition %x: not a day", name)
			}
			set := s.ids.day(day)
			return dedupe.Bucket(name).ForEach(func(_, v []byte) error {
				if len(v)%8 != 0 {
					return fmt.Errorf("dedupe partition %d: value of %d bytes", day, len(v))
				}
				for i := 0; i < len(v); i += 8 {
					set[binary.BigEndian.Uint64(v[i:])] = struct{}{}
				}
				return nil
			})
		})
	})
}

// AppendResult counts what Append stored.
type AppendResult struct {
	Accepted   int
	Duplicates int
	// New reports, per input index, whether the event was stored (false:
	// a duplicate).
	New []bool
}

// Append stores valid, prepared events (see events.Prepare) in one
// transaction: events whose id was not seen within the dedupe window are
// appended in the given order and counted into the aggregates; duplicates,
// of earlier batches or inside this one, are skipped. When Append returns
// without error the new events are durable. The receive time is the store's
// clock at Append, the same for the whole batch.
func (s *Store) Append(ctx context.Context, tenant string, evs []*trackingv1.Event) (AppendResult, error) {
	_, span := tracer.Start(ctx, "store.Append", trace.WithAttributes(attribute.Int("pushmesh.events", len(evs))))
	defer span.End()
	res := AppendResult{New: make([]bool, len(evs))}
	if len(evs) == 0 {
		return res, nil
	}
	fps := fingerprints(tenant, evs)
	encoded, err := encodeEvents(evs)
	if err != nil {
		return AppendResult{}, err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	day := dayOf(now)
	// New ids go straight into today's set, which also catches repeats
	// inside the batch; they are taken out again if the transaction fails.
	// Nobody else looks meanwhile: the mutex is held.
	today := s.ids.day(day)
	fresh := make([]uint64, 0, len(evs))
	for i, fp := range fps {
		if s.ids.has(fp) {
			res.Duplicates++
			continue
		}
		today[fp] = struct{}{}
		fresh = append(fresh, fp)
		res.New[i] = true
		res.Accepted++
	}
	span.SetAttributes(attribute.Int("pushmesh.accepted", res.Accepted), attribute.Int("pushmesh.duplicates", res.Duplicates))
	if res.Accepted == 0 {
		return res, nil
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		firstSeq, err := appendEvents(tx.Bucket(bucketEvents), tenant, encoded, res.New, now)
		if err != nil {
			return err
		}
		if err := appendFingerprints(tx.Bucket(bucketDedupe), day, tenant, firstSeq, fresh); err != nil {
			return err
		}
		unique, err := s.openers.mark(tx.Bucket(bucketOpeners), tenant, evs, res.New, firstSeq, now)
		if err != nil {
			return err
		}
		return mergeRollups(tx.Bucket(bucketAggregates), tenant, countBatch(evs, res.New, unique))
	})
	if err != nil {
		span.RecordError(err)
		for _, fp := range fresh {
			delete(today, fp)
		}
		s.openers.rollback()
		return AppendResult{}, fmt.Errorf("append events: %w", err)
	}
	s.openers.commit()
	return res, nil
}

// appendFingerprints records a batch's new ids in the partition of day.
func appendFingerprints(dedupe *bolt.Bucket, day int64, tenant string, firstSeq uint64, fresh []uint64) error {
	part, err := dedupe.CreateBucketIfNotExists(binary.BigEndian.AppendUint64(nil, uint64(day)))
	if err != nil {
		return err
	}
	part.FillPercent = 0.95
	val := make([]byte, 0, 8*len(fresh))
	for _, fp := range fresh {
		val = binary.BigEndian.AppendUint64(val, fp)
	}
	key := binary.BigEndian.AppendUint64(boltdb.TenantPrefix(tenant), firstSeq)
	return part.Put(key, val)
}

// fingerprints hashes tenant and event id of each event to 64 bits. Two
// different ids collide with probability 2^-64 per pair: with a billion ids
// in the window, a new event is wrongly taken for a duplicate about once in
// 18 billion.
func fingerprints(tenant string, evs []*trackingv1.Event) []uint64 {
	out := make([]uint64, len(evs))
	buf := make([]byte, 0, 256)
	for i, e := range evs {
		buf = append(append(append(buf[:0], tenant...), 0), e.GetEventId()...)
		out[i] = xxhash.Sum64(buf)
	}
	return out
}

// dayOf is the UTC day number of t since 1970.
func dayOf(t time.Time) int64 { return t.Unix() / 86400 }

func partitionDay(name []byte) (int64, bool) {
	if len(name) != 8 {
		return 0, false
	}
	return int64(binary.BigEndian.Uint64(name)), true
}

// appendString appends s length-prefixed, so keys made of several free-form
// strings stay unambiguous whatever bytes the strings hold.
func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// idSet holds the fingerprints of the event ids received within the dedupe
// window, one set per receive day, so a day expires by dropping its set.
type idSet struct {
	days []daySet // oldest first
}

type daySet struct {
	day int64
	fps map[uint64]struct{}
}

func (s *idSet) has(fp uint64) bool {
	// Newest first: a retry usually comes soon after the original.
	for i := len(s.days) - 1; i >= 0; i-- {
		if _, ok := s.days[i].fps[fp]; ok {
			return true
		}
	}
	return false
}

// day returns the set of day, creating it if needed.
func (s *idSet) day(day int64) map[uint64]struct{} {
	for _, d := range s.days {
		if d.day == day {
			return d.fps
		}
	}
	d := daySet{day: day, fps: map[uint64]struct{}{}}
	s.days = append(s.days, d)
	slices.SortFunc(s.days, func(a, b daySet) int { return int(a.day - b.day) })
	return d.fps
}

// dropBefore forgets the days before day.
func (s *idSet) dropBefore(day int64) {
	s.days = slices.DeleteFunc(s.days, func(d daySet) bool { return d.day < day })
}

// size is how many ids are remembered.
func (s *idSet) size() int {
	n := 0
	for _, d := range s.days {
		n += len(d.fps)
	}
	return n
}
