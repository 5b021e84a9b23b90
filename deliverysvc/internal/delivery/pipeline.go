package delivery

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"firebase.google.com/go/v4/messaging"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

const tracerName = "github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"

// Config tunes the pipeline. The zero value is usable.
type Config struct {
	// MaxInFlight bounds the work in flight across all sessions, in tokens
	// (a profile message counts 1 until resolved); default 10,000.
	MaxInFlight int64
	// RetryInitial and RetryMax bound the exponential backoff between
	// retries of a retryable failure; default 500 ms and 1 minute. A
	// gateway's Retry-After wins when it is longer. The same backoff spaces
	// the retries of a failed write of outcomes (see messageRun.finish).
	RetryInitial time.Duration
	RetryMax     time.Duration
	// Workers bounds the goroutines sending messages; default
	// min(MaxInFlight, 1024). Workers live on between messages, so the deep
	// stacks of HTTP/2 calls are grown once, not per message; a message
	// that has to wait (a retry backoff, a rate limit) leaves its worker
	// and waits on its own goroutine, and no worker waits for an outcome's
	// commit (see messageRun.finish).
	Workers int
	// ResolveAttempts bounds the calls to profilesvc for one profile
	// target before the message fails with NETWORK; default 4.
	ResolveAttempts int
	// Logger receives the pipeline's warnings; default slog.Default().
	Logger *slog.Logger
	// TracerProvider makes the send spans; default the global one.
	TracerProvider trace.TracerProvider
	// Metrics counts sent and failed pushes; nil counts nothing.
	Metrics *metrics.Metrics
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *Config) defaults() {
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Minute
	}
	if c.RetryMax < c.RetryInitial {
		c.RetryMax = c.RetryInitial
	}
	if c.Workers <= 0 {
		c.Workers = int(min(c.MaxInFlight, 1024))
	}
	if c.ResolveAttempts <= 0 {
		c.ResolveAttempts = 4
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Deps are the pipeline's collaborators; all are required.
type Deps struct {
	Apps     Apps
	Resolver Resolver
	Recorder Recorder
	Feedback Feedback
	Dedupe   Dedupe
}

// Pipeline sends messages. It is safe for concurrent use; one Pipeline
// serves every session of the process.
type Pipeline struct {
	cfg    Config
	deps   Deps
	log    *slog.Logger
	tracer trace.Tracer
	sem    *semaphore.Weighted

	jobs    chan *task   // admitted messages, taken by idle workers
	workers atomic.Int64 // running workers
	// inFlight is the weight admitted and not yet given back: what sem
	// holds, which it does not tell (for the in-flight gauge).
	inFlight atomic.Int64

	// Failed writes of outcomes are retried per message; these keep a
	// failing disk from logging a line per message and retry.
	writesRetrying atomic.Int64 // messages waiting to write their records again
	// recordersClosed is closed by RecordersClosed: retries waiting out
	// their backoff then try at once, find the outbox closed and give up.
	recordersClosed     chan struct{}
	recordersClosedOnce sync.Once
	logWriteRetry       rate.Sometimes // at most one line per writeLogInterval
	logWriteGivenUp     rate.Sometimes

	mu       sync.Mutex
	inflight map[string]*flight // tenant \x00 idempotency key → its flight
}

// flight is an idempotency key in flight: the first message with it claims
// it, and whichever message with the key is admitted first (holds in-flight
// weight) takes it and sends; the others wait for its outcome, holding their
// own weight. A message waiting with weight thus always waits for one that
// holds weight too, and so makes progress: were the sender always the
// claimer, copies could fill the pipeline while the claimer's Submit waits
// for room behind them.
type flight struct {
	done  chan struct{}
	taken atomic.Bool // a message is sending (or answering) for the key
	// results is set before done closes when the outcome was remembered;
	// nil means the message did not complete (invalid or cancelled), so a
	// waiter sends its own copy.
	results []Result
}

// take makes the caller the one message that sends for the key; it reports
// false when another message has it.
func (f *flight) take() bool { return f.taken.CompareAndSwap(false, true) }

// New returns a pipeline.
func New(cfg Config, deps Deps) *Pipeline {
	cfg.defaults()
	return &Pipeline{
		cfg:      cfg,
		deps:     deps,
		log:      cfg.Logger,
		tracer:   cfg.TracerProvider.Tracer(tracerName),
		sem:      semaphore.NewWeighted(cfg.MaxInFlight),
		jobs:     make(chan *task),
		inflight: make(map[string]*flight),

		recordersClosed: make(chan struct{}),
		logWriteRetry:   rate.Sometimes{Interval: writeLogInterval},
		logWriteGivenUp: rate.Sometimes{Interval: writeLogInterval},
	}
}

// DefaultMaxInFlight is Config.MaxInFlight's default.
const DefaultMaxInFlight = 10_000

// writeLogInterval is the least time between two log lines about failed
// writes of outcomes.
const writeLogInterval = 10 * time.Second

// Session is one caller's stream of messages; see the package documentation.
type Session struct {
	p      *Pipeline
	ctx    context.Context
	tenant string
	emit   func(Result)
	opts   SessionOptions
	wg     sync.WaitGroup
	// sem bounds the session's own weight (SessionOptions.MaxInFlight),
	// nil when only the pipeline's bound applies; maxWeight is the most
	// one message may weigh, whichever bound is lower.
	sem       *semaphore.Weighted
	maxWeight int64

	mu     sync.Mutex
	closed bool

	doneMu     sync.Mutex
	doneQueue  []func() // completions waiting to run, in order
	completing bool     // runCompletions is running
}

// Open starts a session in the tenant of ctx. Cancelling ctx cancels its
// pending work. emit receives every result; see the package documentation.
func (p *Pipeline) Open(ctx context.Context, emit func(Result)) *Session {
	return p.OpenWith(ctx, emit, SessionOptions{})
}

// SessionOptions change how a session uses the idempotency store.
type SessionOptions struct {
	// CallerCheckpoints says the caller keeps its own durable record of
	// what completed, as a journey does with its audience cursor: after a
	// crash it resends only its in-flight window, and the collapse id makes
	// those resends replacements on the device. The session then neither
	// looks its keys up in the idempotency store nor writes them there,
	// which would cost a record per token and grow the data file with the
	// audience (a 1M-profile journey wrote ~330 MB). Copies of a key in
	// flight at the same time are still merged.
	CallerCheckpoints bool
	// MaxInFlight bounds the weight (tokens) this session holds at once;
	// 0 or more than the pipeline's Config.MaxInFlight means the pipeline's.
	// Weight is held until a message's results are emitted, so a caller
	// that stops reading them keeps it: with a bound per session one such
	// caller cannot take the whole pipeline from the others.
	MaxInFlight int64
}

// OpenWith is Open with options.
func (p *Pipeline) OpenWith(ctx context.Context, emit func(Result), opts SessionOptions) *Session {
	s := &Session{p: p, ctx: ctx, tenant: tenant.FromContext(ctx), emit: emit, opts: opts, maxWeight: p.cfg.MaxInFlight}
	if opts.MaxInFlight > 0 && opts.MaxInFlight < p.cfg.MaxInFlight {
		s.maxWeight = opts.MaxInFlight
		s.sem = semaphore.NewWeighted(opts.MaxInFlight)
	}
	return s
}

// Submit admits a batch of messages. It returns a *fault.ValidationError
// when the batch itself is unusable (size, idempotency keys), and ctx's error
// when the session is cancelled before every message was admitted; messages
// admitted by then still complete. Per-message problems are reported as
// results, never as an error.
func (s *Session) Submit(msgs []Message) error {
	if err := CheckBatch(msgs, "messages"); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrSessionClosed
	}
	// Counted before Close can run Wait, so Close waits for this batch.
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	p := s.p
	// Claim every key first, then look them up in one go: a message that
	// completes between the lookup and the claim is then impossible, as
	// completion is remembered before its claim is released. Copies of a key
	// in flight are looked up too, as they may end up sending (see flight).
	tasks := make([]task, len(msgs))
	var lookup []string
	if !s.opts.CallerCheckpoints {
		lookup = make([]string, 0, len(msgs))
	}
	for i := range msgs {
		t := &tasks[i]
		t.s, t.index, t.msg = s, i, msgs[i]
		t.flight, t.first = p.claim(s.tenant, t.msg.IdempotencyKey)
		if !s.opts.CallerCheckpoints {
			lookup = append(lookup, t.msg.IdempotencyKey)
		}
	}
	// abandon gives back the claims of tasks[from:] that were not started,
	// unless a copy in another batch took them over.
	abandon := func(from int) {
		for k := from; k < len(tasks); k++ {
			if t := &tasks[k]; t.first && !t.started && t.flight.take() {
				p.release(s.tenant, t.msg.IdempotencyKey, t.flight, nil)
			}
		}
	}
	var stored map[string][]Result
	if !s.opts.CallerCheckpoints {
		var err error
		if stored, err = p.deps.Dedupe.Lookup(s.ctx, lookup); err != nil {
			abandon(0)
			return fmt.Errorf("idempotency lookup: %w", err)
		}
	}
	for i := range tasks {
		t := &tasks[i]
		if prev, ok := stored[t.msg.IdempotencyKey]; ok {
			// Completed before: answer from the store, send nothing. A copy
			// that came for the claim meanwhile gets the stored outcome too.
			t.started = true
			if t.first && t.flight.take() {
				p.release(s.tenant, t.msg.IdempotencyKey, t.flight, prev)
			}
			s.emitDuplicates(prev)
			continue
		}
		// Copies of a key in flight take their weight like any message:
		// a client resending a batch while the first copy waits out a
		// retry backoff is held back by Submit, not given a goroutine per
		// copy.
		t.weight = min(int64(max(1, len(t.msg.Tokens))), s.maxWeight)
		if err := s.acquire(t.weight); err != nil {
			abandon(i)
			return err
		}
		t.started = true
		s.wg.Add(1)
		if !t.flight.take() {
			// Another message with the key is being sent: wait for its
			// outcome on a goroutine of its own, never on a worker, so
			// waiters cannot hold up the message they wait for.
			t.detached = true
			go s.await(t)
			continue
		}
		if err := p.dispatch(s.ctx, t); err != nil {
			p.release(s.tenant, t.msg.IdempotencyKey, t.flight, nil)
			t.free()
			abandon(i + 1)
			return err
		}
	}
	return nil
}

