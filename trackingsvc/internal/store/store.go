// Package store keeps trackingsvc's events, the index that deduplicates them
// and the aggregates derived from them in bbolt.
//
// Layout (every key starts with the tenant, see boltdb.TenantPrefix):
//
//	events      tenant|seq of its first event(8)       → block of events (see block.go)
//	dedupe      one nested bucket per receive day (8), in it:
//	            tenant|first seq of the batch(8)       → fingerprints (8 bytes each)
//	dedupe-runs one nested bucket per receive day (8) that left memory, in it:
//	            first fingerprint of a chunk(8)        → sorted fingerprints (see runs.go)
//	dedupe-staging                                     runs being written
//	aggregates  tenant|level(1)|mask(1)|dims|start(8)  → Metrics (protobuf)
//	openers     tenant|journey|message|first seq of the batch(8)|2
//	                                                   → profile fingerprints with their first
//	                                                     open's time, app, platform (openers.go)
//	actors      the same for action taps
//
// Ingest writes sequential keys only: events append in blocks under a
// sequence, and a batch's event-id fingerprints append as one value in the
// dedupe partition of the day. Whether an id was seen is answered from
// memory (idSet, rebuilt from the dedupe partitions on Open), so no
// random-key index sits on the hot path; the window of ids in memory is
// bounded (Options.DedupeWindow) and expires by dropping whole day
// partitions. Ids stay on disk, sorted by day, until no copy of their event
// can be accepted any more (Options.Retention after the event time), and are
// read only for events older than the window (runs.go). Aggregates are
// rolled up at
// ingest, in the same transaction, per minute, hour and day and for every
// combination of the filter dimensions, so a metrics query is one short
// range scan whatever the filter and never reads events. Unique opens need
// to know who already opened a message, forever: each message's openers are
// one contiguous, append-only key range, held in memory while the message
// receives opens (openerCache). Unique actions are counted alike, from the
// actors bucket.
package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
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
	bucketActors     = []byte("actors")
	// bucketDedupeRuns holds the sorted ids of the receive days that left
	// memory; bucketDedupeStaging those being written (see runs.go).
	bucketDedupeRuns    = []byte("dedupe-runs")
	bucketDedupeStaging = []byte("dedupe-staging")
	allBuckets          = [][]byte{bucketEvents, bucketDedupe, bucketAggregates, bucketOpeners, bucketActors, bucketDedupeRuns, bucketDedupeStaging}
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
	// DedupeWindow is how long an event id is held in memory after the
	// event was received: the same id arriving again within the window is a
	// duplicate whatever its event time. Ids are kept per receive day (UTC),
	// so an id is in memory for at least the window and at most a day
	// longer. Default 7 days.
	DedupeWindow time.Duration
	// Retention is how long an event is kept after it was received; Sweep
	// removes older ones. Aggregates are kept forever. Default 30 days.
	//
	// It is also the age of event time up to which events are accepted
	// (events.Ingester.Retention must not exceed it): the ids of the days
	// that leave the dedupe window are kept on disk until Retention (and two
	// days of margin) has passed, so a copy of an event is a duplicate for
	// as long as it could be accepted, provided its event time is not later
	// than its first copy's receipt (a retry; a copy rebuilt with a newer
	// time is caught only within the window).
	Retention time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Store is the event store. It is safe for concurrent use.
//
// Concurrent Appends overlap: while one batch's transaction commits (an
// fsync), the next batch is already checked against the ids in memory.
// Transactions then run one at a time in the order the batches were checked
// (tickets), so a batch that took another's ids for duplicates learns
// whether that batch was stored before it answers.
type Store struct {
	db   *bolt.DB
	opts Options

	// mu guards ids, inflight and issued.
	mu sync.Mutex
	// ids are the committed ids of the dedupe window.
	ids idSet
	// inflight are the batches checked but not yet committed, oldest first:
	// their new ids count as seen for the batches checked after them.
	inflight []*batch
	issued   uint64 // tickets handed out

	// cover says which days memory holds and which are in runs on disk;
	// replaced only under mu.
	cover atomic.Pointer[coverage]
	// sweepMu makes sweeps of the dedupe ids one at a time.
	sweepMu sync.Mutex

	// turnMu and turn order the transactions by ticket; turnMu guards done.
	turnMu sync.Mutex
	turn   *sync.Cond
	done   uint64 // tickets finished

	// openersMu guards openers and actors; held across a transaction that
	// uses them.
	openersMu sync.Mutex
	openers   openerCache // who opened which message, first
	actors    openerCache // who tapped an action of which message, first

	// beforeCommit, set only by tests, runs in a batch's turn before its
	// transaction; an error fails the batch as a failed commit would.
	beforeCommit func() error
	// afterLookup, set only by tests, runs between a batch's look-up of
	// late ids on disk and its check.
	afterLookup func()
}

