package journey

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

var tracer = otel.Tracer("github.com/pushmesh/pushmesh/deliverysvc/internal/journey")

// audienceRetries bounds how often a runner re-opens the audience stream
// after profilesvc failed, before the journey fails.
const audienceRetries = 5

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
		if c.excluded == nil {
			c.excluded = map[commonv1.ExclusionReason]int64{}
		}
		c.excluded[k] += v
	}
	for k, v := range o.failed {
		if c.failed == nil {
			c.failed = map[commonv1.FailureReason]int64{}
		}
		c.failed[k] += v
	}
}

// window is the journey's in-flight profiles, in audience (profile id)
// order. A profile leaves from the head once all its messages have a final
// result; its counts then join the committed counts, and its id becomes the
// checkpoint cursor. Counting only completed profiles keeps a resume from
// counting twice: everything after the cursor is sent (or found in the
// idempotency store) and counted again from scratch.
type window struct {
	entries []*inflight
	byID    map[string]*inflight
}

type inflight struct {
	profileID string
	pending   int
	submitted bool
	counts    counts
}

// runner runs one journey.
type runner struct {
	m       *Manager
	ref     Ref
	content *Content
	cancel  context.CancelFunc

	mu          sync.Mutex
	journey     *deliveryv1.Journey // state, progress base (committed) and definition
	committed   counts
	cursor      string
	window      *window
	cancelAsked bool
	finished    chan struct{}
	rateSamples []rateSample
	scannedBase int64
	scanned     int64
}

type rateSample struct {
	at   time.Time
	done int64
}

func (r *runner) done() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished == nil {
		r.finished = make(chan struct{})
	}
	return r.finished
}

func (r *runner) requestCancel() {
	r.mu.Lock()
	r.cancelAsked = true
	r.mu.Unlock()
	r.cancel()
}

// live is committed plus what the in-flight profiles already reported.
func (r *runner) live() counts {
	var c counts
	c.add(&r.committed)
	for _, e := range r.window.entries {
		c.add(&e.counts)
	}
	return c
}

// snapshot is the journey with its live progress.
func (r *runner) snapshot() *deliveryv1.Journey {
	r.mu.Lock()
	defer r.mu.Unlock()
	j := proto.Clone(r.journey).(*deliveryv1.Journey)
	c := r.live()
	fillProgress(j.Progress, &c)
	j.Progress.ProfilesScanned = r.scannedBase + r.scanned
	j.Progress.RatePerSecond = r.rate()
	return j
}