// task is one admitted message.
type task struct {
	s      *Session
	index  int // in its batch, for field paths
	msg    Message
	flight *flight
	// first: this task claimed the key, and gives the claim back if its
	// batch is abandoned before anyone took it.
	first   bool
	started bool
	weight  int64
	// detached is set once the task left its worker to wait.
	detached bool
}

// free gives back the task's in-flight weight and its place in the session,
// once the message is answered.
func (t *task) free() {
	t.s.p.inFlight.Add(-t.weight)
	t.s.p.sem.Release(t.weight)
	if t.s.sem != nil {
		t.s.sem.Release(t.weight)
	}
	t.s.wg.Done()
}

// acquire takes weight from the session's bound, then the pipeline's.
func (s *Session) acquire(weight int64) error {
	if s.sem != nil {
		if err := s.sem.Acquire(s.ctx, weight); err != nil {
			return err
		}
	}
	if err := s.p.sem.Acquire(s.ctx, weight); err != nil {
		if s.sem != nil {
			s.sem.Release(weight)
		}
		return err
	}
	s.p.inFlight.Add(weight)
	return nil
}

// InFlight is the weight (pushes, counting a profile message not yet
// resolved as 1) admitted and not yet answered, across all sessions.
func (p *Pipeline) InFlight() int64 { return p.inFlight.Load() }