// batch is one Append between its check and its commit.
type batch struct {
	ticket uint64
	day    int64
	fresh  map[uint64]struct{} // its new ids
	// dependsOn are earlier in-flight batches whose ids it took for
	// duplicates.
	dependsOn []*batch
	// err is the outcome, set at its turn (read after that turn).
	err error
}

// ErrEarlierBatchFailed is returned by a batch that took the ids of a batch
// that then failed for duplicates: its answer would be wrong; a retry will
// find those ids free. Nothing of the batch was stored.
var ErrEarlierBatchFailed = errors.New("an earlier batch with some of the same event ids failed to commit; retry")

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
	s := &Store{db: db, opts: opts,
		openers: newOpenerCache(trackingv1.EventType_EVENT_TYPE_OPENED),
		actors:  newOpenerCache(trackingv1.EventType_EVENT_TYPE_ACTION),
	}
	s.turn = sync.NewCond(&s.turnMu)
	var runs []int64
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// A run half written when the process stopped is written again.
		if err := tx.DeleteBucket(bucketDedupeStaging); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketDedupeStaging); err != nil {
			return err
		}
		var err error
		runs, err = runDays(tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create buckets: %w", err)
	}
	// No Append runs before Open returns: the coverage is set for real once
	// the partitions are loaded.
	s.cover.Store(newCoverage(minDay, runs))
	memFrom, err := s.sweepDedupe()
	if err != nil {
		return nil, err
	}
	if err := s.loadIDs(); err != nil {
		return nil, err
	}
	// A day with a run lost its partition when an earlier sweep wrote the
	// run. After a longer --dedupe-window than then (or a clock set back),
	// memory would claim days whose ids it does not hold: it covers only
	// the days after the last run.
	if runs := s.cover.Load().runs; len(runs) > 0 {
		memFrom = max(memFrom, slices.Max(runs)+1)
	}
	s.cover.Store(newCoverage(memFrom, s.cover.Load().runs))
	return s, nil
}

