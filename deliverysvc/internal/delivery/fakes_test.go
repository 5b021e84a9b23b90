package delivery

import (
	"context"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// Hand-written fakes of the pipeline's collaborators: each method calls its
// function field.

type fakeApps struct {
	AppFunc     func(ctx context.Context, key AppKey) (App, error)
	SuspendFunc func(ctx context.Context, key AppKey, reason commonv1.FailureReason, detail string) error
}

func (f *fakeApps) App(ctx context.Context, key AppKey) (App, error) { return f.AppFunc(ctx, key) }
func (f *fakeApps) Suspend(ctx context.Context, key AppKey, reason commonv1.FailureReason, detail string) error {
	return f.SuspendFunc(ctx, key, reason, detail)
}

type fakeSender struct {
	SendFunc func(ctx context.Context, pushes []Push) []Attempt
}

func (f *fakeSender) Send(ctx context.Context, pushes []Push) []Attempt {
	return f.SendFunc(ctx, pushes)
}

type fakeResolver struct {
	ProfileTokensFunc func(ctx context.Context, t ProfileTarget) ([]Target, error)
}

func (f *fakeResolver) ProfileTokens(ctx context.Context, t ProfileTarget) ([]Target, error) {
	return f.ProfileTokensFunc(ctx, t)
}

type fakeRecorder struct {
	RecordFunc func(ctx context.Context, results []Result) error
	// AsyncFunc, when set, replaces RecordAsync (to hold a commit back).
	AsyncFunc func(ctx context.Context, results []Result, done func(error))
}

func (f *fakeRecorder) Record(ctx context.Context, results []Result) error {
	return f.RecordFunc(ctx, results)
}

// RecordAsync answers on another goroutine, as the outbox does.
func (f *fakeRecorder) RecordAsync(ctx context.Context, results []Result, done func(error)) {
	if f.AsyncFunc != nil {
		f.AsyncFunc(ctx, results, done)
		return
	}
	err := f.RecordFunc(ctx, results)
	go done(err)
}

type fakeFeedback struct {
	ReportDeadFunc func(ctx context.Context, dead []DeadToken) error
}

// ReportDeadAsync answers on another goroutine, as the outbox does.
func (f *fakeFeedback) ReportDeadAsync(ctx context.Context, dead []DeadToken, done func(error)) {
	err := f.ReportDeadFunc(ctx, dead)
	go done(err)
}

type fakeDedupe struct {
	LookupFunc   func(ctx context.Context, keys []string) (map[string][]Result, error)
	RememberFunc func(ctx context.Context, key string, results []Result)
}

func (f *fakeDedupe) Lookup(ctx context.Context, keys []string) (map[string][]Result, error) {
	return f.LookupFunc(ctx, keys)
}
func (f *fakeDedupe) Remember(ctx context.Context, key string, results []Result) {
	f.RememberFunc(ctx, key, results)
}

// harness is a pipeline over fakes that record what they are given. Tests
// replace the function fields they care about before Open.
type harness struct {
	t        *testing.T
	apps     *fakeApps
	sender   *fakeSender
	resolver *fakeResolver
	recorder *fakeRecorder
	feedback *fakeFeedback
	dedupe   *fakeDedupe
	cfg      Config

	mu         sync.Mutex
	suspended  map[AppKey]string
	recorded   []Result
	dead       []DeadToken
	remembered map[string][]Result
	pushes     []Push
}

// Test apps: every key names a registered app unless it is in missing.
const (
	apnsApp = "com.example.app"
	fcmApp  = "com.example.android"
)

func apnsToken(i int) string {
	const hex = "0123456789abcdef"
	b := make([]byte, 64)
	for j := range b {
		b[j] = hex[(i+j)%16]
	}
	return string(b)
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, suspended: map[AppKey]string{}, remembered: map[string][]Result{}}
	h.cfg = Config{RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond}
	h.sender = &fakeSender{SendFunc: func(_ context.Context, pushes []Push) []Attempt {
		h.mu.Lock()
		h.pushes = append(h.pushes, pushes...)
		h.mu.Unlock()
		out := make([]Attempt, len(pushes))
		for i, p := range pushes {
			out[i] = Attempt{GatewayID: "gw-" + p.Target.Token}
		}
		return out
	}}
	h.apps = &fakeApps{
		AppFunc: func(_ context.Context, key AppKey) (App, error) {
			h.mu.Lock()
			detail, suspended := h.suspended[key]
			h.mu.Unlock()
			return App{Key: key, Suspended: suspended, SuspendedReason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS,
				SuspendedDetail: detail, Limiter: rate.NewLimiter(rate.Inf, 1), Sender: h.sender}, nil
		},
		SuspendFunc: func(_ context.Context, key AppKey, _ commonv1.FailureReason, detail string) error {
			h.mu.Lock()
			h.suspended[key] = detail
			h.mu.Unlock()
			return nil
		},
	}
	h.resolver = &fakeResolver{ProfileTokensFunc: func(context.Context, ProfileTarget) ([]Target, error) {
		return nil, ErrProfileNotFound
	}}
	h.recorder = &fakeRecorder{RecordFunc: func(_ context.Context, results []Result) error {
		h.mu.Lock()
		h.recorded = append(h.recorded, results...)
		h.mu.Unlock()
		return nil
	}}
	h.feedback = &fakeFeedback{ReportDeadFunc: func(_ context.Context, dead []DeadToken) error {
		h.mu.Lock()
		h.dead = append(h.dead, dead...)
		h.mu.Unlock()
		return nil
	}}
	h.dedupe = &fakeDedupe{
		LookupFunc: func(_ context.Context, keys []string) (map[string][]Result, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			out := map[string][]Result{}
			for _, k := range keys {
				if r, ok := h.remembered[k]; ok {
					out[k] = r
				}
			}
			return out, nil
		},
		RememberFunc: func(_ context.Context, key string, results []Result) {
			h.mu.Lock()
			h.remembered[key] = results
			h.mu.Unlock()
		},
	}
	return h
}

func (h *harness) pipeline() *Pipeline {
	return New(h.cfg, Deps{Apps: h.apps, Resolver: h.resolver, Recorder: h.recorder, Feedback: h.feedback, Dedupe: h.dedupe})
}

// send runs one session with the batches and returns every result.
func (h *harness) send(ctx context.Context, batches ...[]Message) []Result {
	h.t.Helper()
	return h.sendWith(ctx, SessionOptions{}, batches...)
}

// sendWith is send with session options.
func (h *harness) sendWith(ctx context.Context, opts SessionOptions, batches ...[]Message) []Result {
	h.t.Helper()
	p := h.pipeline()
	var mu sync.Mutex
	var results []Result
	s := p.OpenWith(ctx, func(r Result) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}, opts)
	for _, b := range batches {
		if err := s.Submit(b); err != nil {
			h.t.Fatalf("Submit: %v", err)
		}
	}
	if err := s.Close(); err != nil {
		h.t.Fatalf("Close: %v", err)
	}
	return results
}

func apnsTarget(i int) Target {
	return Target{Token: apnsToken(i), Platform: commonv1.Platform_PLATFORM_APNS, AppID: apnsApp}
}

func fcmTarget(token string) Target {
	return Target{Token: token, Platform: commonv1.Platform_PLATFORM_FCM, AppID: fcmApp}
}

func msg(key string, targets ...Target) Message {
	return Message{IdempotencyKey: key, Tokens: targets, Notification: Notification{Title: "Hi", Body: "there"}}
}

func byToken(results []Result) map[string]Result {
	out := map[string]Result{}
	for _, r := range results {
		out[r.Target.Token] = r
	}
	return out
}
