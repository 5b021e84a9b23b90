package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// A level is one size of aggregate bucket, each in its own key space. A query
// reads whole days where it can, hours at the edges, minutes at the very
// edges: a range of a year costs a few hundred keys, not half a million.
type level struct {
	tag   byte
	width int64 // seconds
}

var levels = [...]level{{'m', 60}, {'h', 3600}, {'d', 86400}}

// Bits of a rollup mask: which filter dimensions a rollup keeps. Every event
// is counted under all 16 masks, so any filter the API allows is one exact
// key prefix.
const (
	dimJourney = 1 << iota
	dimMessage
	dimApp
	dimPlatform
	numMasks = 16
)

// dims are the filter dimensions of an event or a query.
type dims struct {
	journey, message, app string
	platform              commonv1.Platform
}

// mask is the rollup holding exactly the non-empty dimensions of d.
func (d dims) mask() byte {
	var m byte
	if d.journey != "" {
		m |= dimJourney
	}
	if d.message != "" {
		m |= dimMessage
	}
	if d.app != "" {
		m |= dimApp
	}
	if d.platform != commonv1.Platform_PLATFORM_UNSPECIFIED {
		m |= dimPlatform
	}
	return m
}

// rollupPrefix is tenant|level|mask|the dimensions of d that mask keeps.
// Dimensions are length-prefixed, so for one mask the prefix identifies the
// dimension values exactly and only the 8-byte bucket start follows.
func rollupPrefix(dst []byte, tenant string, lvl byte, mask byte, d dims) []byte {
	dst = append(append(dst, tenant...), 0, lvl, mask)
	if mask&dimJourney != 0 {
		dst = appendString(dst, d.journey)
	}
	if mask&dimMessage != 0 {
		dst = appendString(dst, d.message)
	}
	if mask&dimApp != 0 {
		dst = appendString(dst, d.app)
	}
	if mask&dimPlatform != 0 {
		dst = append(dst, byte(d.platform))
	}
	return dst
}

// cell is one event's place in the finest aggregate: its dimensions and the
// start of its minute (unix seconds).
type cell struct {
	dims
	minute int64
}

// cellCounts are a batch's counts per cell.
type cellCounts map[cell]*tally

// at returns the tally of c, made if new.
func (cc cellCounts) at(c cell) *tally {
	t := cc[c]
	if t == nil {
		t = &tally{}
		cc[c] = t
	}
	return t
}

// countBatch counts the new events per cell. opens and actions (either may
// be nil) mark the unique opens and unique actions (see openerCache.mark).
func countBatch(evs []*trackingv1.Event, isNew, opens, actions []bool) cellCounts {
	out := cellCounts{}
	for i, e := range evs {
		if !isNew[i] {
			continue
		}
		sec := e.GetEventTime().GetSeconds()
		c := cell{dims{e.GetJourneyId(), e.GetMessageId(), e.GetAppId(), e.GetPlatform()}, sec - sec%60}
		out.at(c).count(e, (opens != nil && opens[i]) || (actions != nil && actions[i]))
	}
	return out
}