// loadIDs fills the sorted past of the in-memory id set from the dedupe
// partitions.
func (s *Store) loadIDs() error {
	byDay := map[int64][]uint64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		dedupe := tx.Bucket(bucketDedupe)
		return dedupe.ForEachBucket(func(name []byte) error {
			day, ok := partitionDay(name)
			if !ok {
				return fmt.Errorf("dedupe partition %x: not a day", name)
			}
			var fps []uint64
			err := dedupe.Bucket(name).ForEach(func(_, v []byte) error {
				if len(v)%8 != 0 {
					return fmt.Errorf("dedupe partition %d: value of %d bytes", day, len(v))
				}
				for i := 0; i < len(v); i += 8 {
					fps = append(fps, binary.BigEndian.Uint64(v[i:]))
				}
				return nil
			})
			byDay[day] = fps
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("load dedupe window: %w", err)
	}
	s.ids.loadPast(byDay)
	return nil
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
// transaction: events whose id was not seen (within the dedupe window, or
// for events older than it, since the day before their event time; see
// Options.Retention) are appended in the given order and counted into the
// aggregates; duplicates, of earlier batches or inside this one, are
// skipped. When Append returns
// without error the new events are durable, and the duplicates' originals
// too. The receive time is the store's clock when Append checks the batch.
func (s *Store) Append(ctx context.Context, tenant string, evs []*trackingv1.Event) (AppendResult, error) {
	_, span := tracer.Start(ctx, "store.Append", trace.WithAttributes(attribute.Int("pushmesh.events", len(evs))))
	defer span.End()
	res := AppendResult{New: make([]bool, len(evs))}
	if len(evs) == 0 {
		return res, nil
	}
	// The costly, independent work runs before any lock, in parallel with
	// other batches.
	fps := fingerprints(tenant, evs)
	encoded := encodeEvents(evs)

	now := s.opts.Now()
	var b *batch
	for b == nil {
		// Late events look their ids up on disk before the lock; check
		// refuses the answer if memory dropped days meanwhile.
		cov := s.cover.Load()
		onDisk, err := s.seenInRuns(cov, evs, fps)
		if err != nil {
			span.RecordError(err)
			return AppendResult{}, fmt.Errorf("look up the ids of late events: %w", err)
		}
		if s.afterLookup != nil {
			s.afterLookup()
		}
		b = s.check(fps, onDisk, cov, now, &res)
	}
	span.SetAttributes(attribute.Int("pushmesh.accepted", res.Accepted), attribute.Int("pushmesh.duplicates", res.Duplicates))

	err := s.inTurn(b, func() error {
		for _, dep := range b.dependsOn {
			if dep.err != nil {
				return ErrEarlierBatchFailed
			}
		}
		if res.Accepted == 0 {
			return nil
		}
		if s.beforeCommit != nil {
			if err := s.beforeCommit(); err != nil {
				return err
			}
		}
		s.openersMu.Lock()
		defer s.openersMu.Unlock()
		err := s.db.Update(func(tx *bolt.Tx) error {
			firstSeq, err := appendEvents(tx.Bucket(bucketEvents), tenant, encoded, res.New, now)
			if err != nil {
				return err
			}
			if err := appendFingerprints(tx.Bucket(bucketDedupe), b.day, tenant, firstSeq, b.fresh); err != nil {
				return err
			}
			opens, openMoves, err := s.openers.mark(tx.Bucket(bucketOpeners), tenant, evs, res.New, firstSeq, now)
			if err != nil {
				return err
			}
			actions, actionMoves, err := s.actors.mark(tx.Bucket(bucketActors), tenant, evs, res.New, firstSeq, now)
			if err != nil {
				return err
			}
			counts := countBatch(evs, res.New, opens, actions)
			// A unique open or action is counted again where the earlier
			// event happened: taken back from where it was.
			for _, c := range openMoves {
				counts.at(c).uniqueOpens--
			}
			for _, c := range actionMoves {
				counts.at(c).uniqueActions--
			}
			return mergeRollups(tx.Bucket(bucketAggregates), tenant, counts)
		})
		if err != nil {
			s.openers.rollback()
			s.actors.rollback()
			return fmt.Errorf("append events: %w", err)
		}
		s.openers.commit()
		s.actors.commit()
		return nil
	})
	if err != nil {
		span.RecordError(err)
		return AppendResult{}, err
	}
	return res, nil
}

// check decides which events are new: not among the ids of the window nor
// found on disk (onDisk, looked up with cov; may be nil) nor of the batches
// in flight, nor repeated earlier in this batch. It records the result in
// res and returns the batch, in flight until inTurn ends; or nil, having
// done nothing, when cov is no longer current: look up again.
func (s *Store) check(fps []uint64, onDisk []bool, cov *coverage, now time.Time, res *AppendResult) *batch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cover.Load() != cov {
		return nil
	}
	b := &batch{ticket: s.issued, day: dayOf(now), fresh: make(map[uint64]struct{}, len(fps))}
	s.issued++
	for i, fp := range fps {
		if _, dup := b.fresh[fp]; dup || s.ids.has(fp) || (onDisk != nil && onDisk[i]) || s.inflightHas(fp, b) {
			res.Duplicates++
			continue
		}
		b.fresh[fp] = struct{}{}
		res.New[i] = true
		res.Accepted++
	}
	s.inflight = append(s.inflight, b)
	return b
}

// inflightHas reports whether a batch in flight has fp as a new id, and
// makes b depend on that batch.
func (s *Store) inflightHas(fp uint64, b *batch) bool {
	for _, other := range s.inflight {
		if _, ok := other.fresh[fp]; ok {
			if !slices.Contains(b.dependsOn, other) {
				b.dependsOn = append(b.dependsOn, other)
			}
			return true
		}
	}
	return false
}

// inTurn runs commit when every batch checked before b is finished, records
// its outcome, and moves b's new ids from in flight to the window if it
// succeeded. Every batch checked must pass here, or later ones wait forever;
// the bookkeeping is deferred so that even a panic in commit releases the
// turn and takes b out of flight.
func (s *Store) inTurn(b *batch, commit func() error) error {
	b.err = errors.New("the commit did not finish")
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.inflight = slices.DeleteFunc(s.inflight, func(x *batch) bool { return x == b })
		if b.err == nil && len(b.fresh) > 0 {
			set := s.ids.openSet(b.day, len(b.fresh))
			for fp := range b.fresh {
				set[fp] = struct{}{}
			}
		}
	}()
	s.turnMu.Lock()
	defer func() {
		s.done++
		s.turn.Broadcast()
		s.turnMu.Unlock()
	}()
	for s.done != b.ticket {
		s.turn.Wait()
	}
	b.err = commit()
	return b.err
}

// appendFingerprints records a batch's new ids in the partition of day.
func appendFingerprints(dedupe *bolt.Bucket, day int64, tenant string, firstSeq uint64, fresh map[uint64]struct{}) error {
	part, err := dedupe.CreateBucketIfNotExists(binary.BigEndian.AppendUint64(nil, uint64(day)))
	if err != nil {
		return err
	}
	part.FillPercent = 0.95
	val := make([]byte, 0, 8*len(fresh))
	for fp := range fresh {
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
