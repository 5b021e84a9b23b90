// Package outbox is a durable queue in a bbolt bucket: records are appended
// with sequential keys (per tenant) and forwarded in order, in batches, to a
// remote service; a record is deleted only after the remote acknowledged it.
// When the remote is down records wait and the forwarder retries with
// backoff; nothing is lost across restarts. A batch acknowledged but not yet
// deleted before a crash is forwarded again, so the remote must deduplicate
// (deliverysvc gives every record a deterministic id).
//
// Appends are group-committed: concurrent Append calls share one
// transaction, so the cost of a durable commit is paid once per batch rather
// than once per record, and each tenant's records of a group are stored as
// one value (length-prefixed records) under one sequential key, so bbolt
// does one put per group, not one per record.
package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

const tracerName = "github.com/pushmesh/pushmesh/deliverysvc/internal/outbox"

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("outbox closed")

// Deliver forwards one tenant's records, in order. It returns nil once the
// remote has them; any error means "try again later".
type Deliver func(ctx context.Context, tenant string, records [][]byte) error

// Config tunes an outbox. The zero value is usable.
type Config struct {
	// Name is used in logs and spans, e.g. "tracking".
	Name string
	// BatchSize bounds the records handed to one Deliver call; default
	// 5,000.
	BatchSize int
	// CommitLinger is how long a group commit waits for more appends
	// after its first; default 20 ms.
	CommitLinger time.Duration
	// Interval is the least time between two forwarding rounds while the
	// remote is up, so records travel in few big batches (and their deletes
	// in few commits) rather than one small batch per append; default
	// 50 ms. A full BatchSize waiting starts a round at once.
	Interval time.Duration
	// RetryInitial and RetryMax bound the wait after a failed Deliver;
	// default 200 ms and 10 s.
	RetryInitial time.Duration
	RetryMax     time.Duration
	// DeliverTimeout bounds one Deliver call; default DefaultDeliverTimeout.
	// A remote that accepts a batch but never answers fails the call at
	// this deadline, which is logged and retried with backoff like any
	// other failure, instead of stalling the outbox forever.
	DeliverTimeout time.Duration
	Logger         *slog.Logger
}

// DefaultDeliverTimeout is Config.DeliverTimeout's default: far longer than a
// healthy remote takes for a full batch.
const DefaultDeliverTimeout = 30 * time.Second

// Outbox is one durable queue. Start runs its forwarder; Close stops it.
type Outbox struct {
	db      *bolt.DB
	bucket  []byte
	deliver Deliver
	cfg     Config
	log     *slog.Logger
	tracer  trace.Tracer

	appends chan *appendReq
	wake    chan struct{}
	full    chan struct{} // a BatchSize of records is waiting
	waiting atomic.Int64  // records appended since the last round began
	// backlog counts the records in the bucket: counted once by New, then
	// kept by the writer (around a commit) and the forwarder (after a
	// delete), so Backlog costs a load rather than a scan. It is never
	// below the truth.
	backlog atomic.Int64

	mu     sync.RWMutex // held for reading by Append, for writing by Close
	closed bool

	writerDone chan struct{}
	fwdStop    context.CancelFunc
	fwdDone    chan struct{}
}

type appendReq struct {
	tenant  string
	records [][]byte
	done    func(error)
}

