// Package store keeps trackingsvc's events and the aggregates derived from
// them in bbolt.
//
// Layout (every key starts with the tenant, see boltdb.TenantPrefix):
//
//	events      tenant|seq(8)                               → Event (protobuf)
//	dedupe      nested bucket tenant|hour(8) of the event time:
//	            event_id                                    → seq(8)
//	aggregates  tenant|journey|message|app|platform(1)|minute(8) → Metrics (protobuf)
//	openers     tenant|journey|message|profile-or-token     → 1
//
// Events append under a sequence, so ingest writes sequential keys. The
// dedupe index is partitioned by the hour of the event time: a retried event
// carries the same event time, so one lookup in one small tree finds it, and
// retention drops whole partitions. Aggregates are per minute and per
// dimension tuple, maintained in the same transaction as the events, so a
// metrics query reads aggregates only, never events.
package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/protobuf/proto"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
)

var tracer = otel.Tracer("github.com/pushmesh/pushmesh/trackingsvc/internal/store")

// The buckets, created on Open.
var (
	bucketEvents     = []byte("events")
	bucketDedupe     = []byte("dedupe")
	bucketAggregates = []byte("aggregates")
	bucketOpeners    = []byte("openers")
	allBuckets       = [][]byte{bucketEvents, bucketDedupe, bucketAggregates, bucketOpeners}
)

// ErrBadPageToken is a page token this store did not issue.
var ErrBadPageToken = errors.New("invalid page token")

// Store is the event store.
type Store struct {
	db *bolt.DB
}

// Open creates the buckets if needed.
func Open(db *bolt.DB) (*Store, error) {
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
	return &Store{db: db}, nil
}

// AppendResult counts what Append stored.
type AppendResult struct {
	Accepted   int
	Duplicates int
	// New reports, per input index, whether the event was stored (false:
	// a duplicate).
	New []bool
}

// Append stores valid, prepared events in one transaction: events not seen
// before (by event id) are appended and counted into the aggregates;
// duplicates, within the batch or of earlier batches, are skipped.
func (s *Store) Append(ctx context.Context, tenant string, evs []*trackingv1.Event) (AppendResult, error) {
	_, span := tracer.Start(ctx, "store.Append")
	defer span.End()
	span.SetAttributes(attribute.Int("events", len(evs)))
	res := AppendResult{New: make([]bool, len(evs))}
	if len(evs) == 0 {
		return res, nil
	}
	// Visit events sorted by dedupe partition and id: sorted keys make
	// bbolt's random inserts much cheaper, and in-batch duplicates adjacent.
	order := make([]int, len(evs))
	for i := range order {
		order[i] = i
	}
	hours := make([]int64, len(evs))
	for i, e := range evs {
		hours[i] = e.GetEventTime().GetSeconds() / 3600
	}
	sort.Slice(order, func(a, b int) bool {
		ia, ib := order[a], order[b]
		if hours[ia] != hours[ib] {
			return hours[ia] < hours[ib]
		}
		return evs[ia].GetEventId() < evs[ib].GetEventId()
	})

	err := s.db.Update(func(tx *bolt.Tx) error {
		res.Accepted, res.Duplicates = 0, 0
		clear(res.New)
		dedupe := tx.Bucket(bucketDedupe)
		events := tx.Bucket(bucketEvents)
		openers := tx.Bucket(bucketOpeners)
		deltas := map[string]*trackingv1.Metrics{}
		var part *bolt.Bucket
		partHour := int64(-1)
		tp := boltdb.TenantPrefix(tenant)
		for _, i := range order {
			e := evs[i]
			if hours[i] != partHour {
				name := append(append([]byte{}, tp...), be64(uint64(hours[i]))...)
				var err error
				if part, err = dedupe.CreateBucketIfNotExists(name); err != nil {
					return err
				}
				partHour = hours[i]
			}
			id := []byte(e.GetEventId())
			// The partition sees this transaction's own writes, so an id
			// repeated inside the batch is caught here too.
			if part.Get(id) != nil {
				res.Duplicates++
				continue
			}
			seq, err := events.NextSequence()
			if err != nil {
				return err
			}
			val, err := proto.Marshal(e)
			if err != nil {
				return err
			}
			key := append(append([]byte{}, tp...), be64(seq)...)
			if err := events.Put(key, val); err != nil {
				return err
			}
			if err := part.Put(id, be64(seq)); err != nil {
				return err
			}
			unique := false
			if e.GetType() == trackingv1.EventType_EVENT_TYPE_OPENED {
				who := e.GetProfileId()
				if who == "" {
					who = "t:" + e.GetTokenHash()
				}
				ok := boltdb.Key(tenant, e.GetJourneyId(), e.GetMessageId(), who)
				if openers.Get(ok) == nil {
					unique = true
					if err := openers.Put(ok, []byte{1}); err != nil {
						return err
					}
				}
			}
			ak := string(aggregateKey(tenant, e))
			m := deltas[ak]
			if m == nil {
				m = &trackingv1.Metrics{}
				deltas[ak] = m
			}
			count(m, e, unique)
			res.New[i] = true
			res.Accepted++
		}
		return mergeAggregates(tx.Bucket(bucketAggregates), deltas)
	})
	if err != nil {
		return AppendResult{}, fmt.Errorf("append events: %w", err)
	}
	return res, nil
}

