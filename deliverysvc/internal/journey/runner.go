package journey

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

var tracer = otel.Tracer("github.com/pushmesh/pushmesh/deliverysvc/internal/journey")

const (
	// audienceRetries bounds how often a runner re-opens the audience
	// stream after profilesvc failed, before the journey fails.
	audienceRetries = 5
	// rateSamples is how many checkpoint ticks the rate looks back over.
	rateSamples = 10
	// appCacheTTL is how long a runner trusts what it learnt about an app's
	// registration.
	appCacheTTL = 10 * time.Second
)

// counts are a journey's outcome counters.
type counts struct {
	qualified, targeted, sent, deactivated int64
	excluded                               map[commonv1.ExclusionReason]int64
	failed                                 map[commonv1.FailureReason]int64
}

func (c *counts) add(o *counts) {
	c.qualified += o.qualified
	c.targeted += o.targeted
	c.sent += o.sent
	c.deactivated += o.deactivated
	for k, v := range o.excluded {
		c.exclude(k, v)
	}
	for k, v := range o.failed {
		c.fail(k, v)
	}
}

func (c *counts) exclude(reason commonv1.ExclusionReason, n int64) {
	if c.excluded == nil {
		c.excluded = map[commonv1.ExclusionReason]int64{}
	}
	c.excluded[reason] += n
}

func (c *counts) fail(reason commonv1.FailureReason, n int64) {
	if c.failed == nil {
		c.failed = map[commonv1.FailureReason]int64{}
	}
	c.failed[reason] += n
}

func (c *counts) failedTotal() int64 {
	var n int64
	for _, v := range c.failed {
		n += v
	}
	return n
}

// window is the journey's in-flight profiles, in audience (profile id)
// order. A profile leaves from the head once every one of its messages has
// a final result; its counts then join the committed counts and its id
// becomes the checkpoint cursor, so everything up to the cursor is done and
// a resume (start_after_profile_id = cursor) skips nobody and counts
// nothing twice.
//
// Config.MaxWindow bounds the messages after the last durable checkpoint:
// those in the window plus those that left it since the checkpoint
// (runner.undurable). That is all a kill -9 can make the journey send
// again, and it bounds the journey's memory.
type window struct {
	entries   []*inflight // entries[head:] are in the window
	head      int
	byProfile map[string]*inflight
	// weight is the window's size against Config.MaxWindow: each
	// profile's messages, at least 1 for a profile without any.
	weight int
}

func (w *window) len() int { return len(w.entries) - w.head }

func (w *window) push(e *inflight) {
	if w.byProfile == nil {
		w.byProfile = map[string]*inflight{}
	}
	w.entries = append(w.entries, e)
	w.byProfile[e.profileID] = e
	w.weight += e.weight()
}

// pop removes the head entry.
func (w *window) pop() {
	e := w.entries[w.head]
	w.entries[w.head] = nil
	w.head++
	delete(w.byProfile, e.profileID)
	w.weight -= e.weight()
	// Compact now and then so the backing array does not grow forever.
	if w.head > 1024 && w.head*2 > len(w.entries) {
		n := copy(w.entries, w.entries[w.head:])
		clear(w.entries[n:])
		w.entries, w.head = w.entries[:n], 0
	}
}

type inflight struct {
	profileID string
	messages  int
	pending   int
	// interrupted is set when a message ended CANCELLED: the profile is
	// not done, and a resume must send to it again.
	interrupted bool
	counts      counts
}

func (e *inflight) weight() int { return max(1, e.messages) }