// New returns an outbox over bucket (which must exist) and starts its
// writer. Call Start to forward. It counts the records left from an earlier
// run, which reads the bucket once (a backlog of millions of records,
// after a long outage of the remote, takes a second or two).
func New(db *bolt.DB, bucket []byte, deliver Deliver, cfg Config) *Outbox {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 5000
	}
	if cfg.CommitLinger <= 0 {
		cfg.CommitLinger = 20 * time.Millisecond
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 50 * time.Millisecond
	}
	if cfg.RetryInitial <= 0 {
		cfg.RetryInitial = 200 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryInitial {
		cfg.RetryMax = max(10*time.Second, cfg.RetryInitial)
	}
	if cfg.DeliverTimeout <= 0 {
		cfg.DeliverTimeout = DefaultDeliverTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	o := &Outbox{
		db:         db,
		bucket:     bucket,
		deliver:    deliver,
		cfg:        cfg,
		log:        cfg.Logger.With("outbox", cfg.Name),
		tracer:     otel.Tracer(tracerName),
		appends:    make(chan *appendReq, 1024),
		wake:       make(chan struct{}, 1),
		full:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
	}
	// Before the writer starts, so no commit races the count.
	o.backlog.Store(o.countReadable())
	go o.writer()
	return o
}

// Append stores records for the tenant of ctx and returns once they are
// durable.
func (o *Outbox) Append(ctx context.Context, records [][]byte) error {
	done := make(chan error, 1)
	o.AppendAsync(ctx, records, func(err error) { done <- err })
	// Not abandoned on ctx's end: the caller's records are in the queue and
	// will be written; waiting keeps "durable when Append returns" true.
	return <-done
}

// AppendAsync stores records for the tenant of ctx and calls done once they
// are durable, or failed to be: exactly once, on the outbox's writer
// goroutine right after the commit (before AppendAsync returns when records
// is empty or the outbox is closed). done must not block: it holds up the
// next commit. The caller's goroutine does not wait for the group commit,
// which lingers (see writer): a pipeline that blocked its workers on it
// would leave the CPU idle while every worker waits for the same commit.
func (o *Outbox) AppendAsync(ctx context.Context, records [][]byte, done func(error)) {
	if len(records) == 0 {
		done(nil)
		return
	}
	req := &appendReq{tenant: tenant.FromContext(ctx), records: records, done: done}
	o.mu.RLock()
	if o.closed {
		o.mu.RUnlock()
		done(ErrClosed)
		return
	}
	o.appends <- req
	o.mu.RUnlock()
}

// maxGroup bounds the records of one group commit.
const maxGroup = 20_000

// writer group-commits appends until Close. A group gathers appends for up
// to CommitLinger after its first one: a durable commit costs two fsyncs
// whatever its size, so fewer, bigger commits save most of the CPU the
// disk would otherwise take, for a few milliseconds of latency.
func (o *Outbox) writer() {
	defer close(o.writerDone)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for first := range o.appends {
		group := []*appendReq{first}
		n := len(first.records)
		linger.Reset(o.cfg.CommitLinger)
	more:
		for n < maxGroup {
			select {
			case req, ok := <-o.appends:
				if !ok {
					break more
				}
				group = append(group, req)
				n += len(req.records)
			case <-linger.C:
				break more
			}
		}
		linger.Stop()
		// Counted before the commit, and taken back if it fails: once
		// committed, the records can be forwarded and subtracted by the
		// forwarder before this goroutine would get to add them, and the
		// backlog would dip below the truth, even below zero. Before done
		// too: a caller that saw its records durable sees them counted.
		o.backlog.Add(int64(n))
		err := o.write(group)
		if err != nil {
			o.backlog.Add(-int64(n))
		}
		for _, req := range group {
			req.done(err)
		}
		if err == nil {
			o.poke()
			if o.waiting.Add(int64(n)) >= int64(o.cfg.BatchSize) {
				select {
				case o.full <- struct{}{}:
				default:
				}
			}
		}
	}
}

// maxValueRecords bounds the records stored under one key, so a forwarded
// batch never overshoots BatchSize by much.
const maxValueRecords = 2000

func (o *Outbox) write(group []*appendReq) error {
	// One value per tenant (and per maxValueRecords records), in append
	// order. A first pass sizes the values, so each is allocated once: a
	// group holds up to maxGroup records, which a growing slice would copy
	// about twice over.
	type value struct {
		tenant string
		n      int // records
		size   int // bytes
		data   []byte
	}
	var values []*value
	var dest []*value // each record's value, in group order
	open := make(map[string]*value, 1)
	for _, req := range group {
		for _, rec := range req.records {
			v := open[req.tenant]
			if v == nil || v.n == maxValueRecords {
				v = &value{tenant: req.tenant}
				open[req.tenant] = v
				values = append(values, v)
			}
			v.n++
			v.size += uvarintLen(len(rec)) + len(rec)
			dest = append(dest, v)
		}
	}
	i := 0
	for _, req := range group {
		for _, rec := range req.records {
			v := dest[i]
			i++
			if v.data == nil {
				v.data = make([]byte, 0, v.size)
			}
			v.data = binary.AppendUvarint(v.data, uint64(len(rec)))
			v.data = append(v.data, rec...)
		}
	}
	_, span := o.tracer.Start(context.Background(), "outbox.commit", trace.WithAttributes(
		attribute.String("pushmesh.outbox", o.cfg.Name), attribute.Int("pushmesh.appends", len(group)), attribute.Int("pushmesh.values", len(values))))
	defer span.End()
	return o.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(o.bucket)
		// Keys only grow within a tenant: pack pages full.
		b.FillPercent = 0.95
		for _, v := range values {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			prefix := boltdb.TenantPrefix(v.tenant)
			if err := b.Put(binary.BigEndian.AppendUint64(prefix, seq), v.data); err != nil {
				return fmt.Errorf("outbox %s: %w", o.cfg.Name, err)
			}
		}
		return nil
	})
}