// mergeRollups adds a batch's counts into every rollup and level they
// belong to, reading and writing each stored aggregate once, in key order.
func mergeRollups(b *bolt.Bucket, tenant string, counts cellCounts) error {
	deltas := map[string]*tally{}
	var key []byte
	for c, t := range counts {
		for mask := byte(0); mask < numMasks; mask++ {
			for _, l := range levels {
				key = rollupPrefix(key[:0], tenant, l.tag, mask, c.dims)
				key = binary.BigEndian.AppendUint64(key, uint64(c.minute-c.minute%l.width))
				d := deltas[string(key)]
				if d == nil {
					d = &tally{}
					deltas[string(key)] = d
				}
				d.add(t)
			}
		}
	}
	keys := make([]string, 0, len(deltas))
	for k := range deltas {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var arena []byte
	for _, k := range keys {
		d := deltas[k]
		if old := b.Get([]byte(k)); old != nil {
			if err := d.addEncoded(old); err != nil {
				return fmt.Errorf("aggregate %x: %w", k, err)
			}
		}
		// A unique open moved out of this cell was counted in it: the sum
		// cannot go below zero but for a corrupt store, and must not wrap.
		d.uniqueOpens = max(d.uniqueOpens, 0)
		d.uniqueActions = max(d.uniqueActions, 0)
		// bbolt keeps values until commit: carve them from a shared arena.
		if cap(arena)-len(arena) < 512 {
			arena = make([]byte, 0, 256<<10)
		}
		start := len(arena)
		arena = d.appendTo(arena)
		if err := b.Put([]byte(k), arena[start:len(arena):len(arena)]); err != nil {
			return err
		}
	}
	return nil
}

// Filter selects events or aggregates; empty fields match everything.
type Filter struct {
	JourneyID, MessageID, AppID string
	Platform                    commonv1.Platform
	// From is inclusive, To exclusive (event time); zero means unbounded.
	From, To time.Time
}

func (f Filter) dims() dims {
	return dims{f.JourneyID, f.MessageID, f.AppID, f.Platform}
}

// openEnd stands for "no end": far beyond any event time, minute-aligned
// and far from overflowing.
const openEnd = 1 << 50 * 60

// levelName names a granularity in messages.
var levelName = map[time.Duration]string{time.Minute: "minute", time.Hour: "hour", 24 * time.Hour: "day"}

// Granularities Metrics accepts: 0 (totals only), a minute, an hour, a day.
var granularities = map[time.Duration]int{0: len(levels) - 1, time.Minute: 0, time.Hour: 1, 24 * time.Hour: 2}

// MaxBuckets is the most buckets Metrics returns: a week by minute, more
// than a year by hour. A bucket is typically 50 to 200 bytes in a response,
// so an answer stays well under gRPC's default 4 MiB limit on what a client
// receives; a query that would return more is refused (ErrTooManyBuckets)
// as soon as its scan finds one bucket more, so the server never holds more
// either.
const MaxBuckets = 10_000

// ErrTooManyBuckets is a metrics query whose answer would hold more than
// MaxBuckets buckets with events: narrow the range or coarsen the
// granularity.
var ErrTooManyBuckets = errors.New("too many buckets")

// Metrics sums the aggregates matching f: the total, and the non-empty
// buckets of width granularity (0: none), oldest first. Time is resolved to
// the minute: the range is widened to whole minutes (From rounded down, To
// rounded up). Day buckets are UTC days. More than MaxBuckets non-empty
// buckets is ErrTooManyBuckets, on the field start_time.
func (s *Store) Metrics(ctx context.Context, tenant string, f Filter, granularity time.Duration) (*trackingv1.Metrics, []*trackingv1.MetricsBucket, error) {
	_, span := tracer.Start(ctx, "store.Metrics", trace.WithAttributes(attribute.String("pushmesh.granularity", granularity.String())))
	defer span.End()
	top, ok := granularities[granularity]
	if !ok {
		return nil, nil, fmt.Errorf("granularity %s: want 0, a minute, an hour or a day", granularity)
	}
	// An unset end means now; events may carry times up to a few minutes
	// ahead of this clock (device clocks drift), so "now" is open-ended.
	from, to := int64(0), int64(openEnd)
	if !f.From.IsZero() {
		from = max(f.From.Unix(), 0)
	}
	if !f.To.IsZero() {
		to = f.To.Unix()
		if f.To.Nanosecond() > 0 {
			to++
		}
	}
	from -= from % 60
	if to%60 != 0 {
		to += 60 - to%60
	}

	total := &tally{}
	width := int64(granularity / time.Second)
	buckets := map[int64]*tally{}
	d := f.dims()
	mask := d.mask()
	var prefix []byte
	reads := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAggregates).Cursor()
		for _, sc := range plan(from, to, top) {
			prefix = rollupPrefix(prefix[:0], tenant, levels[sc.level].tag, mask, d)
			seek := binary.BigEndian.AppendUint64(bytes.Clone(prefix), uint64(sc.from))
			for k, v := c.Seek(seek); k != nil && len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix); k, v = c.Next() {
				start := int64(binary.BigEndian.Uint64(k[len(prefix):]))
				if start >= sc.to {
					break
				}
				reads++
				if err := total.addEncoded(v); err != nil {
					return fmt.Errorf("aggregate %x: %w", k, err)
				}
				if width > 0 {
					bs := start - start%width
					b := buckets[bs]
					if b == nil {
						if len(buckets) == MaxBuckets {
							return fault.OnField(ErrTooManyBuckets, "start_time",
								"the range holds more than %d %s buckets with events: narrow it (start_time, end_time) or use a coarser granularity",
								MaxBuckets, levelName[granularity])
						}
						b = &tally{}
						buckets[bs] = b
					}
					if err := b.addEncoded(v); err != nil {
						return fmt.Errorf("aggregate %x: %w", k, err)
					}
				}
			}
		}
		return nil
	})
	span.SetAttributes(attribute.Int("pushmesh.aggregates_read", reads))
	if err != nil {
		return nil, nil, err
	}
	starts := make([]int64, 0, len(buckets))
	for st := range buckets {
		starts = append(starts, st)
	}
	slices.Sort(starts)
	out := make([]*trackingv1.MetricsBucket, len(starts))
	for i, st := range starts {
		out[i] = &trackingv1.MetricsBucket{StartTime: timestamppb.New(time.Unix(st, 0)), Metrics: buckets[st].metrics()}
	}
	return total.metrics(), out, nil
}

// scan is one range of bucket starts [from, to) to read at one level.
type scan struct {
	level    int
	from, to int64
}

// plan covers the minute-aligned range [from, to) with the fewest buckets,
// using levels up to top: whole top-level buckets in the middle, finer ones
// at the edges.
func plan(from, to int64, top int) []scan {
	if from >= to {
		return nil
	}
	if top == 0 {
		return []scan{{0, from, to}}
	}
	w := levels[top].width
	a := from + (w-from%w)%w // first boundary at or after from
	b := to - to%w           // last boundary at or before to
	if a >= b {
		return plan(from, to, top-1)
	}
	out := plan(from, a, top-1)
	out = append(out, scan{top, a, b})
	return append(out, plan(b, to, top-1)...)
}