func fillProgress(p *deliveryv1.JourneyProgress, c *counts) {
	p.Qualified, p.TokensTargeted, p.Sent, p.TokensDeactivated = c.qualified, c.targeted, c.sent, c.deactivated
	p.Excluded = p.Excluded[:0]
	for _, reason := range sortedKeys(c.excluded) {
		p.Excluded = append(p.Excluded, &commonv1.ExclusionCount{Reason: reason, Count: c.excluded[reason]})
	}
	p.Failed = p.Failed[:0]
	for _, reason := range sortedKeys(c.failed) {
		p.Failed = append(p.Failed, &commonv1.FailureCount{Reason: reason, Count: c.failed[reason]})
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
	// Watchers may read the counters while the runner starts.
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.journey.GetProgress()
	r.committed = counts{qualified: p.GetQualified(), targeted: p.GetTokensTargeted(), sent: p.GetSent(), deactivated: p.GetTokensDeactivated()}
	for _, e := range p.GetExcluded() {
		r.committed.add(&counts{excluded: map[commonv1.ExclusionReason]int64{e.GetReason(): e.GetCount()}})
	}
	for _, f := range p.GetFailed() {
		r.committed.add(&counts{failed: map[commonv1.FailureReason]int64{f.GetReason(): f.GetCount()}})
	}
	r.scannedBase = p.GetProfilesScanned()
	cursor, err := r.m.store.Cursor(r.ref.Tenant, r.ref.ID)
	r.cursor = cursor
	return err
}

// rate is notifications per second over the last samples.
func (r *runner) rate() float64 {
	if len(r.rateSamples) < 2 {
		return 0
	}
	a, b := r.rateSamples[0], r.rateSamples[len(r.rateSamples)-1]
	if d := b.at.Sub(a.at).Seconds(); d > 0 {
		return float64(b.done-a.done) / d
	}
	return 0
}

// checkpoint saves committed progress and the cursor.
func (r *runner) checkpoint(state deliveryv1.JourneyState, errText string) error {
	r.mu.Lock()
	now := r.m.cfg.Now()
	c := r.live()
	r.rateSamples = append(r.rateSamples, rateSample{at: now, done: c.sent + failedTotal(&c)})
	if len(r.rateSamples) > 10 {
		r.rateSamples = r.rateSamples[1:]
	}
	r.journey.State = state
	r.journey.Error = errText
	r.journey.UpdateTime = timestamppb.New(now)
	if isFinal(state) {
		r.journey.Progress.EndTime = timestamppb.New(now)
	}
	j := proto.Clone(r.journey).(*deliveryv1.Journey)
	fillProgress(j.Progress, &r.committed)
	j.Progress.ProfilesScanned = r.scannedBase + r.scanned
	j.Progress.ProfilesDone = j.Progress.GetQualified()
	r.journey.Progress.ProfilesDone = j.Progress.ProfilesDone
	cursor := r.cursor
	r.mu.Unlock()
	return r.m.store.Checkpoint(r.ref.Tenant, j, cursor)
}

func failedTotal(c *counts) int64 {
	var n int64
	for _, v := range c.failed {
		n += v
	}
	return n
}

// run drives the journey to a final state.
func (r *runner) run(ctx context.Context) {
	log := r.m.cfg.Logger.With("journey_id", r.ref.ID)
	defer func() {
		r.mu.Lock()
		if r.finished == nil {
			r.finished = make(chan struct{})
		}
		close(r.finished)
		r.mu.Unlock()
	}()
	if err := r.restore(); err != nil {
		log.Error("journey restore", "err", err)
		return
	}
	// Wait for the start time.
	if st := r.journey.GetStartTime(); st != nil {
		if wait := st.AsTime().Sub(r.m.cfg.Now()); wait > 0 {
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				r.finish(log, ctx, nil)
				return
			}
		}
	}
	r.mu.Lock()
	if r.journey.Progress.GetStartTime() == nil {
		r.journey.Progress.StartTime = timestamppb.New(r.m.cfg.Now())
	}
	r.mu.Unlock()
	if err := r.checkpoint(deliveryv1.JourneyState_JOURNEY_STATE_RUNNING, ""); err != nil {
		log.Error("journey checkpoint", "err", err)
	}

	stopTicker := make(chan struct{})
	tickerDone := make(chan struct{})
	go func() {
		defer close(tickerDone)
		t := time.NewTicker(r.m.cfg.CheckpointEvery)
		defer t.Stop()
		for {
			select {
			case <-stopTicker:
				return
			case <-t.C:
				if err := r.checkpoint(deliveryv1.JourneyState_JOURNEY_STATE_RUNNING, ""); err != nil {
					log.Warn("journey checkpoint", "err", err)
				}
			}
		}
	}()
	err := r.send(ctx)
	close(stopTicker)
	<-tickerDone
	r.finish(log, ctx, err)
}

// finish records the final (or, on shutdown, the resumable) state.
func (r *runner) finish(log interface {
	Info(string, ...any)
	Error(string, ...any)
}, ctx context.Context, err error) {
	r.mu.Lock()
	cancelled := r.cancelAsked
	r.mu.Unlock()
	state, errText := deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED, ""
	switch {
	case cancelled:
		state = deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED
	case ctx.Err() != nil:
		// The service is shutting down: keep the state so the journey
		// resumes from its checkpoint on the next start.
		state = r.journey.GetState()
	case err != nil:
		state, errText = deliveryv1.JourneyState_JOURNEY_STATE_FAILED, err.Error()
	}
	if cerr := r.checkpoint(state, errText); cerr != nil {
		log.Error("journey checkpoint", "err", cerr)
	}
	log.Info("journey stopped", "state", state.String(), "err", errText)
}