// uvarintLen is the length of n as binary.AppendUvarint writes it.
func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

// splitRecords reads the length-prefixed records of a stored value.
func splitRecords(value []byte, dst [][]byte) ([][]byte, error) {
	for len(value) > 0 {
		n, k := binary.Uvarint(value)
		if k <= 0 || n > uint64(len(value)-k) {
			return dst, errors.New("corrupt outbox value")
		}
		dst = append(dst, value[k:k+int(n)])
		value = value[k+int(n):]
	}
	return dst, nil
}

func (o *Outbox) poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Start runs the forwarder until Close.
func (o *Outbox) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	o.fwdStop = cancel
	o.fwdDone = make(chan struct{})
	go o.forward(ctx)
}

// forward delivers batches while there are records, then sleeps until an
// append or a retry is due.
func (o *Outbox) forward(ctx context.Context) {
	defer close(o.fwdDone)
	wait := o.cfg.RetryInitial
	failing := false
	for {
		err := o.drain(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				o.log.Warn("forwarding failed; records wait in the outbox and are retried", "err", err)
			}
			failing = true
		default:
			if failing {
				o.log.Info("forwarding resumed")
			}
			failing = false
			wait = o.cfg.RetryInitial
		}
		var timer <-chan time.Time
		if failing {
			timer = time.After(wait)
			wait = min(2*wait, o.cfg.RetryMax)
		}
		select {
		case <-ctx.Done():
			return
		case <-o.wake:
			if failing {
				// New records do not make the remote come back sooner:
				// keep to the backoff.
				select {
				case <-ctx.Done():
					return
				case <-timer:
				}
			} else {
				// Let a batch build up: one round per Interval.
				select {
				case <-ctx.Done():
					return
				case <-time.After(o.cfg.Interval):
				case <-o.full:
				}
			}
		case <-timer:
		}
	}
}

// drain forwards batches until the outbox is empty, or holds only records
// of tenants whose Deliver failed in this round. A failing tenant's records
// stay where they are, in order, for the next round (after the backoff);
// the other tenants' go on: one tenant that the remote keeps refusing
// would otherwise hold every record behind its own, for as long as the
// refusal lasts. It returns the first failure, if any.
func (o *Outbox) drain(ctx context.Context) error {
	o.waiting.Store(0)
	var failed map[string]bool // tenants whose batch failed this round
	var firstErr error
	for {
		tenantID, keys, records, err := o.next(failed)
		if err != nil {
			return errors.Join(firstErr, err)
		}
		if len(keys) == 0 {
			return firstErr
		}
		// Keys without records are values next could not read at all
		// (and logged): nothing to forward, deleted all the same, or
		// they would stop every round before the records behind them.
		if len(records) > 0 {
			bctx, span := o.tracer.Start(tenant.With(ctx, tenantID), "outbox.forward", trace.WithAttributes(
				attribute.String("pushmesh.outbox", o.cfg.Name), attribute.Int("pushmesh.records", len(records))))
			err = o.deliverWithin(bctx, tenantID, records)
			span.End()
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				if failed == nil {
					failed = make(map[string]bool)
				}
				failed[tenantID] = true
				if firstErr == nil {
					firstErr = fmt.Errorf("tenant %s: %w", tenantID, err)
				}
				continue
			}
		}
		if err := o.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(o.bucket)
			for _, k := range keys {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("outbox %s: delete forwarded records: %w", o.cfg.Name, err)
		}
		o.backlog.Add(-int64(len(records)))
	}
}

