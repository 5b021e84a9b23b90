// Package journey runs journeys: publish (validate, dry run, store), then a
// runner per journey that streams the audience from profilesvc, renders a
// personalized notification per profile and platform, fans it out to every
// active token through the delivery pipeline, counts the outcomes, and
// checkpoints its progress so a restart resumes where it left off.
package journey

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// cancelWait bounds how long CancelJourney waits for a runner to drain
// before it answers.
const cancelWait = 800 * time.Millisecond

// ErrAppUnavailable is a journey naming an app that cannot send.
var ErrAppUnavailable = errors.New("app unavailable")

// Audience streams a journey's audience; remote.Audience backs it with
// profilesvc's QueryAudience. each is called per response batch; an error
// it returns stops the stream. A condition that does not compile is a
// *fault.ValidationError on "journey.audience.condition".
type Audience interface {
	Query(ctx context.Context, q *profilev1.QueryAudienceRequest, each func(*profilev1.QueryAudienceResponse) error) error
}

// AudienceCounter is an Audience that can count an audience more cheaply
// than streaming it (remote.Audience skips the members undecoded).
type AudienceCounter interface {
	Count(ctx context.Context, q *profilev1.QueryAudienceRequest) (int64, error)
}

// Apps looks up registered apps (apps.Service).
type Apps interface {
	App(ctx context.Context, key delivery.AppKey) (delivery.App, error)
}

// Sessions opens delivery sessions (*delivery.Pipeline).
type Sessions interface {
	OpenWith(ctx context.Context, emit func(delivery.Result), opts delivery.SessionOptions) *delivery.Session
}

// DefaultMaxWindow is Config.MaxWindow's default. The window must cover a
// message's whole way (queued, pushed, committed to the tracking outbox,
// checkpointed) at the journey's rate: at 2,000 it capped journeys near
// 20,000 notifications/s over loopback and would cap them far lower against
// Apple's and Google's WAN latency. Half the pipeline's default in-flight
// bound leaves Send streams room beside a journey, and a crash re-sends at
// most this many notifications, which the collapse id makes replacements.
const DefaultMaxWindow = 5000

// Config tunes the runners.
type Config struct {
	// CheckpointEvery is how often a runner saves progress; default 500 ms.
	CheckpointEvery time.Duration
	// MaxWindow bounds a runner's messages after its last checkpoint (a
	// profile without messages counts 1): in flight, or done but not yet
	// checkpointed. It is what a crash can make the journey send again,
	// and bounds its memory. A runner checkpoints early once half of it
	// is done. Default DefaultMaxWindow.
	MaxWindow int
	// SubmitBatch is how many messages a runner hands the pipeline at once;
	// default 500 (smaller under a throughput cap).
	SubmitBatch int
	// AudienceBatch is the members per QueryAudience response; default 500.
	AudienceBatch int
	// SkipAudienceCount turns off the count pass that sizes the audience
	// for the ETA (a second QueryAudience stream beside the run's).
	SkipAudienceCount bool
	Logger            *slog.Logger
	Now               func() time.Time
	// Metrics counts the journeys' sent pushes; nil counts nothing.
	Metrics *metrics.Metrics
}

// Manager publishes journeys and runs them.
type Manager struct {
	cfg      Config
	store    *Store
	audience Audience
	apps     Apps
	sessions Sessions
	recorder delivery.Recorder

	mu      sync.Mutex
	runners map[Ref]*runner
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
}