// MaxInFlight is the pipeline's bound on InFlight.
func (p *Pipeline) MaxInFlight() int64 { return p.cfg.MaxInFlight }

// dispatch hands t to an idle worker, starts a worker if fewer than
// Config.Workers run, or waits for one.
func (p *Pipeline) dispatch(ctx context.Context, t *task) error {
	select {
	case p.jobs <- t:
		return nil
	default:
	}
	if p.workers.Add(1) <= int64(p.cfg.Workers) {
		go p.worker(t)
		return nil
	}
	p.workers.Add(-1)
	select {
	case p.jobs <- t:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// workerIdle is how long an idle worker waits for work before it exits.
const workerIdle = 30 * time.Second

// worker runs tasks until it has been idle for workerIdle, or until a task
// detached from it (the goroutine then belongs to that task and ends with
// it).
func (p *Pipeline) worker(t *task) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		p.runTask(t)
		if t.detached {
			return
		}
		// Under load a dispatcher is usually waiting to hand over the next
		// task: take it without re-arming the idle timer or entering a
		// two-way select (both show in CPU profiles at 10,000 pushes/s).
		select {
		case t = <-p.jobs:
			continue
		default:
		}
		idle.Reset(workerIdle)
		select {
		case t = <-p.jobs:
		case <-idle.C:
			p.workers.Add(-1)
			return
		}
	}
}

// runTask sends t. Its in-flight weight and its place in the session are
// given back when the message completes, which can be after runTask
// returns: the worker goes on to the next task while the outcome is
// committed (see messageRun.finish).
func (p *Pipeline) runTask(t *task) {
	t.s.run(t, t.free)
}

// detach lets the task's worker go back to work for others: the task is
// about to wait (a backoff, a rate limit) and continues on this goroutine.
func (p *Pipeline) detach(t *task) {
	if t == nil || t.detached {
		return
	}
	t.detached = true
	p.workers.Add(-1)
}

// Close waits for every admitted message to complete. Submit fails after
// Close.
func (s *Session) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func flightKey(tenantID, key string) string { return tenantID + "\x00" + key }

// claim registers the first message with a key, or returns the key's flight
// if there is one.
func (p *Pipeline) claim(tenantID, key string) (*flight, bool) {
	k := flightKey(tenantID, key)
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.inflight[k]; ok {
		return f, false
	}
	f := &flight{done: make(chan struct{})}
	p.inflight[k] = f
	return f, true
}

// release ends a claim; results are the remembered outcome, or nil. Only
// the message that took the flight releases it.
func (p *Pipeline) release(tenantID, key string, f *flight, results []Result) {
	p.mu.Lock()
	delete(p.inflight, flightKey(tenantID, key))
	p.mu.Unlock()
	f.results = results
	close(f.done)
}

// await handles an admitted message whose key another message is sending:
// it answers with that message's outcome, or sends this one if that message
// did not complete. The task holds its in-flight weight throughout, and
// gives it back (free) once answered.
func (s *Session) await(j *task) {
	for {
		select {
		case <-j.flight.done:
		case <-s.ctx.Done():
			s.emitCancelled(&j.msg)
			j.free()
			return
		}
		if j.flight.results != nil {
			s.emitDuplicates(j.flight.results)
			j.free()
			return
		}
		// The other message did not complete and nothing was remembered
		// since (the key's flight would have been held): send this one,
		// unless yet another message has the key by now.
		j.flight, _ = s.p.claim(s.tenant, j.msg.IdempotencyKey)
		if j.flight.take() {
			s.run(j, j.free)
			return
		}
	}
}

func (s *Session) emitDuplicates(prev []Result) {
	for i, r := range prev {
		r.Duplicate = true
		r.MessageDone = i == len(prev)-1
		s.emit(r)
	}
}

func (s *Session) emitCancelled(m *Message) {
	// Counted as one failure of no platform, as an invalid message is: its
	// tokens were never known.
	s.p.cfg.Metrics.Failed(s.ctx, commonv1.Platform_PLATFORM_UNSPECIFIED, commonv1.FailureReason_FAILURE_REASON_CANCELLED, 1)
	s.emit(Result{
		IdempotencyKey: m.IdempotencyKey, MessageID: messageID(m), JourneyID: m.JourneyID,
		Status: StatusFailed, Reason: commonv1.FailureReason_FAILURE_REASON_CANCELLED,
		Detail: "the session ended before the message was sent", Time: s.p.cfg.Now(), MessageDone: true,
	})
}