// runner runs one journey.
type runner struct {
	m         *Manager
	ref       Ref
	content   *Content
	cancel    context.CancelFunc
	finished  chan struct{}
	keyPrefix string // ref.ID + "/": idempotency keys are prefix+profile+"/"+token hash
	apps      appCache

	// space is signalled when the window shrinks; checkpointNow when
	// enough profiles completed since the last checkpoint.
	space         chan struct{}
	checkpointNow chan struct{}
	// logCheckpointFailure keeps a failing disk (checkpoints every 500 ms)
	// to a line per checkpointLogInterval.
	logCheckpointFailure rate.Sometimes

	// writeMu orders the journey's writes to the store (checkpoints, the
	// final state, a cancel): each stores the progress as it is when it
	// writes, and a cancel and the runner's own final state cannot
	// interleave. It is taken before mu.
	writeMu sync.Mutex

	mu sync.Mutex
	// journey is the runner's own copy: definition, times and the state
	// last stored.
	journey      *deliveryv1.Journey
	committed    counts
	cursor       string
	window       window
	cancelAsked  bool
	scannedBase  int64 // profiles scanned by earlier audience streams
	scanned      int64 // by the current one
	audienceSize int64 // qualified profiles in all, from the count pass; -1 unknown
	// undurable is the weight of the profiles that left the window since
	// the last checkpoint: done, but a crash would send to them again.
	undurable int
	samples   []rateSample
}

type rateSample struct {
	at                   time.Time
	notifications, profs int64
}

func newRunner(m *Manager, ref Ref, j *deliveryv1.Journey, content *Content, cancel context.CancelFunc) *runner {
	return &runner{
		m: m, ref: ref, content: content, cancel: cancel, journey: j,
		finished: make(chan struct{}), keyPrefix: ref.ID + "/", audienceSize: -1,
		space: make(chan struct{}, 1), checkpointNow: make(chan struct{}, 1),
		logCheckpointFailure: rate.Sometimes{Interval: checkpointLogInterval},
		apps:                 appCache{known: map[delivery.AppKey]bool{}},
	}
}

func (r *runner) done() <-chan struct{} { return r.finished }

// requestCancel stops the runner; it ends CANCELLED. Whoever calls it
// stores CANCELLED, or has found it stored already.
func (r *runner) requestCancel() {
	r.mu.Lock()
	r.cancelAsked = true
	r.mu.Unlock()
	r.cancel()
}

// cancelDurably stops the runner and stores CANCELLED, with the progress so
// far, before it returns: the cancel holds even if the service dies before
// the runner has drained and stored its final counts. A journey that ended
// or is already being cancelled is ErrFinished.
func (r *runner) cancelDurably(ctx context.Context) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	state, again := r.journey.GetState(), r.cancelAsked
	r.mu.Unlock()
	switch {
	case isFinal(state):
		return endedError(r.ref.ID, state)
	case again:
		return fault.OnField(ErrFinished, "journey_id", "journey %s is already being cancelled", r.ref.ID)
	}
	r.requestCancel()
	return r.checkpointLocked(ctx, deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED, "", true)
}

// live is committed plus what the profiles in the window reported so far.
// r.mu is held.
func (r *runner) live() counts {
	var c counts
	c.add(&r.committed)
	for _, e := range r.window.entries[r.window.head:] {
		c.add(&e.counts)
	}
	return c
}

// snapshot is the journey with its live progress. Once a cancel was asked
// it is CANCELLED, as stored, while the runner drains.
func (r *runner) snapshot() *deliveryv1.Journey {
	r.mu.Lock()
	defer r.mu.Unlock()
	j := proto.Clone(r.journey).(*deliveryv1.Journey)
	c := r.live()
	r.fillProgress(j.Progress, &c)
	if r.cancelAsked && !isFinal(j.GetState()) {
		j.State = deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED
		j.Progress.RatePerSecond, j.Progress.Eta = 0, nil
	}
	return j
}

// fillProgress writes counts c and the runner's rate and ETA into p. r.mu
// is held.
func (r *runner) fillProgress(p *deliveryv1.JourneyProgress, c *counts) {
	p.Qualified, p.TokensTargeted, p.Sent, p.TokensDeactivated = c.qualified, c.targeted, c.sent, c.deactivated
	p.Excluded = p.Excluded[:0]
	for _, reason := range sortedKeys(c.excluded) {
		p.Excluded = append(p.Excluded, &commonv1.ExclusionCount{Reason: reason, Count: c.excluded[reason]})
	}
	p.Failed = p.Failed[:0]
	for _, reason := range sortedKeys(c.failed) {
		p.Failed = append(p.Failed, &commonv1.FailureCount{Reason: reason, Count: c.failed[reason]})
	}
	p.ProfilesScanned = r.scannedBase + r.scanned
	p.ProfilesDone = r.committed.qualified
	p.RatePerSecond, p.Eta = 0, nil
	if isFinal(r.journey.GetState()) || len(r.samples) < 2 {
		return
	}
	first, last := r.samples[0], r.samples[len(r.samples)-1]
	secs := last.at.Sub(first.at).Seconds()
	if secs <= 0 {
		return
	}
	p.RatePerSecond = float64(last.notifications-first.notifications) / secs
	profileRate := float64(last.profs-first.profs) / secs
	// The ETA needs the audience size (the count pass) and a rate.
	if r.audienceSize >= 0 && profileRate > 0 {
		remaining := max(0, r.audienceSize-c.qualified)
		p.Eta = durationpb.New(time.Duration(float64(remaining) / profileRate * float64(time.Second)).Round(time.Second))
	}
}