// send streams the audience and submits every message; it returns once all
// submitted messages have their results.
func (r *runner) send(ctx context.Context) error {
	ctx, span := tracer.Start(ctx, "journey.run")
	defer span.End()
	span.SetAttributes(attribute.String("pushmesh.journey_id", r.ref.ID))

	session := r.m.sessions.Open(ctx, r.onResult)
	var limiter *rate.Limiter
	if max := r.journey.GetDelivery().GetMaxMessagesPerSecond(); max > 0 {
		limiter = rate.NewLimiter(rate.Limit(max), int(max))
	}
	batch := make([]delivery.Message, 0, r.m.cfg.SubmitBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if limiter != nil {
			for n := len(batch); n > 0; {
				take := min(n, limiter.Burst())
				if err := limiter.WaitN(ctx, take); err != nil {
					return err
				}
				n -= take
			}
		}
		err := session.Submit(batch)
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
			var exclusions []delivery.Result
			for _, member := range resp.GetMembers() {
				msgs, excl := r.admit(member)
				if excl != nil {
					exclusions = append(exclusions, *excl)
				}
				for _, msg := range msgs {
					batch = append(batch, msg)
					if len(batch) == cap(batch) {
						if err := flush(); err != nil {
							return err
						}
					}
				}
				after = member.GetProfileId()
			}
			r.mu.Lock()
			r.scanned = resp.GetStats().GetScanned()
			r.mu.Unlock()
			if len(exclusions) > 0 {
				if err := r.m.recorder.Record(ctx, exclusions); err != nil {
					return err
				}
			}
			// Profiles whose messages are all submitted may complete now.
			if err := flush(); err != nil {
				return err
			}
			r.mu.Lock()
			r.advance()
			r.mu.Unlock()
			return nil
		})
		if streamErr == nil || ctx.Err() != nil || attempt >= audienceRetries {
			break
		}
		var ve *fault.ValidationError
		if errors.As(streamErr, &ve) {
			break // a validation error will not heal
		}
		r.m.cfg.Logger.Warn("audience stream failed; resuming", "journey_id", r.ref.ID, "after", after, "err", streamErr)
		select {
		case <-time.After(time.Duration(1<<attempt) * 500 * time.Millisecond):
		case <-ctx.Done():
		}
	}
	if streamErr == nil {
		streamErr = flush()
	}
	closeErr := session.Close()
	r.mu.Lock()
	r.advance()
	r.mu.Unlock()
	if streamErr != nil {
		return fmt.Errorf("audience: %w", streamErr)
	}
	return closeErr
}

func (r *runner) query(after string) *profilev1.QueryAudienceRequest {
	a := r.journey.GetAudience()
	return &profilev1.QueryAudienceRequest{
		Condition: a.GetCondition(), AppIds: r.journey.GetAppIds(), Platforms: a.GetPlatforms(),
		RequireExplicitConsent: a.GetRequireExplicitConsent(), StartAfterProfileId: after, BatchSize: 500,
	}
}

// admit turns one audience member into messages (one per token) or an
// exclusion, and enters it in the window.
func (r *runner) admit(member *profilev1.AudienceMember) ([]delivery.Message, *delivery.Result) {
	e := &inflight{profileID: member.GetProfileId(), counts: counts{qualified: 1}}
	var msgs []delivery.Message
	reason := member.GetExclusionReason()
	if !member.GetExcluded() {
		var err error
		if msgs, err = r.messages(member); err != nil {
			reason = commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR
			msgs = nil
		}
	}
	var excl *delivery.Result
	if member.GetExcluded() || reason == commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR {
		e.counts.excluded = map[commonv1.ExclusionReason]int64{reason: 1}
		excl = &delivery.Result{
			IdempotencyKey: r.ref.ID + "/" + member.GetProfileId() + "/excluded",
			JourneyID:      r.ref.ID, MessageID: r.journey.GetMessageId(),
			Target: delivery.Target{ProfileID: member.GetProfileId()},
			Status: delivery.StatusExcluded, Exclusion: reason, Time: r.m.cfg.Now(),
		}
	}
	e.pending = len(msgs)
	e.submitted = true
	r.mu.Lock()
	if r.window.byID == nil {
		r.window.byID = map[string]*inflight{}
	}
	r.window.entries = append(r.window.entries, e)
	r.window.byID[e.profileID] = e
	r.mu.Unlock()
	return msgs, excl
}