func messageID(m *Message) string {
	if m.MessageID != "" {
		return m.MessageID
	}
	return m.IdempotencyKey
}

// run sends a message that took its key's flight. Once its results are
// emitted it remembers the outcome, releases the flight and calls completed;
// that may happen on another goroutine after run returns.
func (s *Session) run(j *task, completed func()) {
	p := s.p
	m := &j.msg
	now := p.cfg.Now()
	if err := ValidateMessage(m, "messages["+strconv.Itoa(j.index)+"]", now); err != nil {
		p.cfg.Metrics.Failed(s.ctx, commonv1.Platform_PLATFORM_UNSPECIFIED, commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE, 1)
		s.emit(Result{
			IdempotencyKey: m.IdempotencyKey, MessageID: messageID(m), JourneyID: m.JourneyID,
			Status: StatusFailed, Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE,
			Detail: err.Error(), Time: now, MessageDone: true,
		})
		p.release(s.tenant, m.IdempotencyKey, j.flight, nil)
		completed()
		return
	}
	ctx, span := p.tracer.Start(s.ctx, "delivery.message", trace.WithAttributes(
		attribute.String("pushmesh.tenant", s.tenant),
		attribute.String("pushmesh.message_id", messageID(m)),
		attribute.String("pushmesh.journey_id", m.JourneyID),
	))

	mr := &messageRun{s: s, t: j, ctx: ctx, span: span, msg: m, now: now}
	mr.ttl = m.TTL
	if mr.ttl == 0 {
		mr.ttl = DefaultTTL
	}
	mr.deadline = now.Add(mr.ttl)
	mr.tr = tracking{journeyID: m.JourneyID, messageID: messageID(m), traceParent: traceParent(span.SpanContext())}

	mr.send(func() {
		if len(mr.all) > 1 || mr.failed > 0 {
			// A single sent push needs no counts: its span says it all.
			span.SetAttributes(
				attribute.Int("pushmesh.results", len(mr.all)),
				attribute.Int("pushmesh.sent", mr.sent),
				attribute.Int("pushmesh.failed", mr.failed),
			)
		}
		var remembered []Result
		switch {
		case mr.cancelled:
			span.SetStatus(codes.Error, "cancelled")
		case mr.unrecorded:
			// Without its tracking record the outcome is not remembered:
			// a resend is sent (and recorded) again rather than answered
			// as a duplicate of an event trackingsvc never got.
			span.SetStatus(codes.Error, "outcome not recorded")
		default:
			if !s.opts.CallerCheckpoints {
				p.deps.Dedupe.Remember(context.WithoutCancel(ctx), m.IdempotencyKey, mr.all)
			}
			remembered = mr.all
		}
		span.End()
		p.release(s.tenant, m.IdempotencyKey, j.flight, remembered)
		completed()
	})
}

// traceParent formats the W3C traceparent of the message's send span. When
// tracing is off (no SDK tracer provider) the span has no ids; the push then
// carries random, unsampled ids, so apps can rely on the key being there.
func traceParent(sc trace.SpanContext) string {
	if !sc.IsValid() {
		var tid trace.TraceID
		var sid trace.SpanID
		binary.BigEndian.PutUint64(tid[:8], rand.Uint64())
		binary.BigEndian.PutUint64(tid[8:], rand.Uint64()|1)
		binary.BigEndian.PutUint64(sid[:], rand.Uint64()|1)
		sc = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid})
	}
	tid, sid := sc.TraceID(), sc.SpanID()
	b := make([]byte, 0, 55)
	b = append(b, "00-"...)
	b = appendHex(b, tid[:])
	b = append(b, '-')
	b = appendHex(b, sid[:])
	b = append(b, '-')
	b = appendHex(b, []byte{byte(sc.TraceFlags())})
	return string(b)
}

