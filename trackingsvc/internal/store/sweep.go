package store

import (
	"bytes"
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
)

// sweepBlocks bounds one retention transaction (blocks of up to
// eventsPerBlock events), so ingest waits at most one short transaction for
// the sweeper.
const sweepBlocks = 100

// Sweep removes, for every tenant, the events received longer than the
// retention ago, and forgets the event ids received before the dedupe
// window; aggregates stay. It works in bounded transactions and returns how
// many events it removed.
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
	return removed, s.sweepDedupe()
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

// sweepDedupe forgets the event ids received before the dedupe window, on
// disk (whole day partitions) and in memory, where it also seals the ids
// received lately into the sorted past when it is time; and it drops idle
// openers from memory.
func (s *Store) sweepDedupe() error {
	// Day D holds ids received during [D, D+1); it is needed while D+1 is
	// after now - window.
	now := s.opts.Now()
	firstKept := dayOf(now.Add(-s.opts.DedupeWindow))
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDedupe)
		var old [][]byte
		err := b.ForEachBucket(func(name []byte) error {
			if day, ok := partitionDay(name); ok && day < firstKept {
				old = append(old, bytes.Clone(name))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range old {
			if err := b.DeleteBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sweep dedupe partitions: %w", err)
	}

	s.openersMu.Lock()
	s.openers.evictIdle(now.Add(-openerIdle))
	s.openersMu.Unlock()

	s.mu.Lock()
	job, ok := s.ids.startSeal(dayOf(now), firstKept)
	s.mu.Unlock()
	if ok {
		// Sorting days of ids takes seconds: ingest goes on meanwhile.
		past := job.run()
		s.mu.Lock()
		s.ids.finishSeal(past)
		s.mu.Unlock()
	}
	return nil
}

// RememberedIDs is how many event ids the dedupe window holds in memory.
func (s *Store) RememberedIDs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ids.size()
}
