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
// than once per record.
package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
	// RetryInitial and RetryMax bound the wait after a failed Deliver;
	// default 200 ms and 10 s.
	RetryInitial time.Duration
	RetryMax     time.Duration
	Logger       *slog.Logger
}

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

	mu     sync.RWMutex // held for reading by Append, for writing by Close
	closed bool

	writerDone chan struct{}
	fwdStop    context.CancelFunc
	fwdDone    chan struct{}
}

type appendReq struct {
	tenant  string
	records [][]byte
	done    chan error
}

// New returns an outbox over bucket (which must exist) and starts its
// writer. Call Start to forward.
func New(db *bolt.DB, bucket []byte, deliver Deliver, cfg Config) *Outbox {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 5000
	}
	if cfg.RetryInitial <= 0 {
		cfg.RetryInitial = 200 * time.Millisecond
	}
	if cfg.RetryMax < cfg.RetryInitial {
		cfg.RetryMax = max(10*time.Second, cfg.RetryInitial)
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
		writerDone: make(chan struct{}),
	}
	go o.writer()
	return o
}

// Append stores records for the tenant of ctx and returns once they are
// durable.
func (o *Outbox) Append(ctx context.Context, records [][]byte) error {
	if len(records) == 0 {
		return nil
	}
	req := &appendReq{tenant: tenant.FromContext(ctx), records: records, done: make(chan error, 1)}
	o.mu.RLock()
	if o.closed {
		o.mu.RUnlock()
		return ErrClosed
	}
	o.appends <- req
	o.mu.RUnlock()
	// Not abandoned on ctx's end: the caller's records are in the queue and
	// will be written; waiting keeps "durable when Append returns" true.
	return <-req.done
}

// maxGroup bounds the records of one group commit.
const maxGroup = 20_000

// writer group-commits appends until Close.
func (o *Outbox) writer() {
	defer close(o.writerDone)
	for first := range o.appends {
		group := []*appendReq{first}
		n := len(first.records)
	more:
		for n < maxGroup {
			select {
			case req, ok := <-o.appends:
				if !ok {
					break more
				}
				group = append(group, req)
				n += len(req.records)
			default:
				break more
			}
		}
		err := o.write(group)
		for _, req := range group {
			req.done <- err
		}
		if err == nil {
			o.poke()
		}
	}
}

func (o *Outbox) write(group []*appendReq) error {
	return o.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(o.bucket)
		// Keys only grow within a tenant: pack pages full.
		b.FillPercent = 0.95
		for _, req := range group {
			prefix := boltdb.TenantPrefix(req.tenant)
			for _, rec := range req.records {
				seq, err := b.NextSequence()
				if err != nil {
					return err
				}
				key := binary.BigEndian.AppendUint64(prefix[:len(prefix):len(prefix)], seq)
				if err := b.Put(key, rec); err != nil {
					return fmt.Errorf("outbox %s: %w", o.cfg.Name, err)
				}
			}
		}
		return nil
	})
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
			}
		case <-timer:
		}
	}
}

// drain forwards batches until the outbox is empty or Deliver fails.
func (o *Outbox) drain(ctx context.Context) error {
	for {
		tenantID, keys, records, err := o.next()
		if err != nil || len(records) == 0 {
			return err
		}
		bctx, span := o.tracer.Start(tenant.With(ctx, tenantID), "outbox.forward", trace.WithAttributes(
			attribute.String("pushmesh.outbox", o.cfg.Name), attribute.Int("pushmesh.records", len(records))))
		err = o.deliver(bctx, tenantID, records)
		span.End()
		if err != nil {
			return err
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
	}
}

// next reads the oldest batch of the first tenant with records.
func (o *Outbox) next() (tenantID string, keys, records [][]byte, err error) {
	err = o.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(o.bucket).Cursor()
		var prefix []byte
		for k, v := c.First(); k != nil && len(records) < o.cfg.BatchSize; k, v = c.Next() {
			if prefix == nil {
				i := bytes.IndexByte(k, 0)
				if i < 0 {
					return fmt.Errorf("outbox %s: malformed key", o.cfg.Name)
				}
				prefix = bytes.Clone(k[:i+1])
				tenantID = string(k[:i])
			} else if !bytes.HasPrefix(k, prefix) {
				break
			}
			keys = append(keys, bytes.Clone(k))
			records = append(records, bytes.Clone(v))
		}
		return nil
	})
	return tenantID, keys, records, err
}

// Len counts the records waiting.
func (o *Outbox) Len() (int, error) {
	n := 0
	err := o.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(o.bucket).Stats().KeyN
		return nil
	})
	return n, err
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
