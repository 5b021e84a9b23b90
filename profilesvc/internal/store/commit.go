package store

import (
	"context"
	"sync"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// commitFunc runs one mutation inside a shared write transaction. It reads
// and decides first and returns its domain error (if any) before writing
// anything; on success it returns flush, which writes its changes. A flush
// error aborts the whole transaction.
type commitFunc func(tx *bolt.Tx) (flush func() error, err error)

type commitReq struct {
	ctx  context.Context
	fn   commitFunc
	done chan error
}

// committer is a group commit: concurrent single mutations (RegisterPushToken
// from many clients) share one bbolt transaction and so one fsync. Unlike
// bolt.DB.Batch it never waits on a timer: an idle committer commits a lone
// request at once, and a busy one takes everything that queued up while the
// previous commit was syncing.
type committer struct {
	db       *bolt.DB
	maxBatch int
	tracer   trace.Tracer

	mu     sync.RWMutex
	closed bool
	reqs   chan *commitReq
	quit   chan struct{}
	done   chan struct{}
}

func newCommitter(db *bolt.DB, maxBatch int, tracer trace.Tracer) *committer {
	c := &committer{
		db:       db,
		maxBatch: maxBatch,
		tracer:   tracer,
		reqs:     make(chan *commitReq, maxBatch),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go c.loop()
	return c
}

// do runs fn in the next group commit and returns its error, or the commit's.
// A mutation whose ctx ended before its batch started is not run (its error
// is ctx's, nothing was written); once its batch started, it runs even if
// ctx ends, and the caller learns its fate instead of guessing whether it
// committed.
func (c *committer) do(ctx context.Context, fn commitFunc) error {
	r := &commitReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return ErrClosed
	}
	select {
	case c.reqs <- r:
	case <-ctx.Done():
		c.mu.RUnlock()
		return ctx.Err()
	}
	c.mu.RUnlock()
	return <-r.done
}

func (c *committer) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	close(c.quit)
	<-c.done
}

func (c *committer) loop() {
	defer close(c.done)
	batch := make([]*commitReq, 0, c.maxBatch)
	for {
		select {
		case r := <-c.reqs:
			batch = append(batch[:0], r)
		fill:
			for len(batch) < c.maxBatch {
				select {
				case r := <-c.reqs:
					batch = append(batch, r)
				default:
					break fill
				}
			}
			c.run(batch)
		case <-c.quit:
			// No sender can enqueue any more (closed is set under the lock
			// senders hold while enqueueing); serve what is queued.
			for {
				select {
				case r := <-c.reqs:
					c.run([]*commitReq{r})
				default:
					return
				}
			}
		}
	}
}

func (c *committer) run(batch []*commitReq) {
	live := batch[:0:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- err // never started: nothing was written
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	_, span := c.tracer.Start(context.Background(), "store.group_commit",
		trace.WithLinks(linksOf(live)...),
		trace.WithAttributes(attribute.Int("commit.requests", len(live))))
	defer span.End()

	results := make([]error, len(live))
	err := c.db.Update(func(tx *bolt.Tx) error {
		for i, r := range live {
			flush, err := r.fn(tx)
			if err != nil {
				results[i] = err
				continue
			}
			if err := flush(); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		for i, r := range live {
			r.done <- results[i]
		}
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, "shared commit failed; retrying each request alone")
	if len(live) == 1 {
		live[0].done <- err
		return
	}
	// One request broke the shared transaction: run each alone so the
	// others still commit and only the culprit sees the error.
	for _, r := range live {
		r.done <- c.solo(r)
	}
}

func (c *committer) solo(r *commitReq) error {
	var result error
	err := c.db.Update(func(tx *bolt.Tx) error {
		flush, err := r.fn(tx)
		if err != nil {
			result = err
			return nil
		}
		return flush()
	})
	if err != nil {
		return err
	}
	return result
}

// linksOf links the commit span to the spans of the calls it serves.
func linksOf(reqs []*commitReq) []trace.Link {
	links := make([]trace.Link, 0, len(reqs))
	for _, r := range reqs {
		if sc := trace.SpanContextFromContext(r.ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	return links
}