func appendHex(b, src []byte) []byte {
	for _, c := range src {
		b = append(b, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return b
}

// messageRun is the state of one message being sent.
type messageRun struct {
	s        *Session
	t        *task
	ctx      context.Context
	span     trace.Span
	msg      *Message
	now      time.Time
	ttl      time.Duration
	deadline time.Time
	tr       tracking

	all          []Result
	sent, failed int
	cancelled    bool
	groupsLeft   int

	// writeFailures counts the failed writes of the records being written
	// (reset when they are durable); unrecorded is set when the outbox
	// closed before they were.
	writeFailures int
	unrecorded    bool

	// Payloads are built once per message: APNs per app (the topic differs),
	// FCM once.
	apns           *APNsPush
	apnsPayloadErr error // APNs payload too large (the same for every app)
	fcm            *messaging.Message
	fcmErr         error
}

func (mr *messageRun) base(t Target) Result {
	return Result{
		IdempotencyKey: mr.msg.IdempotencyKey, MessageID: mr.tr.messageID, JourneyID: mr.msg.JourneyID,
		Target: t, TraceParent: mr.tr.traceParent,
	}
}

// send resolves the targets and sends to each app in turn, then calls
// completed once every result is emitted (mr.cancelled says whether the
// message was cut short).
func (mr *messageRun) send(completed func()) {
	targets, explicit, res, ok := mr.resolve()
	if !ok {
		mr.finish([]Result{res}, true, completed)
		return
	}
	groups := groupByApp(targets)
	mr.groupsLeft = len(groups)
	for _, g := range groups {
		results := mr.sendGroup(g, explicit)
		mr.groupsLeft--
		if mr.groupsLeft > 0 {
			// Apps after the first wait for this one's outcome to be
			// committed and emitted: results stay in order, and a message
			// to several apps is rare enough not to matter to workers.
			done := make(chan struct{})
			mr.finish(results, false, func() { close(done) })
			<-done
			continue
		}
		mr.finish(results, true, completed)
	}
	if len(groups) == 0 {
		completed()
	}
}

// finish records results, then (once the Recorder has committed them, and
// dead tokens are reported) emits the results, adds them to the message's
// outcome and calls then, on the session's completion goroutine (see
// Session.complete). The caller does not
// wait for the commit: a worker blocked on it holds no CPU but can send
// nothing, and with the outbox's group commit lingering every worker ends up
// waiting for the same commit while the machine idles.
//
// A failed write is written again after a backoff (see retryWrite) until it
// succeeds, and nothing is reported meanwhile: the message keeps its
// in-flight weight, so a failing disk stops intake instead of losing events
// that the caller and the idempotency store would take as recorded.
func (mr *messageRun) finish(results []Result, last bool, then func()) {
	p := mr.s.p
	ctx := context.WithoutCancel(mr.ctx) // the pushes happened: record them even if the caller left
	countResults(ctx, p.cfg.Metrics, results)
	var record []Result
	var dead []DeadToken
	for i := range results {
		r := &results[i]
		if r.Time.IsZero() {
			r.Time = p.cfg.Now()
		}
		switch {
		case r.Status == StatusSent:
			mr.sent++
		case r.Status == StatusFailed:
			mr.failed++
		}
		if r.Reason == commonv1.FailureReason_FAILURE_REASON_CANCELLED {
			mr.cancelled = true
			continue
		}
		record = append(record, *r)
		if ClassOf(r.Reason) == ClassToken && r.Attempts > 0 {
			dead = append(dead, DeadToken{Target: r.Target, Reason: r.Reason, GatewayTime: r.GatewayTime})
		}
	}
	o := &outcome{mr: mr, ctx: ctx, results: results, last: last, then: then, record: record, dead: dead}
	if len(record) == 0 {
		o.recorded(nil)
		return
	}
	p.deps.Recorder.RecordAsync(ctx, record, o.recorded)
}

// outcome is the results of one finish on their way through the outboxes.
// Its methods are the outboxes' callbacks: they run on the outboxes' writers
// and must not block, so they hand the report to the session's completion
// queue, or a retry to a timer. (Methods of one struct rather than closures
// calling each other, which would each cost an allocation per message.)
type outcome struct {
	mr      *messageRun
	ctx     context.Context
	results []Result
	last    bool
	then    func()
	record  []Result    // for the Recorder
	dead    []DeadToken // for Feedback
}

func (o *outcome) recorded(err error) {
	if err != nil && o.mr.retryWrite(o.ctx, "recording send outcomes", err, o.recordAgain) {
		return
	}
	o.mr.written()
	if len(o.dead) > 0 {
		o.mr.s.p.deps.Feedback.ReportDeadAsync(o.ctx, o.dead, o.reported)
		return
	}
	o.mr.s.complete(o.report)
}

func (o *outcome) recordAgain() { o.mr.s.p.deps.Recorder.RecordAsync(o.ctx, o.record, o.recorded) }

func (o *outcome) reported(err error) {
	if err != nil && o.mr.retryWrite(o.ctx, "reporting dead tokens", err, o.reportAgain) {
		return
	}
	o.mr.written()
	o.mr.s.complete(o.report)
}

func (o *outcome) reportAgain() { o.mr.s.p.deps.Feedback.ReportDeadAsync(o.ctx, o.dead, o.reported) }

// report emits the results, adds them to the message's outcome and calls
// then, on the session's completion goroutine.
func (o *outcome) report() {
	mr := o.mr
	for i := range o.results {
		o.results[i].MessageDone = o.last && i == len(o.results)-1
		mr.s.emit(o.results[i])
	}
	mr.all = append(mr.all, o.results...)
	o.then()
}

// retryWrite handles a failed write of the message's records (what names it
// in the log). It arranges for again to run after a backoff, on a timer's
// goroutine (never the outbox writer's that reported the failure), and
// returns true; or, when the outbox is closed for good (shutdown), it marks
// the outcome unrecorded and returns false, so that the message is reported
// anyway and Session.Close does not wait for a write that cannot happen.
// Logs are rate-limited across the pipeline: a failing disk fails every
// message, and every retry.
func (mr *messageRun) retryWrite(ctx context.Context, what string, err error, again func()) bool {
	p := mr.s.p
	if errors.Is(err, ErrRecorderClosed) {
		mr.written()
		mr.unrecorded = true
		p.logWriteGivenUp.Do(func() {
			p.log.ErrorContext(ctx, what+" failed, and the outbox is closed: the message is reported without a durable record, and not remembered",
				"message_id", mr.tr.messageID, "err", err)
		})
		return false
	}
	mr.writeFailures++
	if mr.writeFailures == 1 {
		p.writesRetrying.Add(1)
	}
	p.logWriteRetry.Do(func() {
		p.log.ErrorContext(ctx, what+" failed; holding the message, with its in-flight weight, until a retry succeeds",
			"message_id", mr.tr.messageID, "messages_waiting", p.writesRetrying.Load(), "err", err)
	})
	wait := p.backoff(mr.writeFailures, 0)
	go func() {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-p.recordersClosed:
		}
		again()
	}()
	return true
}

// RecordersClosed tells the pipeline that the Recorder and Feedback outboxes
// are closed: writes waiting to be retried try at once (and give up), so a
// stop on a failing disk does not wait out their backoff (up to RetryMax).
func (p *Pipeline) RecordersClosed() {
	p.recordersClosedOnce.Do(func() { close(p.recordersClosed) })
}

// written ends the retries of a write.
func (mr *messageRun) written() {
	if mr.writeFailures > 0 {
		mr.s.p.writesRetrying.Add(-1)
		mr.writeFailures = 0
	}
}

// complete queues f to run after the session's earlier completions, on a
// goroutine that lives while the queue is not empty. One goroutine per
// session rather than one per message: emit can block on a slow reader,
// which must hold up only its own session, and short-lived goroutines would
// pull down the runtime's estimate of a new goroutine's stack size, so the
// HTTP/2 and JSON goroutines of every push would grow and copy theirs.
func (s *Session) complete(f func()) {
	s.doneMu.Lock()
	s.doneQueue = append(s.doneQueue, f)
	start := !s.completing
	s.completing = true
	s.doneMu.Unlock()
	if start {
		go s.runCompletions()
	}
}

func (s *Session) runCompletions() {
	var batch []func()
	for {
		s.doneMu.Lock()
		batch, s.doneQueue = s.doneQueue, batch[:0]
		if len(batch) == 0 {
			s.completing = false
			s.doneMu.Unlock()
			return
		}
		s.doneMu.Unlock()
		for i, f := range batch {
			f()
			batch[i] = nil
		}
	}
}

// resolve returns the message's targets. When there is nothing to send it
// returns ok=false and the message-level result.
func (mr *messageRun) resolve() (targets []Target, explicit bool, res Result, ok bool) {
	m := mr.msg
	if m.Profile == nil {
		return m.Tokens, true, Result{}, true
	}
	p := mr.s.p
	res = mr.base(Target{ProfileID: m.Profile.ProfileID})
	var err error
	for attempt := 1; ; attempt++ {
		targets, err = p.deps.Resolver.ProfileTokens(mr.ctx, *m.Profile)
		if err == nil || errors.Is(err, ErrProfileNotFound) || mr.ctx.Err() != nil || attempt >= p.cfg.ResolveAttempts {
			break
		}
		if !mr.sleep(p.backoff(attempt, 0)) {
			break
		}
	}
	switch {
	case mr.ctx.Err() != nil:
		res.Status, res.Reason, res.Detail = StatusFailed, commonv1.FailureReason_FAILURE_REASON_CANCELLED, "cancelled while resolving the profile's tokens"
		return nil, false, res, false
	case errors.Is(err, ErrProfileNotFound):
		res.Status, res.Exclusion, res.Detail = StatusExcluded, commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, fmt.Sprintf("profile %q not found", m.Profile.ProfileID)
		return nil, false, res, false
	case err != nil:
		res.Status, res.Reason, res.Detail = StatusFailed, commonv1.FailureReason_FAILURE_REASON_NETWORK, "resolving the profile's tokens: "+err.Error()
		return nil, false, res, false
	case len(targets) == 0:
		res.Status, res.Exclusion, res.Detail = StatusExcluded, commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, "the profile has no active token for the requested apps and platforms"
		return nil, false, res, false
	}
	for i := range targets {
		if targets[i].ProfileID == "" {
			targets[i].ProfileID = m.Profile.ProfileID
		}
	}
	return targets, false, Result{}, true
}

// appGroup is the targets of one app, in message order.
type appGroup struct {
	key     AppKey
	targets []Target
}

func groupByApp(targets []Target) []appGroup {
	if len(targets) == 1 { // the common case: no map
		return []appGroup{{key: AppKey{Platform: targets[0].Platform, AppID: targets[0].AppID}, targets: targets}}
	}
	var groups []appGroup
	index := make(map[AppKey]int, 2)
	for _, t := range targets {
		k := AppKey{Platform: t.Platform, AppID: t.AppID}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, appGroup{key: k})
		}
		groups[i].targets = append(groups[i].targets, t)
	}
	return groups
}