// deliverWithin calls Deliver with Config.DeliverTimeout: a remote that
// takes the batch and never answers becomes a failure, retried with backoff.
func (o *Outbox) deliverWithin(ctx context.Context, tenantID string, records [][]byte) error {
	dctx, cancel := context.WithTimeout(ctx, o.cfg.DeliverTimeout)
	defer cancel()
	err := o.deliver(dctx, tenantID, records)
	// The remote may see the deadline (gRPC sends it along) and end the
	// call a moment before dctx's own timer fires: the clock decides.
	deadline, _ := dctx.Deadline()
	if err != nil && ctx.Err() == nil && !time.Now().Before(deadline) {
		return fmt.Errorf("outbox %s: no answer within %s for a batch of %d records: %w", o.cfg.Name, o.cfg.DeliverTimeout, len(records), err)
	}
	return err
}

// next reads the oldest values of the first tenant with records, except
// those in skip, up to about BatchSize records.
func (o *Outbox) next(skip map[string]bool) (tenantID string, keys, records [][]byte, err error) {
	err = o.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(o.bucket).Cursor()
		k, v := c.First()
		var prefix []byte
		for prefix == nil && k != nil {
			i := bytes.IndexByte(k, 0)
			if i < 0 {
				return fmt.Errorf("outbox %s: malformed key", o.cfg.Name)
			}
			if !skip[string(k[:i])] {
				prefix = bytes.Clone(k[:i+1])
				tenantID = string(k[:i])
				break
			}
			// Past every key of the skipped tenant: "tenant\x00…" sorts
			// before "tenant\x01".
			k, v = c.Seek(append(bytes.Clone(k[:i]), 1))
		}
		for ; k != nil && len(records) < o.cfg.BatchSize; k, v = c.Next() {
			if !bytes.HasPrefix(k, prefix) {
				break
			}
			keys = append(keys, bytes.Clone(k))
			var err error
			if records, err = splitRecords(bytes.Clone(v), records); err != nil {
				// A value this binary cannot read never will: forward what
				// it could read and let the key be deleted with the batch,
				// rather than block the queue.
				o.log.Error("dropping the unreadable rest of an outbox value", "err", err)
			}
		}
		return nil
	})
	return tenantID, keys, records, err
}

// Len counts the records waiting by reading the bucket.
func (o *Outbox) Len() (int, error) {
	n := 0
	err := o.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(o.bucket).ForEach(func(_, v []byte) error {
			c, err := countRecords(v)
			n += c
			return err
		})
	})
	return n, err
}

// Backlog is the number of records waiting, without reading the bucket.
func (o *Outbox) Backlog() int64 { return o.backlog.Load() }

// countReadable counts the records the forwarder will forward (and then
// subtract from the backlog): those of a corrupt value up to its corrupt
// record, as next reads them.
func (o *Outbox) countReadable() int64 {
	var n int64
	_ = o.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(o.bucket).ForEach(func(_, v []byte) error {
			c, _ := countRecords(v)
			n += int64(c)
			return nil
		})
	})
	return n
}

// countRecords counts the records of a stored value as splitRecords reads
// them (up to a corrupt one), without collecting them.
func countRecords(value []byte) (int, error) {
	n := 0
	for len(value) > 0 {
		l, k := binary.Uvarint(value)
		if k <= 0 || l > uint64(len(value)-k) {
			return n, errors.New("corrupt outbox value")
		}
		n++
		value = value[k+int(l):]
	}
	return n, nil
}

// Close stops the forwarder, then writes the appends already queued and
// stops the writer. Records not forwarded stay in the bucket for the next
// start.
func (o *Outbox) Close() {
	if o.fwdStop != nil {
		o.fwdStop()
		<-o.fwdDone
	}
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		close(o.appends)
	}
	o.mu.Unlock()
	<-o.writerDone
}