// NewManager builds a manager; Resume starts the unfinished journeys.
func NewManager(cfg Config, store *Store, audience Audience, apps Apps, sessions Sessions, recorder delivery.Recorder) *Manager {
	if cfg.CheckpointEvery <= 0 {
		cfg.CheckpointEvery = 500 * time.Millisecond
	}
	if cfg.MaxWindow <= 0 {
		cfg.MaxWindow = DefaultMaxWindow
	}
	if cfg.SubmitBatch <= 0 {
		cfg.SubmitBatch = 500
	}
	cfg.SubmitBatch = min(cfg.SubmitBatch, cfg.MaxWindow, delivery.MaxBatchMessages)
	if cfg.AudienceBatch <= 0 {
		cfg.AudienceBatch = 500
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{cfg: cfg, store: store, audience: audience, apps: apps, sessions: sessions, recorder: recorder,
		runners: map[Ref]*runner{}, ctx: ctx, cancel: cancel}
}

// Resume restarts every scheduled or running journey, from its checkpoint.
func (m *Manager) Resume() error {
	refs, err := m.store.Unfinished()
	if err != nil {
		return err
	}
	for _, ref := range refs {
		j, err := m.store.Get(ref.Tenant, ref.ID)
		if err != nil {
			return err
		}
		content, err := Compile(j)
		if err != nil {
			// It compiled at publish; a later version of the template
			// language refuses it. Fail that journey, not the service.
			m.cfg.Logger.Error("journey cannot resume", "journey_id", ref.ID, "tenant", ref.Tenant, "err", err)
			j.State, j.Error = deliveryv1.JourneyState_JOURNEY_STATE_FAILED, "cannot resume: "+err.Error()
			j.UpdateTime = timestamppb.New(m.cfg.Now())
			if err := m.store.Checkpoint(ref.Tenant, j, ""); err != nil && !errors.Is(err, ErrFinished) {
				// ErrFinished: it was cancelled since Unfinished listed it.
				return fmt.Errorf("journey %s: %w", ref.ID, err)
			}
			continue
		}
		m.cfg.Logger.Info("resuming journey", "journey_id", ref.ID, "tenant", ref.Tenant)
		m.start(ref, j, content, trace.SpanContext{})
	}
	return nil
}

// Close stops every runner (their progress is checkpointed; they resume on
// the next start) and waits for them.
func (m *Manager) Close() {
	m.cancel()
	m.wg.Wait()
}

// Stop stops every runner, like Close, but waits for them only until ctx
// ends, and returns the journeys still running then (none once all have
// stopped). A runner waits for its in-flight messages' outcomes to be
// recorded; while the disk fails, that lasts until the outboxes close
// (the writes then give up), so a service stopping calls Stop with a
// deadline, closes the outboxes, then calls Stop again. Stop may be called
// more than once.
func (m *Manager) Stop(ctx context.Context) []Ref {
	m.cancel()
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var left []Ref
	for ref := range m.runners {
		left = append(left, ref)
	}
	return left
}

// start runs a journey. parent, when valid, is the span of the publish
// call, so the journey's sends belong to the publisher's trace.
func (m *Manager) start(ref Ref, j *deliveryv1.Journey, content *Content, parent trace.SpanContext) {
	ctx, cancel := context.WithCancel(tenant.With(m.ctx, ref.Tenant))
	if parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	}
	// The runner owns its copy: the caller may still be marshalling j.
	r := newRunner(m, ref, proto.Clone(j).(*deliveryv1.Journey), content, cancel)
	m.mu.Lock()
	m.runners[ref] = r
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer func() {
			m.mu.Lock()
			delete(m.runners, ref)
			m.mu.Unlock()
		}()
		r.run(ctx)
	}()
}

// CountByState counts the journeys with a runner, by the state Get reports
// for them: SCHEDULED or RUNNING, or CANCELLED, COMPLETED or FAILED while
// one drains. It is for the journeys gauge.
func (m *Manager) CountByState() map[deliveryv1.JourneyState]int {
	m.mu.Lock()
	runners := make([]*runner, 0, len(m.runners))
	for _, r := range m.runners {
		runners = append(runners, r)
	}
	m.mu.Unlock()
	out := make(map[deliveryv1.JourneyState]int, 2)
	for _, r := range runners {
		r.mu.Lock()
		state := r.journey.GetState()
		if r.cancelAsked && !isFinal(state) {
			state = deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED // as snapshot says
		}
		r.mu.Unlock()
		out[state]++
	}
	return out
}

func (m *Manager) runner(ref Ref) *runner {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runners[ref]
}

// Get returns a journey with its live progress.
func (m *Manager) Get(ctx context.Context, id string) (*deliveryv1.Journey, error) {
	if id == "" {
		return nil, fault.Invalid("journey_id", "required")
	}
	ref := Ref{Tenant: tenant.FromContext(ctx), ID: id}
	if r := m.runner(ref); r != nil {
		return r.snapshot(), nil
	}
	return m.store.Get(ref.Tenant, id)
}