// sendGroup sends the message to the tokens of one app, with retries.
func (mr *messageRun) sendGroup(g appGroup, explicit bool) []Result {
	p := mr.s.p
	results := make([]Result, len(g.targets))
	for i, t := range g.targets {
		results[i] = mr.base(t)
	}
	failAll := func(idx []int, status Status, reason commonv1.FailureReason, detail string) {
		for _, i := range idx {
			results[i].Status, results[i].Reason, results[i].Detail = status, reason, detail
		}
	}
	all := make([]int, len(g.targets))
	for i := range all {
		all[i] = i
	}

	app, err := p.deps.Apps.App(mr.ctx, g.key)
	switch {
	case errors.Is(err, ErrAppNotFound) && explicit:
		failAll(all, StatusFailed, commonv1.FailureReason_FAILURE_REASON_APP_NOT_FOUND, fmt.Sprintf("app %q is not registered for %s", g.key.AppID, platformName(g.key.Platform)))
		return results
	case errors.Is(err, ErrAppNotFound):
		for _, i := range all {
			results[i].Status, results[i].Exclusion = StatusExcluded, commonv1.ExclusionReason_EXCLUSION_REASON_APP_NOT_REGISTERED
			results[i].Detail = fmt.Sprintf("app %q is not registered for %s", g.key.AppID, platformName(g.key.Platform))
		}
		return results
	case err != nil:
		failAll(all, StatusFailed, commonv1.FailureReason_FAILURE_REASON_INTERNAL, "looking up the app: "+err.Error())
		return results
	case app.Suspended:
		failAll(all, StatusFailed, commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED, suspendedDetail(app))
		return results
	}

	// Build the pushes; tokens that cannot be sent fail here.
	pushes := make([]Push, len(g.targets))
	var pending []int
	for i := range g.targets {
		t := &g.targets[i]
		if problem := tokenProblem(t); problem != "" {
			results[i].Status, results[i].Reason, results[i].Detail = StatusFailed, commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN, problem
			continue
		}
		push, err := mr.push(t)
		if err != nil {
			results[i].Status, results[i].Reason, results[i].Detail = StatusFailed, commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE, err.Error()
			continue
		}
		pushes[i] = push
		pending = append(pending, i)
	}

	var lastReason commonv1.FailureReason
	var lastDetail string
	for attempt := 1; len(pending) > 0; attempt++ {
		if attempt > 1 {
			// Re-read the app: it may have been suspended, rotated or
			// deleted while this message waited.
			app, err = p.deps.Apps.App(mr.ctx, g.key)
			switch {
			case errors.Is(err, ErrAppNotFound):
				failAll(pending, StatusFailed, commonv1.FailureReason_FAILURE_REASON_APP_NOT_FOUND, fmt.Sprintf("app %q was deleted", g.key.AppID))
				return results
			case err != nil:
				failAll(pending, StatusFailed, commonv1.FailureReason_FAILURE_REASON_INTERNAL, "looking up the app: "+err.Error())
				return results
			case app.Suspended:
				failAll(pending, StatusFailed, commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED, suspendedDetail(app))
				return results
			}
		}
		if reason, detail := mr.waitRate(app, len(pending)); reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
			failAll(pending, StatusFailed, reason, detail)
			return results
		}
		batch := make([]Push, len(pending))
		for k, i := range pending {
			batch[k] = pushes[i]
		}
		attempts := app.Sender.Send(mr.ctx, batch)
		var retry []int
		var retryAfter time.Duration
		suspended := false
		for k, i := range pending {
			a := attempts[k]
			r := &results[i]
			r.Attempts = attempt
			r.Time = p.cfg.Now()
			switch ClassOf(a.Reason) {
			case ClassNone:
				r.Status, r.GatewayID, r.Reason, r.Detail = StatusSent, a.GatewayID, a.Reason, ""
			case ClassRetryable:
				if mr.ctx.Err() != nil {
					r.Status, r.Reason, r.Detail = StatusFailed, commonv1.FailureReason_FAILURE_REASON_CANCELLED, "cancelled: "+a.Detail
					continue
				}
				retry = append(retry, i)
				retryAfter = max(retryAfter, a.RetryAfter)
				lastReason, lastDetail = a.Reason, a.Detail
			case ClassCredentials:
				r.Status, r.Reason, r.Detail = StatusFailed, a.Reason, a.Detail
				if !suspended {
					suspended = true
					if err := p.deps.Apps.Suspend(context.WithoutCancel(mr.ctx), g.key, a.Reason, a.Detail); err != nil {
						p.log.ErrorContext(mr.ctx, "suspending app failed", "platform", platformName(g.key.Platform), "app_id", g.key.AppID, "err", err)
					}
				}
			case ClassToken:
				r.Status, r.Reason, r.Detail = StatusFailed, a.Reason, a.Detail
				r.GatewayTime = a.GatewayTime
				if r.GatewayTime.IsZero() {
					r.GatewayTime = r.Time
				}
			default:
				r.Status, r.Reason, r.Detail = StatusFailed, a.Reason, a.Detail
			}
		}
		if len(retry) == 0 {
			break
		}
		wait := p.backoff(attempt, retryAfter)
		if p.cfg.Now().Add(wait).After(mr.deadline) {
			failAll(retry, StatusFailed, lastReason, fmt.Sprintf("%s; gave up after %d attempts: the next retry (in %s) would pass the message's TTL", lastDetail, attempt, wait.Round(time.Millisecond)))
			break
		}
		mr.span.AddEvent("retry", trace.WithAttributes(attribute.Int("pushmesh.pushes", len(retry)), attribute.Int64("pushmesh.wait_ms", wait.Milliseconds())))
		if !mr.sleep(wait) {
			failAll(retry, StatusFailed, commonv1.FailureReason_FAILURE_REASON_CANCELLED, "cancelled while waiting to retry: "+lastDetail)
			break
		}
		pending = retry
	}
	return results
}