func sortedKeys[K ~int32, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// restore loads the committed counts and cursor of a resumed journey.
func (r *runner) restore() error {
	cursor, err := r.m.store.Cursor(r.ref.Tenant, r.ref.ID)
	if err != nil {
		return err
	}
	// Watchers may read the counters while the runner starts.
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cursor = cursor
	p := r.journey.GetProgress()
	if p == nil {
		p = &deliveryv1.JourneyProgress{}
		r.journey.Progress = p
	}
	r.committed = counts{qualified: p.GetQualified(), targeted: p.GetTokensTargeted(), sent: p.GetSent(), deactivated: p.GetTokensDeactivated()}
	for _, e := range p.GetExcluded() {
		r.committed.exclude(e.GetReason(), e.GetCount())
	}
	for _, f := range p.GetFailed() {
		r.committed.fail(f.GetReason(), f.GetCount())
	}
	r.scannedBase = p.GetProfilesScanned()
	return nil
}

// sample records the progress for the rate and the ETA. r.mu is held.
func (r *runner) sample(now time.Time) {
	c := r.live()
	r.samples = append(r.samples, rateSample{at: now, notifications: c.sent + c.failedTotal(), profs: c.qualified})
	if len(r.samples) > rateSamples {
		r.samples = append(r.samples[:0], r.samples[1:]...)
	}
}

// checkpoint saves the journey's state, its committed progress and the
// cursor in one transaction. With liveCounts (a final state that will not
// resume) the progress includes the profiles still in the window. The
// store refuses to replace a final state (ErrFinished): the journey was
// cancelled before this runner knew.
func (r *runner) checkpoint(ctx context.Context, state deliveryv1.JourneyState, errText string, liveCounts bool) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	return r.checkpointLocked(ctx, state, errText, liveCounts)
}

// checkpointLocked is checkpoint with r.writeMu held. The runner's copy
// takes the new state unless the store refused it.
func (r *runner) checkpointLocked(ctx context.Context, state deliveryv1.JourneyState, errText string, liveCounts bool) error {
	_, span := tracer.Start(ctx, "journey.checkpoint", trace.WithAttributes(attribute.String("pushmesh.journey_id", r.ref.ID)))
	defer span.End()
	r.mu.Lock()
	if state == deliveryv1.JourneyState_JOURNEY_STATE_RUNNING && r.cancelAsked {
		// CANCELLED is stored (or about to be, by the runner's last
		// checkpoint); a cancelled journey never resumes from a cursor.
		r.mu.Unlock()
		return nil
	}
	now := r.m.cfg.Now()
	r.sample(now)
	saved := r.undurable
	j := proto.Clone(r.journey).(*deliveryv1.Journey)
	j.State, j.Error, j.UpdateTime = state, errText, timestamppb.New(now)
	if isFinal(state) && j.Progress.GetEndTime() == nil {
		j.Progress.EndTime = timestamppb.New(now)
	}
	c := r.committed
	if liveCounts {
		c = r.live()
	}
	r.fillProgress(j.Progress, &c)
	j.Progress.RatePerSecond, j.Progress.Eta = 0, nil // stale as soon as stored
	cursor := r.cursor
	r.mu.Unlock()
	span.SetAttributes(attribute.Int64("pushmesh.profiles_done", j.GetProgress().GetProfilesDone()))
	err := r.m.store.Checkpoint(r.ref.Tenant, j, cursor)
	if errors.Is(err, ErrFinished) {
		span.RecordError(err)
		return err
	}
	r.mu.Lock()
	r.journey.State, r.journey.Error = state, errText
	r.journey.UpdateTime, r.journey.Progress.EndTime = proto.CloneOf(j.UpdateTime), proto.CloneOf(j.Progress.EndTime)
	if err == nil {
		r.undurable -= saved
	}
	r.mu.Unlock()
	if err != nil {
		span.RecordError(err)
		return err
	}
	r.signalSpace()
	return nil
}

