package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
)

// sweepBlocks bounds one retention transaction (blocks of up to
// eventsPerBlock events), so ingest waits at most one short transaction for
// the sweeper.
const sweepBlocks = 100

// Sweep removes, for every tenant, the events received longer than the
// retention ago, and forgets the event ids no copy of which can be accepted
// any more (moving those of the days leaving the dedupe window from memory to
// sorted runs on disk); aggregates stay. It works in bounded transactions and
// returns how many events it removed.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	ctx, span := tracer.Start(ctx, "store.Sweep")
	defer span.End()
	cutoff := s.opts.Now().Add(-s.opts.Retention)
	removed := 0
	for {
		n, more, err := s.sweepEvents(cutoff)
		removed += n
		if err != nil {
			return removed, err
		}
		if !more {
			break
		}
		if err := ctx.Err(); err != nil {
			return removed, err
		}
	}
	span.SetAttributes(attribute.Int("pushmesh.removed_events", removed))
	_, err := s.sweepDedupe()
	return removed, err
}

// sweepEvents deletes up to sweepBlocks blocks of events received before
// cutoff. Each tenant's blocks are stored in receive order, so its old ones
// are a prefix.
func (s *Store) sweepEvents(cutoff time.Time) (removed int, more bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		c := b.Cursor()
		// Collect first, delete after: deleting under a moving cursor can
		// skip keys in bbolt.
		var doomed [][]byte
		for k, v := c.First(); k != nil; {
			if len(doomed) == sweepBlocks {
				more = true
				break
			}
			received, n, err := blockHeader(v)
			if err != nil {
				return fmt.Errorf("event block %x: %w", k, err)
			}
			if !received.Before(cutoff) {
				// The rest of this tenant is younger: jump past its prefix
				// (tenant ids never contain 0x00 or 0x01).
				sep := bytes.IndexByte(k, 0)
				k, v = c.Seek(append(bytes.Clone(k[:sep]), 1))
				continue
			}
			doomed = append(doomed, bytes.Clone(k))
			removed += n
			k, v = c.Next()
		}
		for _, k := range doomed {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	return removed, more, nil
}

// sweepDedupe moves the ids of the receive days leaving the dedupe window
// from memory to sorted runs on disk (runs.go), if an event received then
// could still be accepted; forgets the runs older than that and the dedupe
// partitions of the days out of memory; seals the ids received lately into
// the sorted past in memory when it is time; and drops idle openers from
// memory. It returns the first receive day whose ids memory holds.
func (s *Store) sweepDedupe() (int64, error) {
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	// Day D holds ids received during [D, D+1); memory needs it while D+1
	// is after now - window. A copy of an event accepted now (event time
	// after now - retention) was received at the earliest the day before
	// its event time: runs are needed from there, and a day of margin
	// covers a clock that moves between the ingester's check and the store.
	now := s.opts.Now()
	firstKept := dayOf(now.Add(-s.opts.DedupeWindow))
	runFloor := dayOf(now.Add(-s.opts.Retention)) - 2

	var parts []int64
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDedupe).ForEachBucket(func(name []byte) error {
			if day, ok := partitionDay(name); ok {
				parts = append(parts, day)
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("list dedupe partitions: %w", err)
	}
	// Memory keeps every day from the first one that could not be written
	// to a run yet.
	memFloor := firstKept
	for _, day := range parts {
		if day >= firstKept {
			break
		}
		if day < runFloor || slices.Contains(s.cover.Load().runs, day) {
			continue
		}
		if s.dayInFlight(day) {
			memFloor = day // its ids are not all on disk yet
			break
		}
		built, err := s.buildRun(day)
		if err != nil {
			return 0, err
		}
		if built {
			s.mu.Lock()
			cov := s.cover.Load()
			runs := append(slices.Clone(cov.runs), day)
			slices.Sort(runs)
			s.cover.Store(newCoverage(cov.memFrom, runs))
			s.mu.Unlock()
		}
	}

	// Runs no accepted event can need any more: out of the coverage first,
	// then off the disk.
	s.mu.Lock()
	cov := s.cover.Load()
	keep := slices.DeleteFunc(slices.Clone(cov.runs), func(d int64) bool { return d < runFloor })
	if len(keep) != len(cov.runs) {
		s.cover.Store(newCoverage(cov.memFrom, keep))
	}
	s.mu.Unlock()
	err = s.db.Update(func(tx *bolt.Tx) error {
		var old [][]byte
		for _, day := range parts {
			if day < memFloor {
				old = append(old, dayKey(day))
			}
		}
		for _, name := range old {
			if err := tx.Bucket(bucketDedupe).DeleteBucket(name); err != nil {
				return err
			}
		}
		for _, day := range cov.runs {
			if day < runFloor {
				if err := tx.Bucket(bucketDedupeRuns).DeleteBucket(dayKey(day)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sweep dedupe partitions: %w", err)
	}

	s.openersMu.Lock()
	s.openers.evictIdle(now.Add(-openerIdle))
	s.actors.evictIdle(now.Add(-openerIdle))
	s.openersMu.Unlock()

	s.mu.Lock()
	job, ok := s.ids.startSeal(dayOf(now), memFloor)
	if ok {
		// Memory drops the days before memFloor from here on: batches
		// look those up in runs.
		cov := s.cover.Load()
		s.cover.Store(newCoverage(max(cov.memFrom, memFloor), cov.runs))
	}
	s.mu.Unlock()
	if ok {
		// Sorting days of ids takes seconds: ingest goes on meanwhile.
		past := job.run()
		s.mu.Lock()
		s.ids.finishSeal(past)
		s.mu.Unlock()
	}
	return memFloor, nil
}

// dayInFlight reports whether a batch checked on day or before is still
// committing: its ids will be written to that day's partition.
func (s *Store) dayInFlight(day int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range s.inflight {
		if b.day <= day {
			return true
		}
	}
	return false
}

// RememberedIDs is how many event ids the dedupe window holds in memory.
func (s *Store) RememberedIDs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids.size()
}
