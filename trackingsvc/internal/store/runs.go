package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

// Sorted runs: the event ids of the receive days that left memory, kept on
// disk for as long as a copy of their events can still be accepted.
//
// Memory holds the ids of the dedupe window (Options.DedupeWindow, a week by
// default), but an event is accepted until its event time is older than the
// retention (a month by default): a device back online after two weeks sends
// two-week-old events, and may resend them. So when a receive day leaves the
// window while still within the retention, the sweeper first writes its ids,
// sorted, to the day's own bucket in dedupe-runs: each key is the first
// fingerprint of a chunk of up to runChunk sorted fingerprints, the value the
// chunk. The keys of a fresh bucket go in ascending order, so the writes are
// sequential, once per day, in bounded transactions, off the ingest path.
//
// Only late events read runs: an event's first copy was received at the
// earliest on the day before its event time (event times may be up to 5
// minutes ahead of the clock), so an event whose event day is well inside the
// window is answered from memory alone. A late one costs a B+tree seek per
// run day from the day before its event time to the window.
const (
	runChunk       = 256 // fingerprints per key: 2 KiB values
	runChunksPerTx = 512 // 1 MiB written per build transaction
)

// coverage says where a batch must look for the ids it might repeat. It is
// immutable: the sweeper publishes a new one (under the store's mutex) when
// memory drops days or runs are added or removed, and a batch that looked up
// runs with an older one looks again.
type coverage struct {
	// memFrom: every committed id received on day memFrom or later is in
	// memory (or in flight).
	memFrom int64
	// runs are the days with a sorted run on disk, ascending.
	runs []int64
	// lastRun is the last run day before memFrom (math.MinInt64 if none):
	// an event whose first copy cannot predate it needs no disk.
	lastRun int64
}

func newCoverage(memFrom int64, runs []int64) *coverage {
	c := &coverage{memFrom: memFrom, runs: runs, lastRun: minDay}
	for _, d := range runs {
		if d < memFrom {
			c.lastRun = d
		}
	}
	return c
}

// minDay is before every day.
const minDay = -1 << 62

// earliestReceiveDay is the first receive day a copy of e could have been
// received on: the day before its event time's, since event times may run a
// few minutes ahead of the receiving clock.
func earliestReceiveDay(e *trackingv1.Event) int64 {
	return e.GetEventTime().GetSeconds()/86400 - 1
}

// seenInRuns reports, per event, whether its id is in a run of a day memory
// no longer covers and its first copy could have been received on. It
// returns nil when no event of the batch needs the disk: the usual case.
func (s *Store) seenInRuns(cov *coverage, evs []*trackingv1.Event, fps []uint64) ([]bool, error) {
	if cov.lastRun == minDay {
		return nil, nil
	}
	var late []int
	for i, e := range evs {
		if earliestReceiveDay(e) <= cov.lastRun {
			late = append(late, i)
		}
	}
	if len(late) == 0 {
		return nil, nil
	}
	seen := make([]bool, len(evs))
	err := s.db.View(func(tx *bolt.Tx) error {
		runs := tx.Bucket(bucketDedupeRuns)
		for _, day := range cov.runs {
			if day >= cov.memFrom {
				break
			}
			b := runs.Bucket(dayKey(day))
			if b == nil {
				// Removed since cov was loaded (past the retention): cov
				// is stale and check will have this batch look again.
				continue
			}
			c := b.Cursor()
			for _, i := range late {
				if seen[i] || earliestReceiveDay(evs[i]) > day {
					continue
				}
				found, err := runHas(c, fps[i])
				if err != nil {
					return fmt.Errorf("dedupe run %d: %w", day, err)
				}
				seen[i] = found
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return seen, nil
}

// runHas looks fp up in a run: the chunk whose first fingerprint is the
// last one at or before fp, then a binary search in it.
func runHas(c *bolt.Cursor, fp uint64) (bool, error) {
	key := binary.BigEndian.AppendUint64(make([]byte, 0, 8), fp)
	k, v := c.Seek(key)
	switch {
	case k != nil && bytes.Equal(k, key):
		return true, nil
	case k == nil:
		k, v = c.Last()
	default:
		k, v = c.Prev()
	}
	if k == nil {
		return false, nil
	}
	if len(v)%8 != 0 || len(v) == 0 {
		return false, fmt.Errorf("chunk %x: value of %d bytes", k, len(v))
	}
	n := len(v) / 8
	lo, hi := 0, n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if binary.BigEndian.Uint64(v[8*mid:]) < fp {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo < n && binary.BigEndian.Uint64(v[8*lo:]) == fp, nil
}

// buildRun writes the sorted run of a receive day from its dedupe partition:
// staged in bounded transactions, then moved into dedupe-runs in one, so a
// run is there whole or not at all. A day without ids gets no run. The day
// must have no batch in flight.
func (s *Store) buildRun(day int64) (bool, error) {
	name := dayKey(day)
	var fps []uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		part := tx.Bucket(bucketDedupe).Bucket(name)
		if part == nil {
			return nil
		}
		return part.ForEach(func(_, v []byte) error {
			if len(v)%8 != 0 {
				return fmt.Errorf("dedupe partition %d: value of %d bytes", day, len(v))
			}
			for i := 0; i < len(v); i += 8 {
				fps = append(fps, binary.BigEndian.Uint64(v[i:]))
			}
			return nil
		})
	})
	if err != nil || len(fps) == 0 {
		return false, err
	}
	slices.Sort(fps)
	fps = slices.Compact(fps)

	err = s.db.Update(func(tx *bolt.Tx) error {
		staging := tx.Bucket(bucketDedupeStaging)
		if staging.Bucket(name) != nil {
			return staging.DeleteBucket(name)
		}
		return nil
	})
	for start := 0; err == nil && start < len(fps); start += runChunk * runChunksPerTx {
		part := fps[start:min(start+runChunk*runChunksPerTx, len(fps))]
		err = s.db.Update(func(tx *bolt.Tx) error {
			b, err := tx.Bucket(bucketDedupeStaging).CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			b.FillPercent = 0.95
			for c := 0; c < len(part); c += runChunk {
				chunk := part[c:min(c+runChunk, len(part))]
				val := make([]byte, 0, 8*len(chunk))
				for _, fp := range chunk {
					val = binary.BigEndian.AppendUint64(val, fp)
				}
				if err := b.Put(val[:8], val); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err == nil {
		err = s.db.Update(func(tx *bolt.Tx) error {
			runs := tx.Bucket(bucketDedupeRuns)
			if runs.Bucket(name) != nil {
				if err := runs.DeleteBucket(name); err != nil {
					return err
				}
			}
			return tx.Bucket(bucketDedupeStaging).MoveBucket(name, runs)
		})
	}
	if err != nil {
		return false, fmt.Errorf("dedupe run of day %d: %w", day, err)
	}
	return true, nil
}

// runDays lists the days with a run on disk, ascending.
func runDays(tx *bolt.Tx) ([]int64, error) {
	var days []int64
	err := tx.Bucket(bucketDedupeRuns).ForEachBucket(func(name []byte) error {
		day, ok := partitionDay(name)
		if !ok {
			return fmt.Errorf("dedupe run %x: not a day", name)
		}
		days = append(days, day)
		return nil
	})
	return days, err
}

func dayKey(day int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(day)) }
