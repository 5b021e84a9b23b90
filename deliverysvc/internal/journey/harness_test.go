package journey

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/dedupe"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// Hand-written fakes: each method calls its function field.

type fakeAudience struct {
	QueryFunc func(ctx context.Context, q *profilev1.QueryAudienceRequest, each func(*profilev1.QueryAudienceResponse) error) error
}

func (f *fakeAudience) Query(ctx context.Context, q *profilev1.QueryAudienceRequest, each func(*profilev1.QueryAudienceResponse) error) error {
	return f.QueryFunc(ctx, q, each)
}

// fakeCountingAudience is a fakeAudience that can count (AudienceCounter).
type fakeCountingAudience struct {
	*fakeAudience
	CountFunc func(ctx context.Context, q *profilev1.QueryAudienceRequest) (int64, error)
}

func (f *fakeCountingAudience) Count(ctx context.Context, q *profilev1.QueryAudienceRequest) (int64, error) {
	return f.CountFunc(ctx, q)
}

type fakeApps struct {
	AppFunc     func(ctx context.Context, key delivery.AppKey) (delivery.App, error)
	SuspendFunc func(ctx context.Context, key delivery.AppKey, reason commonv1.FailureReason, detail string) error
}

func (f *fakeApps) App(ctx context.Context, key delivery.AppKey) (delivery.App, error) {
	return f.AppFunc(ctx, key)
}

func (f *fakeApps) Suspend(ctx context.Context, key delivery.AppKey, reason commonv1.FailureReason, detail string) error {
	return f.SuspendFunc(ctx, key, reason, detail)
}

type fakeSender struct {
	SendFunc func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt
}

func (f *fakeSender) Send(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
	return f.SendFunc(ctx, pushes)
}

type fakeRecorder struct {
	RecordFunc func(ctx context.Context, results []delivery.Result) error
}

func (f *fakeRecorder) Record(ctx context.Context, results []delivery.Result) error {
	return f.RecordFunc(ctx, results)
}

// RecordAsync answers on another goroutine, as the outbox does.
func (f *fakeRecorder) RecordAsync(ctx context.Context, results []delivery.Result, done func(error)) {
	err := f.RecordFunc(ctx, results)
	go done(err)
}

type fakeResolver struct{}

func (fakeResolver) ProfileTokens(context.Context, delivery.ProfileTarget) ([]delivery.Target, error) {
	return nil, errors.New("journeys send to explicit tokens only")
}

type fakeFeedback struct{}

func (fakeFeedback) ReportDeadAsync(_ context.Context, _ []delivery.DeadToken, done func(error)) {
	done(nil)
}

// Test apps: ShopApp on both platforms, WalletApp on APNs only.
const (
	shopApp   = "com.acme.shop"
	walletApp = "com.acme.wallet"
)

// harness is a journey manager over a real pipeline, a real bbolt store
// and idempotency store, and fakes of profilesvc's audience stream, the
// gateways and trackingsvc's outbox. restart builds a new manager and
// pipeline over the same files, as a restarted service would.
type harness struct {
	t        *testing.T
	db       *bolt.DB
	store    *Store
	dedupe   *dedupe.Store
	cfg      Config
	pipeCfg  delivery.Config
	audience *fakeAudience
	// counter, when set, is the audience the manager uses instead.
	counter  *fakeCountingAudience
	apps     *fakeApps
	sender   *fakeSender
	recorder *fakeRecorder
	m        *Manager

	mu         sync.Mutex
	members    []*profilev1.AudienceMember // sorted by profile id
	registered map[delivery.AppKey]bool
	suspended  map[delivery.AppKey]bool
	pushes     []delivery.Push
	recorded   []delivery.Result
	queries    []*profilev1.QueryAudienceRequest
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessOn(t, t.TempDir())
}