// waitRate takes n tokens from the app's rate limiter, waiting no longer
// than the message's TTL. Under the limit it costs a reservation, no timer.
func (mr *messageRun) waitRate(app App, n int) (commonv1.FailureReason, string) {
	lim := app.Limiter
	if lim == nil {
		return commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED, ""
	}
	burst := max(1, lim.Burst())
	for n > 0 {
		take := min(n, burst)
		now := time.Now()
		r := lim.ReserveN(now, take)
		if !r.OK() {
			return commonv1.FailureReason_FAILURE_REASON_INTERNAL, "the app's rate limit cannot admit a batch this size"
		}
		if d := r.DelayFrom(now); d > 0 {
			if now.Add(d).After(mr.deadline) {
				r.CancelAt(now)
				return commonv1.FailureReason_FAILURE_REASON_TTL_EXPIRED, "the app's rate limit would hold the message past its TTL"
			}
			if !mr.sleep(d) {
				r.CancelAt(time.Now())
				return commonv1.FailureReason_FAILURE_REASON_CANCELLED, "cancelled while waiting for the app's rate limit"
			}
		}
		n -= take
	}
	return commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED, ""
}

// push builds the push of the message for one token.
func (mr *messageRun) push(t *Target) (Push, error) {
	switch t.Platform {
	case commonv1.Platform_PLATFORM_APNS:
		if mr.apnsPayloadErr != nil {
			return Push{}, mr.apnsPayloadErr
		}
		if mr.apns == nil || mr.apns.Topic != t.AppID+apnsTopicSuffix(mr.apns.PushType) {
			// Groups come one app at a time: one payload per app.
			a, err := buildAPNs(mr.msg, t.AppID, mr.tr, mr.deadline, mr.now)
			if err != nil {
				mr.apnsPayloadErr = err
				return Push{}, err
			}
			mr.apns = a
		}
		return Push{Target: *t, Deadline: mr.deadline, APNs: mr.apns}, nil
	default:
		if mr.fcm == nil && mr.fcmErr == nil {
			mr.fcm, mr.fcmErr = buildFCM(mr.msg, mr.tr, mr.deadline.Sub(mr.now))
		}
		if mr.fcmErr != nil {
			return Push{}, mr.fcmErr
		}
		msg := *mr.fcm
		msg.Token = t.Token
		return Push{Target: *t, Deadline: mr.deadline, FCM: &msg}, nil
	}
}

