// Package dedupe remembers completed messages by idempotency key, per
// tenant, for a window of days (7 by default), so a repeated key is answered
// with the first outcome instead of being sent again.
//
// Idempotency keys are random, so their index is a random-key write per
// message, the one kind of write bbolt is slow at. It is kept off the send
// path: Remember only adds the record to an in-memory map (which Lookup reads
// first), and a background loop writes the map in big, sorted batches, one
// transaction each. Records live in one nested bucket per UTC day, so expiry
// drops whole buckets instead of scanning keys. A crash loses at most the
// last unflushed batch: those messages may be sent once more, which the
// collapse id (the message id) turns into a replacement on the device rather
// than a duplicate.
package dedupe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

const tracerName = "github.com/pushmesh/pushmesh/deliverysvc/internal/dedupe"

// Config tunes the store. The zero value is usable.
type Config struct {
	// Window is how long keys are remembered; default 7 days, rounded up
	// to whole days.
	Window time.Duration
	// FlushInterval is how often remembered records are written; default
	// 250 ms.
	FlushInterval time.Duration
	// FlushSize writes early when this many records wait; default 20,000.
	FlushSize int
	Logger    *slog.Logger
	Now       func() time.Time
}

// Store is the idempotency store; it implements delivery.Dedupe.
type Store struct {
	db     *bolt.DB
	cfg    Config
	days   int
	tracer trace.Tracer

	flushMu  sync.Mutex // one flush at a time
	mu       sync.Mutex
	pending  map[string][]byte // storeKey → record, not yet written
	flushing map[string][]byte // being written now; still read by Lookup

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// Open returns a store over db (buckets.Dedupe must exist) and starts its
// writer; Close stops it after a last flush.
func Open(db *bolt.DB, cfg Config) *Store {
	if cfg.Window <= 0 {
		cfg.Window = 7 * 24 * time.Hour
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 250 * time.Millisecond
	}
	if cfg.FlushSize <= 0 {
		cfg.FlushSize = 20_000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Store{
		db:      db,
		cfg:     cfg,
		days:    int((cfg.Window + 24*time.Hour - 1) / (24 * time.Hour)),
		tracer:  otel.Tracer(tracerName),
		pending: make(map[string][]byte),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.loop()
	return s
}

// storeKey is the key of a record inside a day bucket.
func storeKey(tenantID, key string) string { return string(boltdb.Key(tenantID, key)) }

func dayName(t time.Time) []byte { return []byte(t.UTC().Format("20060102")) }

// Records are written once per message, so they use a compact binary form
// rather than JSON: a version byte, the message's ids, then each result's
// fields as uvarints and length-prefixed strings.
const recordVersion = 1

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func encode(results []delivery.Result) []byte {
	b := make([]byte, 0, 64+len(results)*160)
	b = append(b, recordVersion)
	var first delivery.Result
	if len(results) > 0 {
		first = results[0]
	}
	b = appendString(b, first.MessageID)
	b = appendString(b, first.JourneyID)
	b = appendString(b, first.TraceParent)
	b = binary.AppendUvarint(b, uint64(len(results)))
	for i := range results {
		r := &results[i]
		b = appendString(b, r.Target.Token)
		b = binary.AppendUvarint(b, uint64(r.Target.Platform))
		b = appendString(b, r.Target.AppID)
		b = appendString(b, r.Target.ProfileID)
		b = binary.AppendUvarint(b, uint64(r.Target.APNsEnvironment))
		b = binary.AppendUvarint(b, uint64(r.Status))
		b = appendString(b, r.GatewayID)
		b = binary.AppendUvarint(b, uint64(r.Reason))
		b = binary.AppendUvarint(b, uint64(r.Exclusion))
		b = appendString(b, r.Detail)
		b = binary.AppendUvarint(b, uint64(r.Attempts))
		b = binary.AppendVarint(b, r.Time.UnixMilli())
		var gt int64
		if !r.GatewayTime.IsZero() {
			gt = r.GatewayTime.UnixMilli()
		}
		b = binary.AppendVarint(b, gt)
	}
	return b
}

// reader decodes a record; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated record")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errors.New("truncated record")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errors.New("truncated record")
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func decode(key string, value []byte) ([]delivery.Result, error) {
	if len(value) == 0 || value[0] != recordVersion {
		return nil, errors.New("unknown record version")
	}
	r := &reader{b: value[1:]}
	messageID, journeyID, traceParent := r.string(), r.string(), r.string()
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)) {
		return nil, errors.New("corrupt record")
	}
	out := make([]delivery.Result, 0, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		res := delivery.Result{IdempotencyKey: key, MessageID: messageID, JourneyID: journeyID, TraceParent: traceParent}
		res.Target.Token = r.string()
		res.Target.Platform = commonv1.Platform(r.uvarint())
		res.Target.AppID = r.string()
		res.Target.ProfileID = r.string()
		res.Target.APNsEnvironment = commonv1.ApnsEnvironment(r.uvarint())
		res.Status = delivery.Status(r.uvarint())
		res.GatewayID = r.string()
		res.Reason = commonv1.FailureReason(r.uvarint())
		res.Exclusion = commonv1.ExclusionReason(r.uvarint())
		res.Detail = r.string()
		res.Attempts = int(r.uvarint())
		res.Time = time.UnixMilli(r.varint())
		if gt := r.varint(); gt != 0 {
			res.GatewayTime = time.UnixMilli(gt)
		}
		out = append(out, res)
	}
	if r.err != nil {
		return nil, r.err
	}
	return out, nil
}

// Remember implements delivery.Dedupe. The record is visible to Lookup at
// once and written with the next batch.
func (s *Store) Remember(ctx context.Context, key string, results []delivery.Result) {
	value := encode(results)
	k := storeKey(tenant.FromContext(ctx), key)
	s.mu.Lock()
	s.pending[k] = value
	n := len(s.pending)
	s.mu.Unlock()
	if n >= s.cfg.FlushSize {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// Lookup implements delivery.Dedupe: memory first, then one read
// transaction over the window's day buckets for the rest.
func (s *Store) Lookup(ctx context.Context, keys []string) (map[string][]delivery.Result, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	tenantID := tenant.FromContext(ctx)
	found := make(map[string][]byte)
	var missing []string
	s.mu.Lock()
	for _, key := range keys {
		k := storeKey(tenantID, key)
		if v, ok := s.pending[k]; ok {
			found[key] = v
		} else if v, ok := s.flushing[k]; ok {
			found[key] = v
		} else {
			missing = append(missing, key)
		}
	}
	s.mu.Unlock()
	if len(missing) > 0 {
		now := s.cfg.Now()
		err := s.db.View(func(tx *bolt.Tx) error {
			root := tx.Bucket(buckets.Dedupe)
			for d := 0; d <= s.days; d++ {
				day := root.Bucket(dayName(now.AddDate(0, 0, -d)))
				if day == nil {
					continue
				}
				for _, key := range missing {
					if _, ok := found[key]; ok {
						continue
					}
					if v := day.Get([]byte(storeKey(tenantID, key))); v != nil {
						found[key] = bytes.Clone(v)
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("dedupe lookup: %w", err)
		}
	}
	if len(found) == 0 {
		return nil, nil
	}
	out := make(map[string][]delivery.Result, len(found))
	for key, v := range found {
		results, err := decode(key, v)
		if err != nil {
			return nil, fmt.Errorf("dedupe record %q: %w", key, err)
		}
		out[key] = results
	}
	return out, nil
}

func (s *Store) loop() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.kick:
		case <-s.stop:
			if err := s.Flush(); err != nil {
				s.cfg.Logger.Error("last idempotency flush failed", "err", err)
			}
			return
		}
		if err := s.Flush(); err != nil {
			s.cfg.Logger.Error("idempotency flush failed; retrying", "err", err)
		}
	}
}

// Flush writes the remembered records now, sorted, in one transaction, and
// drops day buckets older than the window.
func (s *Store) Flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return nil
	}
	batch := s.pending
	s.flushing = batch
	s.pending = make(map[string][]byte, len(batch))
	s.mu.Unlock()

	keys := make([]string, 0, len(batch))
	for k := range batch {
		keys = append(keys, k)
	}
	// Sorted inserts touch each page once, in order: several times faster
	// than random order for a random-key index.
	slices.Sort(keys)
	now := s.cfg.Now()
	_, span := s.tracer.Start(context.Background(), "dedupe.flush", trace.WithAttributes(attribute.Int("pushmesh.records", len(keys))))
	err := s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(buckets.Dedupe)
		day, err := root.CreateBucketIfNotExists(dayName(now))
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := day.Put([]byte(k), batch[k]); err != nil {
				return err
			}
		}
		return s.expire(root, now)
	})
	span.End()

	s.mu.Lock()
	s.flushing = nil
	if err != nil {
		// Keep them for the next try; newer records for the same keys win.
		for k, v := range batch {
			if _, ok := s.pending[k]; !ok {
				s.pending[k] = v
			}
		}
	}
	s.mu.Unlock()
	return err
}

// expire deletes the day buckets that fell out of the window.
func (s *Store) expire(root *bolt.Bucket, now time.Time) error {
	oldest := dayName(now.AddDate(0, 0, -s.days))
	var old [][]byte
	c := root.Cursor()
	for k, v := c.First(); k != nil && bytes.Compare(k, oldest) < 0; k, v = c.Next() {
		if v == nil { // a nested bucket
			old = append(old, bytes.Clone(k))
		}
	}
	for _, k := range old {
		if err := root.DeleteBucket(k); err != nil {
			return err
		}
	}
	return nil
}

// Close writes what is pending and stops the writer.
func (s *Store) Close() error {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	left := len(s.pending)
	s.mu.Unlock()
	if left > 0 {
		return fmt.Errorf("dedupe: %d idempotency records could not be written", left)
	}
	return nil
}