// newHarnessOn is newHarness over the bbolt file in dir.
func newHarnessOn(t *testing.T, dir string) *harness {
	t.Helper()
	db, err := boltdb.Open(dir, "deliverysvc.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := buckets.Create(db); err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t: t, db: db, store: NewStore(db),
		cfg:     Config{CheckpointEvery: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		pipeCfg: delivery.Config{RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		registered: map[delivery.AppKey]bool{
			{Platform: commonv1.Platform_PLATFORM_APNS, AppID: shopApp}:   true,
			{Platform: commonv1.Platform_PLATFORM_FCM, AppID: shopApp}:    true,
			{Platform: commonv1.Platform_PLATFORM_APNS, AppID: walletApp}: true,
		},
		suspended: map[delivery.AppKey]bool{},
	}
	h.audience = &fakeAudience{QueryFunc: h.serveAudience}
	h.sender = &fakeSender{SendFunc: func(_ context.Context, pushes []delivery.Push) []delivery.Attempt {
		h.mu.Lock()
		h.pushes = append(h.pushes, pushes...)
		h.mu.Unlock()
		out := make([]delivery.Attempt, len(pushes))
		for i := range out {
			out[i].GatewayID = "gw"
		}
		return out
	}}
	h.apps = &fakeApps{
		AppFunc: func(_ context.Context, key delivery.AppKey) (delivery.App, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			if !h.registered[key] {
				return delivery.App{}, fmt.Errorf("%w: %v", delivery.ErrAppNotFound, key)
			}
			return delivery.App{Key: key, Suspended: h.suspended[key], SuspendedReason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS,
				Limiter: rate.NewLimiter(rate.Inf, 1), Sender: h.sender}, nil
		},
		SuspendFunc: func(context.Context, delivery.AppKey, commonv1.FailureReason, string) error { return nil },
	}
	h.recorder = &fakeRecorder{RecordFunc: func(_ context.Context, results []delivery.Result) error {
		h.mu.Lock()
		h.recorded = append(h.recorded, results...)
		h.mu.Unlock()
		return nil
	}}
	t.Cleanup(func() { h.stop() })
	return h
}

// start builds the manager (a new pipeline and idempotency store over the
// same bbolt file) and resumes unfinished journeys.
func (h *harness) start() *Manager {
	h.t.Helper()
	h.dedupe = dedupe.Open(h.db, dedupe.Config{Logger: h.cfg.Logger})
	p := delivery.New(h.pipeCfg, delivery.Deps{Apps: h.apps, Resolver: fakeResolver{}, Recorder: h.recorder, Feedback: fakeFeedback{}, Dedupe: h.dedupe})
	var audience Audience = h.audience
	if h.counter != nil {
		audience = h.counter
	}
	h.m = NewManager(h.cfg, h.store, audience, h.apps, p, h.recorder)
	if err := h.m.Resume(); err != nil {
		h.t.Fatalf("Resume: %v", err)
	}
	return h.m
}

// crashCopy is a new harness, with the same audience, over a copy of h's
// bbolt file as it is now: what the service finds when it restarts after
// a kill -9 (every committed transaction, nothing of what only the
// running manager knows).
func (h *harness) crashCopy() *harness {
	h.t.Helper()
	dir := h.t.TempDir()
	if err := h.db.View(func(tx *bolt.Tx) error {
		return tx.CopyFile(filepath.Join(dir, "deliverysvc.db"), 0o600)
	}); err != nil {
		h.t.Fatal(err)
	}
	c := newHarnessOn(h.t, dir)
	h.mu.Lock()
	c.members = h.members
	h.mu.Unlock()
	return c
}

// stop stops the manager as a service shutdown does.
func (h *harness) stop() {
	if h.m == nil {
		return
	}
	h.m.Close()
	_ = h.dedupe.Close()
	h.m = nil
}

// setMembers replaces the audience (sorted by profile id).
func (h *harness) setMembers(ms ...*profilev1.AudienceMember) {
	sort.Slice(ms, func(i, j int) bool { return ms[i].GetProfileId() < ms[j].GetProfileId() })
	h.mu.Lock()
	h.members = ms
	h.mu.Unlock()
}

// serveAudience answers QueryAudience as profilesvc does: members in
// profile id order after start_after_profile_id, in batches, up to limit;
// tokens filtered by app ids and platforms, attributes and identities by
// member_fields. The condition "bad(" does not
// compile.
func (h *harness) serveAudience(ctx context.Context, q *profilev1.QueryAudienceRequest, each func(*profilev1.QueryAudienceResponse) error) error {
	if q.GetCondition() == "bad(" {
		return fault.Invalid("journey.audience.condition", "Syntax error: missing argument")
	}
	h.mu.Lock()
	h.queries = append(h.queries, q)
	members := h.members
	h.mu.Unlock()
	size := int(q.GetBatchSize())
	if size <= 0 {
		size = 500
	}
	stats := &profilev1.AudienceStats{}
	var batch []*profilev1.AudienceMember
	for _, m := range members {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if m.GetProfileId() <= q.GetStartAfterProfileId() {
			continue
		}
		stats.Scanned++
		stats.Qualified++
		batch = append(batch, filterTokens(m, q))
		last := q.GetLimit() > 0 && stats.Qualified >= q.GetLimit()
		if len(batch) == size || last {
			if err := each(&profilev1.QueryAudienceResponse{Members: batch, Stats: &profilev1.AudienceStats{Scanned: stats.Scanned, Qualified: stats.Qualified}}); err != nil {
				return err
			}
			batch = nil
		}
		if last {
			return nil
		}
	}
	if len(batch) > 0 {
		return each(&profilev1.QueryAudienceResponse{Members: batch, Stats: stats})
	}
	return nil
}

func filterTokens(m *profilev1.AudienceMember, q *profilev1.QueryAudienceRequest) *profilev1.AudienceMember {
	out := &profilev1.AudienceMember{ProfileId: m.GetProfileId(), Attributes: m.GetAttributes(), Identities: m.GetIdentities(),
		Excluded: m.GetExcluded(), ExclusionReason: m.GetExclusionReason()}
	if mf := q.GetMemberFields(); mf != nil {
		out.Attributes, out.Identities = &structpb.Struct{Fields: map[string]*structpb.Value{}}, nil
		for _, name := range mf.GetAttributes() {
			if v, ok := m.GetAttributes().GetFields()[name]; ok {
				out.Attributes.Fields[name] = v
			}
		}
		for _, idn := range m.GetIdentities() {
			if slices.Contains(mf.GetIdentityNamespaces(), idn.GetNamespace()) {
				out.Identities = append(out.Identities, idn)
			}
		}
	}
	for _, tok := range m.GetTokens() {
		if len(q.GetAppIds()) > 0 && !slices.Contains(q.GetAppIds(), tok.GetAppId()) {
			continue
		}
		if len(q.GetPlatforms()) > 0 && !slices.Contains(q.GetPlatforms(), tok.GetPlatform()) {
			continue
		}
		out.Tokens = append(out.Tokens, tok)
	}
	if !out.Excluded && len(out.Tokens) == 0 {
		out.Excluded, out.ExclusionReason = true, commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN
	}
	return out
}

// member is a profile with attributes and tokens.
func member(t testing.TB, id string, attrs map[string]any, tokens ...*profilev1.PushToken) *profilev1.AudienceMember {
	t.Helper()
	st, err := structpb.NewStruct(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return &profilev1.AudienceMember{ProfileId: id, Attributes: st, Tokens: tokens,
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: "C-" + id}}}
}

func apnsTok(token, app string) *profilev1.PushToken {
	return &profilev1.PushToken{Token: token, Platform: commonv1.Platform_PLATFORM_APNS, AppId: app}
}

func fcmTok(token, app string) *profilev1.PushToken {
	return &profilev1.PushToken{Token: token, Platform: commonv1.Platform_PLATFORM_FCM, AppId: app}
}

// hexToken is the i-th valid APNs token.
func hexToken(i int) string { return fmt.Sprintf("%064x", 0xd0000000+i) }

// population is n profiles p000000… with one APNs token each.
func population(t testing.TB, n int) []*profilev1.AudienceMember {
	out := make([]*profilev1.AudienceMember, n)
	for i := range out {
		out[i] = member(t, fmt.Sprintf("p%06d", i), map[string]any{"firstName": "Ada"}, apnsTok(hexToken(i), shopApp))
	}
	return out
}

// journey is a minimal valid journey to the shop app.
func journey(name string) *deliveryv1.Journey {
	return &deliveryv1.Journey{
		Name: name, AppIds: []string{shopApp, walletApp},
		Template: &deliveryv1.MessageTemplate{Title: `Hi {{firstName | default "there"}}`, Body: "News"},
	}
}

var testCtx = tenantCtx("acme")

func tenantCtx(name string) context.Context { return tenant.With(context.Background(), name) }

// publish publishes j and returns its id.
func (h *harness) publish(j *deliveryv1.Journey) string {
	h.t.Helper()
	out, _, err := h.m.Publish(testCtx, PublishInput{Journey: j})
	if err != nil {
		h.t.Fatalf("Publish: %v", err)
	}
	return out.GetJourneyId()
}

// wait waits for the journey's runner to end and returns the stored journey.
func (h *harness) wait(id string) *deliveryv1.Journey {
	h.t.Helper()
	if r := h.m.runner(Ref{Tenant: "acme", ID: id}); r != nil {
		select {
		case <-r.done():
		case <-time.After(30 * time.Second):
			h.t.Fatalf("journey %s did not end within 30s", id)
		}
	}
	j, err := h.m.Get(testCtx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	return j
}

// pushesByToken counts the pushes per token.
func (h *harness) pushesByToken() map[string][]delivery.Push {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]delivery.Push{}
	for _, p := range h.pushes {
		out[p.Target.Token] = append(out[p.Target.Token], p)
	}
	return out
}

func (h *harness) pushCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.pushes)
}