// messages renders one message per active token of the member.
func (r *runner) messages(member *profilev1.AudienceMember) ([]delivery.Message, error) {
	v := &Values{ProfileID: member.GetProfileId(), Attributes: member.GetAttributes(), Identities: map[string]string{}}
	for _, id := range member.GetIdentities() {
		if _, ok := v.Identities[id.GetNamespace()]; !ok {
			v.Identities[id.GetNamespace()] = id.GetValue()
		}
	}
	locale := member.GetAttributes().GetFields()["locale"].GetStringValue()
	opts := r.journey.GetDelivery()
	rendered := map[commonv1.Platform]delivery.Notification{}
	msgs := make([]delivery.Message, 0, len(member.GetTokens()))
	for _, tok := range member.GetTokens() {
		n, ok := rendered[tok.GetPlatform()]
		if !ok {
			var err error
			if n, err = r.content.Render(tok.GetPlatform(), locale, v); err != nil {
				return nil, err
			}
			rendered[tok.GetPlatform()] = n
		}
		collapse := opts.GetCollapseId()
		if collapse == "" {
			collapse = r.journey.GetMessageId()
		}
		msgs = append(msgs, delivery.Message{
			IdempotencyKey: r.ref.ID + "/" + member.GetProfileId() + "/" + tokenKey(tok.GetToken()),
			MessageID:      r.journey.GetMessageId(),
			JourneyID:      r.ref.ID,
			Tokens: []delivery.Target{{
				Token: tok.GetToken(), Platform: tok.GetPlatform(), AppID: tok.GetAppId(),
				ProfileID: member.GetProfileId(), APNsEnvironment: tok.GetApnsEnvironment(),
			}},
			Notification: n,
			APNs:         delivery.APNsOptions{PushType: delivery.APNsPushType(opts.GetApnsPushType()), CollapseID: collapse},
			FCM:          delivery.FCMOptions{Priority: delivery.FCMPriority(opts.GetPriority()), CollapseKey: collapse},
			TTL:          opts.GetTtl().AsDuration(),
		})
	}
	return msgs, nil
}

// tokenKey keeps idempotency keys short whatever the token's length.
func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:12])
}

// onResult counts one result; called by the pipeline, concurrently.
func (r *runner) onResult(res delivery.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.window.byID[res.Target.ProfileID]
	if e == nil {
		return
	}
	switch res.Status {
	case delivery.StatusSent:
		e.counts.targeted++
		e.counts.sent++
	case delivery.StatusFailed:
		e.counts.targeted++
		if e.counts.failed == nil {
			e.counts.failed = map[commonv1.FailureReason]int64{}
		}
		e.counts.failed[res.Reason]++
		if delivery.ClassOf(res.Reason) == delivery.ClassToken {
			e.counts.deactivated++
		}
	case delivery.StatusExcluded:
		if e.counts.excluded == nil {
			e.counts.excluded = map[commonv1.ExclusionReason]int64{}
		}
		e.counts.excluded[res.Exclusion]++
	}
	if res.MessageDone {
		e.pending--
	}
}

// advance moves completed profiles from the head of the window into the
// committed counts and the cursor. r.mu is held.
func (r *runner) advance() {
	w := r.window
	i := 0
	for ; i < len(w.entries); i++ {
		e := w.entries[i]
		if !e.submitted || e.pending > 0 {
			break
		}
		r.committed.add(&e.counts)
		r.cursor = e.profileID
		delete(w.byID, e.profileID)
	}
	if i > 0 {
		w.entries = append(w.entries[:0], w.entries[i:]...)
	}
}