// mergeAggregates adds deltas into the stored aggregates, in key order.
func mergeAggregates(b *bolt.Bucket, deltas map[string]*trackingv1.Metrics) error {
	keys := make([]string, 0, len(deltas))
	for k := range deltas {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m := deltas[k]
		if old := b.Get([]byte(k)); old != nil {
			var stored trackingv1.Metrics
			if err := proto.Unmarshal(old, &stored); err != nil {
				return fmt.Errorf("decode aggregate: %w", err)
			}
			Add(m, &stored)
		}
		val, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(k), val); err != nil {
			return err
		}
	}
	return nil
}

// aggregateKey is tenant|journey|message|app|platform|minute.
func aggregateKey(tenant string, e *trackingv1.Event) []byte {
	k := boltdb.Key(tenant, e.GetJourneyId(), e.GetMessageId(), e.GetAppId())
	k = append(k, 0, byte(e.GetPlatform()), 0)
	return append(k, be64(uint64(e.GetEventTime().GetSeconds()/60))...)
}

// parseAggregateKey splits a key made by aggregateKey (after the tenant).
func parseAggregateKey(rest []byte) (journey, message, app string, platform commonv1.Platform, minute int64, ok bool) {
	parts := bytes.SplitN(rest, []byte{0}, 4)
	if len(parts) != 4 || len(parts[3]) != 1+1+8 {
		return "", "", "", 0, 0, false
	}
	tail := parts[3]
	return string(parts[0]), string(parts[1]), string(parts[2]), commonv1.Platform(tail[0]), int64(binary.BigEndian.Uint64(tail[2:])), true
}

func be64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// count adds one event to m.
func count(m *trackingv1.Metrics, e *trackingv1.Event, uniqueOpen bool) {
	switch e.GetType() {
	case trackingv1.EventType_EVENT_TYPE_SENT:
		m.Sent++
		m.Targeted++
	case trackingv1.EventType_EVENT_TYPE_FAILED:
		m.Failed++
		m.Targeted++
		m.FailedByReason = addFailure(m.FailedByReason, e.GetFailureReason(), 1)
	case trackingv1.EventType_EVENT_TYPE_EXCLUDED:
		m.Excluded++
		m.ExcludedByReason = addExclusion(m.ExcludedByReason, e.GetExclusionReason(), 1)
	case trackingv1.EventType_EVENT_TYPE_RECEIVED:
		m.Received++
	case trackingv1.EventType_EVENT_TYPE_OPENED:
		m.Opened++
		if uniqueOpen {
			m.UniqueOpens++
		}
	case trackingv1.EventType_EVENT_TYPE_DISMISSED:
		m.Dismissed++
	case trackingv1.EventType_EVENT_TYPE_ACTION:
		m.Actions++
		m.ActionsById = addAction(m.ActionsById, e.GetActionId(), 1)
	}
}

// Add adds src's counters into dst (rates are derived later, by Finish).
func Add(dst, src *trackingv1.Metrics) {
	dst.Targeted += src.GetTargeted()
	dst.Sent += src.GetSent()
	dst.Failed += src.GetFailed()
	dst.Excluded += src.GetExcluded()
	dst.Received += src.GetReceived()
	dst.Opened += src.GetOpened()
	dst.UniqueOpens += src.GetUniqueOpens()
	dst.Dismissed += src.GetDismissed()
	dst.Actions += src.GetActions()
	for _, f := range src.GetFailedByReason() {
		dst.FailedByReason = addFailure(dst.FailedByReason, f.GetReason(), f.GetCount())
	}
	for _, x := range src.GetExcludedByReason() {
		dst.ExcludedByReason = addExclusion(dst.ExcludedByReason, x.GetReason(), x.GetCount())
	}
	for _, a := range src.GetActionsById() {
		dst.ActionsById = addAction(dst.ActionsById, a.GetActionId(), a.GetCount())
	}
}

// Finish derives the rates and orders the breakdowns.
func Finish(m *trackingv1.Metrics) {
	if m.GetSent() > 0 {
		m.OpenRate = float64(m.GetOpened()) / float64(m.GetSent())
		m.ActionRate = float64(m.GetActions()) / float64(m.GetSent())
	}
	sort.Slice(m.FailedByReason, func(i, j int) bool { return m.FailedByReason[i].GetReason() < m.FailedByReason[j].GetReason() })
	sort.Slice(m.ExcludedByReason, func(i, j int) bool { return m.ExcludedByReason[i].GetReason() < m.ExcludedByReason[j].GetReason() })
	sort.Slice(m.ActionsById, func(i, j int) bool { return m.ActionsById[i].GetActionId() < m.ActionsById[j].GetActionId() })
}

func addFailure(list []*commonv1.FailureCount, r commonv1.FailureReason, n int64) []*commonv1.FailureCount {
	for _, f := range list {
		if f.GetReason() == r {
			f.Count += n
			return list
		}
	}
	return append(list, &commonv1.FailureCount{Reason: r, Count: n})
}

func addExclusion(list []*commonv1.ExclusionCount, r commonv1.ExclusionReason, n int64) []*commonv1.ExclusionCount {
	for _, x := range list {
		if x.GetReason() == r {
			x.Count += n
			return list
		}
	}
	return append(list, &commonv1.ExclusionCount{Reason: r, Count: n})
}

func addAction(list []*trackingv1.ActionCount, id string, n int64) []*trackingv1.ActionCount {
	for _, a := range list {
		if a.GetActionId() == id {
			a.Count += n
			return list
		}
	}
	return append(list, &trackingv1.ActionCount{ActionId: id, Count: n})
}

// unixMinute converts a minute index back to a time.
func unixMinute(m int64) time.Time { return time.Unix(m*60, 0).UTC() }
