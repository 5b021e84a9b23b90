package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Filter selects events or aggregates; empty fields match everything.
type Filter struct {
	JourneyID, MessageID, AppID string
	Platform                    commonv1.Platform
	// From is inclusive, To exclusive; zero means unbounded.
	From, To time.Time
}

// Metrics sums the aggregates matching f: the total, and per bucket of
// width granularity (0: no buckets), oldest first.
func (s *Store) Metrics(ctx context.Context, tenant string, f Filter, granularity time.Duration) (*trackingv1.Metrics, []*trackingv1.MetricsBucket, error) {
	_, span := tracer.Start(ctx, "store.Metrics")
	defer span.End()
	total := &trackingv1.Metrics{}
	buckets := map[int64]*trackingv1.Metrics{}
	// The narrowest prefix the filter allows: tenant, then journey, then
	// message (key order). Other dimensions are checked per key.
	parts := []string{}
	if f.JourneyID != "" {
		parts = append(parts, f.JourneyID)
		if f.MessageID != "" {
			parts = append(parts, f.MessageID)
		}
	}
	prefix := boltdb.Key(tenant, parts...)
	if len(parts) > 0 {
		prefix = append(prefix, 0)
	}
	tp := len(boltdb.TenantPrefix(tenant))
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAggregates).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			journey, message, app, platform, minute, ok := parseAggregateKey(k[tp:])
			if !ok ||
				(f.JourneyID != "" && journey != f.JourneyID) ||
				(f.MessageID != "" && message != f.MessageID) ||
				(f.AppID != "" && app != f.AppID) ||
				(f.Platform != commonv1.Platform_PLATFORM_UNSPECIFIED && platform != f.Platform) {
				continue
			}
			at := unixMinute(minute)
			if (!f.From.IsZero() && at.Before(f.From.Truncate(time.Minute))) || (!f.To.IsZero() && !at.Before(f.To)) {
				continue
			}
			var m trackingv1.Metrics
			if err := proto.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("decode aggregate: %w", err)
			}
			Add(total, &m)
			if granularity > 0 {
				start := at.Truncate(granularity).Unix()
				b := buckets[start]
				if b == nil {
					b = &trackingv1.Metrics{}
					buckets[start] = b
				}
				Add(b, &m)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	Finish(total)
	starts := make([]int64, 0, len(buckets))
	for st := range buckets {
		starts = append(starts, st)
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	out := make([]*trackingv1.MetricsBucket, len(starts))
	for i, st := range starts {
		Finish(buckets[st])
		out[i] = &trackingv1.MetricsBucket{StartTime: timestamppb.New(time.Unix(st, 0)), Metrics: buckets[st]}
	}
	return total, out, nil
}

// maxScanPerPage bounds the events one List call reads, so a selective
// filter over a large store answers with a partial page and a token instead
// of holding a read transaction for minutes.
const maxScanPerPage = 200_000

// List returns up to limit events matching f and types, in the order they
// were stored, after the position in pageToken; the returned token resumes
// after the last event read ("" when the end was reached).
func (s *Store) List(ctx context.Context, tenant string, f Filter, types []trackingv1.EventType, limit int, pageToken string) ([]*trackingv1.Event, string, error) {
	_, span := tracer.Start(ctx, "store.List")
	defer span.End()
	tp := boltdb.TenantPrefix(tenant)
	start := append(append([]byte{}, tp...), be64(0)...)
	if pageToken != "" {
		seq, err := hex.DecodeString(pageToken)
		if err != nil || len(seq) != 8 {
			return nil, "", fault.OnField(ErrBadPageToken, "page_token", "page_token %q was not issued by ListEvents", pageToken)
		}
		start = append(append([]byte{}, tp...), be64(binary.BigEndian.Uint64(seq)+1)...)
	}
	want := map[trackingv1.EventType]bool{}
	for _, t := range types {
		want[t] = true
	}
	var out []*trackingv1.Event
	next := ""
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		scanned := 0
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, tp); k, v = c.Next() {
			scanned++
			e := &trackingv1.Event{}
			if err := proto.Unmarshal(v, e); err != nil {
				return fmt.Errorf("decode event: %w", err)
			}
			if matches(e, f, want) {
				out = append(out, e)
			}
			if len(out) == limit || scanned == maxScanPerPage {
				if nk, _ := c.Next(); nk != nil && bytes.HasPrefix(nk, tp) {
					next = hex.EncodeToString(k[len(tp):])
				}
				return nil
			}
		}
		return nil
	})
	return out, next, err
}

func matches(e *trackingv1.Event, f Filter, types map[trackingv1.EventType]bool) bool {
	t := e.GetEventTime().AsTime()
	return (f.JourneyID == "" || e.GetJourneyId() == f.JourneyID) &&
		(f.MessageID == "" || e.GetMessageId() == f.MessageID) &&
		(f.AppID == "" || e.GetAppId() == f.AppID) &&
		(f.Platform == commonv1.Platform_PLATFORM_UNSPECIFIED || e.GetPlatform() == f.Platform) &&
		(f.From.IsZero() || !t.Before(f.From)) &&
		(f.To.IsZero() || t.Before(f.To)) &&
		(len(types) == 0 || types[e.GetType()])
}

// sweepBatch bounds one retention transaction.
const sweepBatch = 10_000

// Sweep removes, for every tenant, events received before cutoff and dedupe
// partitions whose hour ended before dedupeCutoff; aggregates stay. It works
// in bounded transactions and returns how many events it removed.
func (s *Store) Sweep(ctx context.Context, cutoff, dedupeCutoff time.Time) (int, error) {
	removed := 0
	for {
		n, more, err := s.sweepEvents(cutoff)
		removed += n
		if err != nil || !more {
			if err == nil {
				err = s.sweepDedupe(dedupeCutoff)
			}
			return removed, err
		}
		if ctx.Err() != nil {
			return removed, ctx.Err()
		}
	}
}

// sweepEvents deletes up to sweepBatch old events. Events are appended in
// receive order per tenant, so each tenant's old events are a prefix.
func (s *Store) sweepEvents(cutoff time.Time) (removed int, more bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		c := b.Cursor()
		// Collect first, delete after: deleting under a moving cursor can
		// skip keys in bbolt.
		var doomed [][]byte
		for k, v := c.First(); k != nil; {
			if len(doomed) == sweepBatch {
				more = true
				break
			}
			var e trackingv1.Event
			if err := proto.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode event: %w", err)
			}
			if !e.GetReceiveTime().AsTime().Before(cutoff) {
				// The rest of this tenant is younger: jump to the next tenant.
				sep := bytes.IndexByte(k, 0)
				k, v = c.Seek(append(append([]byte{}, k[:sep]...), 1))
				continue
			}
			doomed = append(doomed, append([]byte{}, k...))
			k, v = c.Next()
		}
		for _, k := range doomed {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		removed = len(doomed)
		return nil
	})
	return removed, more, err
}

// sweepDedupe drops dedupe partitions older than cutoff.
func (s *Store) sweepDedupe(cutoff time.Time) error {
	limit := uint64(cutoff.Unix() / 3600)
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDedupe)
		var old [][]byte
		err := b.ForEachBucket(func(name []byte) error {
			if len(name) >= 9 && binary.BigEndian.Uint64(name[len(name)-8:]) < limit {
				old = append(old, append([]byte{}, name...))
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
}