// signalSpace wakes the runner if it waits for room in the window.
func (r *runner) signalSpace() {
	select {
	case r.space <- struct{}{}:
	default:
	}
}

// run drives the journey to a final state (or, when the service stops, to
// its last checkpoint).
func (r *runner) run(ctx context.Context) {
	log := r.m.cfg.Logger.With("journey_id", r.ref.ID, "tenant", r.ref.Tenant)
	defer close(r.finished)
	if err := r.restore(); err != nil {
		log.Error("journey restore", "err", err)
		return
	}
	if st := r.journey.GetStartTime(); st != nil {
		if wait := st.AsTime().Sub(r.m.cfg.Now()); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				r.finish(ctx, log, nil)
				return
			}
		}
	}
	r.mu.Lock()
	if r.journey.Progress.GetStartTime() == nil {
		r.journey.Progress.StartTime = timestamppb.New(r.m.cfg.Now())
	}
	r.mu.Unlock()
	// This checkpoint comes before anything is sent: a cancel stored
	// before the runner started (between publish's Create and start, or
	// before a resume) stops it here.
	if err := r.checkpoint(ctx, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING, "", false); err != nil {
		r.checkpointFailed(log, err)
	}
	if ctx.Err() != nil {
		r.finish(ctx, log, nil)
		return
	}

	// Checkpoints every CheckpointEvery, or sooner once half the window's
	// worth of messages completed since the last one.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.m.cfg.CheckpointEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			case <-r.checkpointNow:
			}
			if err := r.checkpoint(ctx, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING, "", false); err != nil {
				r.checkpointFailed(log, err)
			}
		}
	}()
	if !r.m.cfg.SkipAudienceCount {
		countCtx, cancelCount := context.WithCancel(ctx)
		defer cancelCount()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.countAudience(countCtx, log)
		}()
		err := r.send(ctx)
		cancelCount()
		close(stop)
		wg.Wait()
		r.finish(ctx, log, err)
		return
	}
	err := r.send(ctx)
	close(stop)
	wg.Wait()
	r.finish(ctx, log, err)
}

// checkpointFailed handles a failed RUNNING checkpoint: the store refuses
// it once the journey is cancelled (ErrFinished), and the runner stops;
// any other failure only delays durability until the next one.
func (r *runner) checkpointFailed(log interface {
	Info(string, ...any)
	Warn(string, ...any)
}, err error) {
	if errors.Is(err, ErrFinished) {
		log.Info("journey cancelled in the store; stopping", "err", err)
		r.requestCancel()
		return
	}
	r.logCheckpointFailure.Do(func() {
		log.Warn("journey checkpoint failed; progress since the last one would be sent again after a crash", "err", err)
	})
}

// checkpointLogInterval is the least time between two log lines about
// failed checkpoints of one journey.
const checkpointLogInterval = 10 * time.Second

// countAudience counts the whole audience once, for the ETA, beside the
// run: an AudienceCounter when the audience is one, else the same query as
// the run, in big batches.
func (r *runner) countAudience(ctx context.Context, log interface{ Debug(string, ...any) }) {
	q := r.query("")
	q.BatchSize = 5000
	var n int64
	var err error
	if c, ok := r.m.audience.(AudienceCounter); ok {
		n, err = c.Count(ctx, q)
	} else {
		err = r.m.audience.Query(ctx, q, func(resp *profilev1.QueryAudienceResponse) error {
			n = resp.GetStats().GetQualified()
			return nil
		})
	}
	if err != nil {
		log.Debug("journey audience count", "err", err)
		return
	}
	r.mu.Lock()
	r.audienceSize = n
	r.mu.Unlock()
}