// sleep waits d or until the session is cancelled; it reports whether it
// slept the whole time.
func (mr *messageRun) sleep(d time.Duration) bool {
	mr.s.p.detach(mr.t)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-mr.ctx.Done():
		return false
	}
}

// backoff is the wait before retry number attempt (from 1): exponential
// with "equal jitter" (half fixed, half random), so synchronized failures
// spread out, and never shorter than the gateway's Retry-After.
func (p *Pipeline) backoff(attempt int, retryAfter time.Duration) time.Duration {
	d := p.cfg.RetryInitial
	for i := 1; i < attempt && d < p.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, p.cfg.RetryMax)
	d = d/2 + rand.N(d/2+1)
	return max(d, retryAfter)
}

func suspendedDetail(app App) string {
	d := "the app is suspended after the gateway rejected its credentials"
	if app.SuspendedReason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
		d += " (" + app.SuspendedReason.String() + ")"
	}
	if app.SuspendedDetail != "" {
		d += ": " + app.SuspendedDetail
	}
	return d + "; update its credentials and validate it to resume"
}

func platformName(p commonv1.Platform) string {
	switch p {
	case commonv1.Platform_PLATFORM_APNS:
		return "APNs"
	case commonv1.Platform_PLATFORM_FCM:
		return "FCM"
	}
	return p.String()
}

// tokenProblem says why a token cannot be a token of its platform, or "".
func tokenProblem(t *Target) string {
	switch t.Platform {
	case commonv1.Platform_PLATFORM_APNS:
		n := len(t.Token)
		if n < minAPNsTokenLen || n > maxAPNsTokenLen || n%2 != 0 {
			return fmt.Sprintf("an APNs token is an even number of hex digits, %d to %d, got %d characters", minAPNsTokenLen, maxAPNsTokenLen, n)
		}
		for i := 0; i < n; i++ {
			c := t.Token[i]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return fmt.Sprintf("an APNs token is hex digits only, got %q at %d", c, i)
			}
		}
	case commonv1.Platform_PLATFORM_FCM:
		if len(t.Token) > maxFCMTokenLen {
			return fmt.Sprintf("an FCM token is at most %d bytes, got %d", maxFCMTokenLen, len(t.Token))
		}
		for i := 0; i < len(t.Token); i++ {
			c := t.Token[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == ':' || c == '.') {
				return fmt.Sprintf("an FCM token is made of letters, digits and -_:. only, got %q at %d", c, i)
			}
		}
	}
	return ""
}

// countResults adds results to the sent and failed counters. It makes one
// Add per run of results sharing status, platform and reason (the results
// of one app usually share all three), and allocates nothing: it runs for
// every push. Exclusions are not pushes, and are not counted.
func countResults(ctx context.Context, m *metrics.Metrics, results []Result) {
	if m == nil {
		return
	}
	type key struct {
		status   Status
		platform commonv1.Platform
		reason   commonv1.FailureReason
	}
	var run key
	var n int64
	flush := func() {
		switch run.status {
		case StatusSent:
			m.Sent(ctx, run.platform, n)
		case StatusFailed:
			m.Failed(ctx, run.platform, run.reason, n)
		}
	}
	for i := range results {
		r := &results[i]
		k := key{r.Status, r.Target.Platform, r.Reason}
		if k == run {
			n++
			continue
		}
		flush()
		run, n = k, 1
	}
	flush()
}