func excludedCount(p *deliveryv1.JourneyProgress, reason commonv1.ExclusionReason) int64 {
	for _, e := range p.GetExcluded() {
		if e.GetReason() == reason {
			return e.GetCount()
		}
	}
	return 0
}

func failedCount(p *deliveryv1.JourneyProgress, reason commonv1.FailureReason) int64 {
	for _, f := range p.GetFailed() {
		if f.GetReason() == reason {
			return f.GetCount()
		}
	}
	return 0
}

func waitUntil(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// publishHeld starts the harness with n members and a gateway that takes
// the first 100 pushes and holds every later one until its context ends
// (then fails it, unsent), publishes a journey and returns its id once the
// 100 went out: a journey that cannot finish on its own, however fast the
// machine.
func (h *harness) publishHeld(n int, name string) string {
	h.t.Helper()
	h.setMembers(population(h.t, n)...)
	inner := h.sender.SendFunc
	var passed atomic.Int64
	h.sender.SendFunc = func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
		if passed.Add(int64(len(pushes))) <= 100 {
			return inner(ctx, pushes)
		}
		<-ctx.Done()
		out := make([]delivery.Attempt, len(pushes))
		for i := range out {
			out[i] = delivery.Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_NETWORK, Detail: "not sent: " + ctx.Err().Error()}
		}
		return out
	}
	h.start()
	id := h.publish(journey(name))
	waitUntil(h.t, 10*time.Second, "sending", func() bool { return h.pushCount() >= 100 || passed.Load() > 100 })
	return id
}

// publishSlowly starts the harness with n members and a gateway taking
// 5 ms per push (unless cancelled), publishes a journey and returns its id
// once 100 pushes went out: a journey caught mid-run.
func (h *harness) publishSlowly(n int, name string) string {
	h.t.Helper()
	h.setMembers(population(h.t, n)...)
	inner := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
		}
		return inner(ctx, pushes)
	}
	h.start()
	id := h.publish(journey(name))
	waitUntil(h.t, 10*time.Second, "sending", func() bool { return h.pushCount() >= 100 })
	return id
}