// finish records the final (or, on shutdown, the resumable) state. A
// failed write of a final state is tried again every CheckpointEvery while
// the service runs: a journey whose end is not stored would show RUNNING,
// with no runner, until a restart resumed it. Once the service stops, the
// journey is left to resume from its last durable checkpoint.
func (r *runner) finish(ctx context.Context, log interface {
	Info(string, ...any)
	Error(string, ...any)
}, err error) {
	for r.finishOnce(ctx, log, err) {
		t := time.NewTimer(r.m.cfg.CheckpointEvery)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

// finishOnce makes one attempt at finish's write and reports whether to
// try again. It decides under r.writeMu, so a cancel either comes first and
// the journey ends CANCELLED, or comes after the stored final state and is
// refused.
func (r *runner) finishOnce(ctx context.Context, log interface {
	Info(string, ...any)
	Error(string, ...any)
}, err error) (again bool) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	cancelled := r.cancelAsked
	state := r.journey.GetState()
	r.mu.Unlock()
	errText, liveCounts := "", true
	stopping := false
	switch {
	case err == nil && ctx.Err() == nil:
		state = deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED
	case cancelled:
		state = deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED
	case ctx.Err() != nil:
		// The service is stopping: keep the state and the committed
		// progress, so the journey resumes from its cursor on the next
		// start.
		liveCounts, stopping = false, true
	default:
		state, errText = deliveryv1.JourneyState_JOURNEY_STATE_FAILED, err.Error()
	}
	// The final write must happen even though ctx is done.
	cerr := r.checkpointLocked(context.WithoutCancel(ctx), state, errText, liveCounts)
	switch {
	case errors.Is(cerr, ErrFinished):
		// Cancelled in the store before this runner knew; that stands.
		log.Info("journey already ended", "err", cerr)
		return false
	case cerr != nil && !stopping && ctx.Err() == nil:
		r.logCheckpointFailure.Do(func() {
			log.Error("journey's final state not stored; trying again", "state", strings.TrimPrefix(state.String(), "JOURNEY_STATE_"), "err", cerr)
		})
		return true
	case cerr != nil:
		log.Error("journey checkpoint; the journey resumes from its last checkpoint on the next start", "err", cerr)
	}
	log.Info("journey stopped", "state", strings.TrimPrefix(state.String(), "JOURNEY_STATE_"), "err", errText)
	return false
}

// send streams the audience and submits every message; it returns once all
// submitted messages have their results.
func (r *runner) send(ctx context.Context) error {
	ctx, span := tracer.Start(ctx, "journey.run", trace.WithAttributes(attribute.String("pushmesh.journey_id", r.ref.ID)))
	defer span.End()

	// The runner's checkpoints are its idempotency record (see window).
	session := r.m.sessions.OpenWith(ctx, r.onResult, delivery.SessionOptions{CallerCheckpoints: true})
	var limiter *rate.Limiter
	batchSize := r.m.cfg.SubmitBatch
	if perSecond := int(r.journey.GetDelivery().GetMaxMessagesPerSecond()); perSecond > 0 {
		// Small batches under a cap, so sends are spread over the second
		// instead of going out in bursts; the burst is one batch.
		batchSize = min(batchSize, max(1, perSecond/10))
		limiter = rate.NewLimiter(rate.Limit(perSecond), batchSize)
	}
	batch := make([]delivery.Message, 0, batchSize)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if limiter != nil {
			if err := limiter.WaitN(ctx, len(batch)); err != nil {
				return err
			}
		}
		err := session.Submit(batch)
		clear(batch)
		batch = batch[:0]
		return err
	}
	after := r.cursor
	var streamErr error
	for attempt := 0; ; attempt++ {
		r.mu.Lock()
		r.scannedBase += r.scanned
		r.scanned = 0
		r.mu.Unlock()
		streamErr = r.m.audience.Query(ctx, r.query(after), func(resp *profilev1.QueryAudienceResponse) error {
			attempt = 0
			return r.admitBatch(ctx, resp, &batch, flush, &after)
		})
		if streamErr == nil || ctx.Err() != nil || attempt >= audienceRetries {
			break
		}
		var ve *fault.ValidationError
		if errors.As(streamErr, &ve) {
			break // a validation error will not heal
		}
		r.m.cfg.Logger.Warn("audience stream failed; resuming", "journey_id", r.ref.ID, "after", after, "err", streamErr)
		t := time.NewTimer(time.Duration(1<<attempt) * 500 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if streamErr == nil {
		streamErr = flush()
	}
	closeErr := session.Close()
	if streamErr != nil {
		span.RecordError(streamErr)
		return fmt.Errorf("audience: %w", streamErr)
	}
	return closeErr
}

// admitBatch plans one response's members, records their exclusions, and
// admits them into the window, submitting their messages.
func (r *runner) admitBatch(ctx context.Context, resp *profilev1.QueryAudienceResponse, batch *[]delivery.Message, flush func() error, after *string) error {
	ctx, span := tracer.Start(ctx, "journey.audience_batch", trace.WithAttributes(
		attribute.String("pushmesh.journey_id", r.ref.ID), attribute.Int("pushmesh.members", len(resp.GetMembers()))))
	defer span.End()
	members := resp.GetMembers()
	plans := make([]plan, len(members))
	var exclusions []delivery.Result
	for i, member := range members {
		plans[i] = r.plan(ctx, member)
		if plans[i].exclusion != commonv1.ExclusionReason_EXCLUSION_REASON_UNSPECIFIED {
			exclusions = append(exclusions, r.exclusionResult(member.GetProfileId(), plans[i]))
		}
	}
	// Exclusions are durable before their profiles can pass the cursor.
	if len(exclusions) > 0 {
		if err := r.m.recorder.Record(ctx, exclusions); err != nil {
			return fmt.Errorf("record exclusions: %w", err)
		}
	}
	r.mu.Lock()
	r.scanned = resp.GetStats().GetScanned()
	r.mu.Unlock()
	for i, member := range members {
		p := &plans[i]
		if err := r.waitForSpace(ctx, max(1, len(p.msgs)), flush); err != nil {
			return err
		}
		e := &inflight{profileID: member.GetProfileId(), messages: len(p.msgs), pending: len(p.msgs), counts: counts{qualified: 1}}
		if p.exclusion != commonv1.ExclusionReason_EXCLUSION_REASON_UNSPECIFIED {
			e.counts.exclude(p.exclusion, 1)
		}
		r.mu.Lock()
		r.window.push(e)
		if e.pending == 0 {
			r.advance()
		}
		r.mu.Unlock()
		for _, msg := range p.msgs {
			*batch = append(*batch, msg)
			if len(*batch) == cap(*batch) {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		*after = member.GetProfileId()
	}
	span.SetAttributes(attribute.Int("pushmesh.exclusions", len(exclusions)))
	// Messages waiting in the batch go now: the next response may be a
	// while (a selective condition scans many profiles per member).
	return flush()
}

// waitForSpace returns once the window can take a profile of weight need.
// Messages waiting in the batch are submitted first, since the window
// drains only as they complete (and are checkpointed).
func (r *runner) waitForSpace(ctx context.Context, need int, flush func() error) error {
	for {
		r.mu.Lock()
		used := r.window.weight + r.undurable
		ok := used == 0 || used+need <= r.m.cfg.MaxWindow
		r.mu.Unlock()
		if ok {
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		select {
		case <-r.space:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *runner) query(after string) *profilev1.QueryAudienceRequest {
	a := r.journey.GetAudience()
	return &profilev1.QueryAudienceRequest{
		Condition: a.GetCondition(), AppIds: r.journey.GetAppIds(), Platforms: a.GetPlatforms(),
		RequireExplicitConsent: a.GetRequireExplicitConsent(), StartAfterProfileId: after, BatchSize: int32(r.m.cfg.AudienceBatch),
		MemberFields: r.content.MemberFields(),
	}
}

// plan is what a journey does with one audience member: messages, one per
// sendable token, or an exclusion.
type plan struct {
	msgs      []delivery.Message
	exclusion commonv1.ExclusionReason
	detail    string
}

// plan renders one message per active token of a member whose app is
// registered, or says why the member is excluded.
func (r *runner) plan(ctx context.Context, member *profilev1.AudienceMember) plan {
	if member.GetExcluded() {
		reason := member.GetExclusionReason()
		if reason == commonv1.ExclusionReason_EXCLUSION_REASON_UNSPECIFIED {
			reason = commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN
		}
		return plan{exclusion: reason, detail: "excluded by profilesvc"}
	}
	tokens := member.GetTokens()
	if len(tokens) == 0 {
		return plan{exclusion: commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, detail: "no active token"}
	}
	v := Values{ProfileID: member.GetProfileId(), Attributes: member.GetAttributes(), Identities: member.GetIdentities()}
	locale := member.GetAttributes().GetFields()[localeAttribute].GetStringValue()
	// A profile has tokens of at most two platforms: render each once.
	var rendered [2]struct {
		platform commonv1.Platform
		n        delivery.Notification
	}
	nRendered := 0
	msgs := make([]delivery.Message, 0, len(tokens))
	for _, tok := range tokens {
		if !r.apps.registered(ctx, r.m.apps, delivery.AppKey{Platform: tok.GetPlatform(), AppID: tok.GetAppId()}, r.m.cfg.Now()) {
			continue
		}
		var n *delivery.Notification
		for i := range nRendered {
			if rendered[i].platform == tok.GetPlatform() {
				n = &rendered[i].n
			}
		}
		if n == nil {
			out, err := r.content.Render(tok.GetPlatform(), locale, &v)
			if err != nil {
				return plan{exclusion: commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR, detail: err.Error()}
			}
			// The gateway's size limit depends on the platform and on what
			// the pipeline adds (tracking ids, JSON escaping): checked
			// here, a profile whose values are too long is excluded with
			// the API's own reason for it, instead of failing every send
			// to its devices.
			probe := delivery.Message{MessageID: r.journey.GetMessageId(), JourneyID: r.ref.ID, Notification: out,
				APNs: delivery.APNsOptions{PushType: delivery.APNsPushType(r.journey.GetDelivery().GetApnsPushType())}}
			if err := delivery.CheckPayloadSize(&probe, tok.GetPlatform(), r.m.cfg.Now()); err != nil {
				return plan{exclusion: commonv1.ExclusionReason_EXCLUSION_REASON_PAYLOAD_TOO_LARGE,
					detail: "the profile's values make the notification too large: " + err.Error()}
			}
			i := min(nRendered, len(rendered)-1)
			rendered[i].platform, rendered[i].n = tok.GetPlatform(), out
			nRendered = i + 1
			n = &rendered[i].n
		}
		msgs = append(msgs, r.message(member.GetProfileId(), tok, n))
	}
	if len(msgs) == 0 {
		return plan{exclusion: commonv1.ExclusionReason_EXCLUSION_REASON_APP_NOT_REGISTERED, detail: "no token of an app registered in deliverysvc"}
	}
	return plan{msgs: msgs}
}

// message is the journey's message to one token of a profile.
func (r *runner) message(profileID string, tok *profilev1.PushToken, n *delivery.Notification) delivery.Message {
	opts := r.journey.GetDelivery()
	return delivery.Message{
		IdempotencyKey: r.idempotencyKey(profileID, tok.GetToken()),
		MessageID:      r.journey.GetMessageId(),
		JourneyID:      r.ref.ID,
		Tokens: []delivery.Target{{
			Token: tok.GetToken(), Platform: tok.GetPlatform(), AppID: tok.GetAppId(),
			ProfileID: profileID, APNsEnvironment: tok.GetApnsEnvironment(),
		}},
		Notification: *n,
		// Collapse id: the option, else the pipeline uses the message
		// id, so every push of the journey (and any resend) collapses.
		APNs: delivery.APNsOptions{PushType: delivery.APNsPushType(opts.GetApnsPushType()), CollapseID: opts.GetCollapseId()},
		FCM:  delivery.FCMOptions{Priority: delivery.FCMPriority(opts.GetPriority()), CollapseKey: opts.GetCollapseId()},
		TTL:  opts.GetTtl().AsDuration(),
	}
}

// exclusionResult is the EXCLUDED outcome trackingsvc receives for a
// profile the journey does not send to.
func (r *runner) exclusionResult(profileID string, p plan) delivery.Result {
	return delivery.Result{
		IdempotencyKey: r.keyPrefix + profileID + "/excluded",
		JourneyID:      r.ref.ID, MessageID: r.journey.GetMessageId(),
		Target: delivery.Target{ProfileID: profileID},
		Status: delivery.StatusExcluded, Exclusion: p.exclusion, Detail: p.detail, Time: r.m.cfg.Now(),
	}
}

// tokenHashLen is the hex length of the token hash in idempotency keys.
const tokenHashLen = 24

// idempotencyKey is journey/profile/hash(token): stable across restarts,
// short whatever the token's length, and never the token itself.
func (r *runner) idempotencyKey(profileID, token string) string {
	sum := sha256.Sum256([]byte(token))
	b := make([]byte, 0, len(r.keyPrefix)+len(profileID)+1+tokenHashLen)
	b = append(b, r.keyPrefix...)
	b = append(b, profileID...)
	b = append(b, '/')
	b = hex.AppendEncode(b, sum[:tokenHashLen/2])
	return string(b)
}

// profileOf is the profile id inside one of the runner's idempotency keys.
func (r *runner) profileOf(key string) (string, bool) {
	if !strings.HasPrefix(key, r.keyPrefix) || len(key) < len(r.keyPrefix)+1+tokenHashLen {
		return "", false
	}
	return key[len(r.keyPrefix) : len(key)-1-tokenHashLen], true
}

// onResult counts one result; the pipeline calls it concurrently.
func (r *runner) onResult(res delivery.Result) {
	profileID, ok := r.profileOf(res.IdempotencyKey)
	if !ok {
		return
	}
	if res.Status == delivery.StatusSent && !res.Duplicate { // a duplicate repeats an earlier push's outcome
		r.m.cfg.Metrics.JourneySent(context.Background(), res.Target.Platform, 1)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.window.byProfile[profileID]
	if e == nil {
		return
	}
	switch res.Status {
	case delivery.StatusSent:
		e.counts.targeted++
		e.counts.sent++
	case delivery.StatusFailed:
		e.counts.targeted++
		e.counts.fail(res.Reason, 1)
		if res.Reason == commonv1.FailureReason_FAILURE_REASON_CANCELLED {
			e.interrupted = true
		}
		if delivery.ClassOf(res.Reason) == delivery.ClassToken {
			e.counts.deactivated++
		}
	case delivery.StatusExcluded:
		e.counts.exclude(res.Exclusion, 1)
	}
	if res.MessageDone {
		e.pending--
		if e.pending == 0 {
			r.advance()
		}
	}
}

// advance moves completed profiles from the head of the window into the
// committed counts and the cursor. r.mu is held.
func (r *runner) advance() {
	w := &r.window
	for w.len() > 0 {
		e := w.entries[w.head]
		if e.pending > 0 || e.interrupted {
			break
		}
		r.committed.add(&e.counts)
		r.cursor = e.profileID
		r.undurable += e.weight()
		w.pop()
	}
	// The window's room comes back at the checkpoint; ask for one early
	// enough that the runner rarely waits for it.
	if r.undurable >= r.m.cfg.MaxWindow/2 {
		select {
		case r.checkpointNow <- struct{}{}:
		default:
		}
	}
}

// appCache remembers whether apps are registered, for the runner's own
// goroutine: a token of an app deliverysvc does not know is excluded
// (APP_NOT_REGISTERED) instead of being sent to fail.
type appCache struct {
	at    time.Time
	known map[delivery.AppKey]bool
}

func (c *appCache) registered(ctx context.Context, a Apps, key delivery.AppKey, now time.Time) bool {
	if now.Sub(c.at) > appCacheTTL {
		clear(c.known)
		c.at = now
	}
	if ok, seen := c.known[key]; seen {
		return ok
	}
	_, err := a.App(ctx, key)
	// Only a definite "not registered" excludes; any other error is the
	// pipeline's to report on the message.
	ok := !(errors.Is(err, apps.ErrNotFound) || errors.Is(err, delivery.ErrAppNotFound))
	c.known[key] = ok
	return ok
}