// List returns journeys newest first.
func (m *Manager) List(ctx context.Context, size int, token string, states []deliveryv1.JourneyState) ([]*deliveryv1.Journey, string, error) {
	switch {
	case size < 0 || size > 500:
		return nil, "", fault.Invalid("page_size", "must be 0 to 500, got %d", size)
	case size == 0:
		size = 50
	}
	want := map[deliveryv1.JourneyState]bool{}
	for i, s := range states {
		if _, ok := deliveryv1.JourneyState_name[int32(s)]; !ok || s == deliveryv1.JourneyState_JOURNEY_STATE_UNSPECIFIED {
			return nil, "", fault.Invalid(fmt.Sprintf("states[%d]", i), "unknown state %d", s)
		}
		want[s] = true
	}
	t := tenant.FromContext(ctx)
	js, next, err := m.store.List(t, size, token, want)
	if err != nil {
		return nil, "", err
	}
	for i, j := range js {
		if r := m.runner(Ref{Tenant: t, ID: j.GetJourneyId()}); r != nil {
			js[i] = r.snapshot()
		}
	}
	return js, next, nil
}

// Cancel stops a journey: its runner stops submitting at once and pending
// sends are cancelled, so sending stops within a second. CANCELLED is
// stored before Cancel answers, and a stored final state is never replaced
// (Store.Checkpoint), so a cancelled journey does not resume after a crash
// and a runner that has not yet seen the cancel stops at its next
// checkpoint.
func (m *Manager) Cancel(ctx context.Context, id string) (*deliveryv1.Journey, error) {
	if id == "" {
		return nil, fault.Invalid("journey_id", "required")
	}
	ref := Ref{Tenant: tenant.FromContext(ctx), ID: id}
	if r := m.runner(ref); r != nil {
		if err := r.cancelDurably(ctx); err != nil {
			return nil, err
		}
		select {
		case <-r.done():
			return m.store.Get(ref.Tenant, id)
		case <-time.After(cancelWait):
			// Sending has stopped (the runner's context is cancelled) and
			// CANCELLED is stored; the runner is still draining in-flight
			// results and stores its final counts when done.
			return r.snapshot(), nil
		}
	}
	j, err := m.store.Get(ref.Tenant, id)
	if err != nil {
		return nil, err
	}
	if isFinal(j.GetState()) {
		return nil, endedError(id, j.GetState())
	}
	j.State = deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED
	j.UpdateTime = timestamppb.New(m.cfg.Now())
	if j.Progress == nil {
		j.Progress = &deliveryv1.JourneyProgress{}
	}
	if j.Progress.EndTime == nil {
		j.Progress.EndTime = timestamppb.New(m.cfg.Now())
	}
	if err := m.store.Checkpoint(ref.Tenant, j, ""); err != nil {
		return nil, err // ErrFinished: it ended since the Get
	}
	// A runner started since the lookup above (a publish between its
	// Create and its start, or a resume) finds CANCELLED at its first
	// checkpoint, before it sends; stop one that got past it now rather
	// than at its next checkpoint.
	if r := m.runner(ref); r != nil {
		r.requestCancel()
	}
	return j, nil
}

// Watch calls send with the journey's state at most every interval, and
// whenever it changed, until the journey is final or ctx ends.
func (m *Manager) Watch(ctx context.Context, id string, interval time.Duration, send func(*deliveryv1.Journey) error) error {
	switch {
	case interval < 0 || interval > time.Hour:
		return fault.Invalid("interval", "must be 0 (500 ms) to 1h, got %s", interval)
	case interval == 0:
		interval = 500 * time.Millisecond
	case interval < 50*time.Millisecond:
		interval = 50 * time.Millisecond // polling faster would only burn CPU
	}
	var last *deliveryv1.Journey
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		j, err := m.Get(ctx, id)
		if err != nil {
			return err
		}
		if last == nil || !proto.Equal(j, last) {
			if err := send(j); err != nil {
				return err
			}
			last = j
		}
		if isFinal(j.GetState()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func isFinal(s deliveryv1.JourneyState) bool {
	switch s {
	case deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED, deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED, deliveryv1.JourneyState_JOURNEY_STATE_FAILED:
		return true
	}
	return false
}

// appKeys are the registrations a journey's app ids may have.
func appKeys(appID string) []delivery.AppKey {
	return []delivery.AppKey{
		{Platform: commonv1.Platform_PLATFORM_APNS, AppID: appID},
		{Platform: commonv1.Platform_PLATFORM_FCM, AppID: appID},
	}
}
