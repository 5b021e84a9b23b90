package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"golang.org/x/time/rate"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/metrictest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

func TestSendToExplicitTokens(t *testing.T) {
	h := newHarness(t)
	spans := tracetest.NewSpanRecorder()
	h.cfg.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	m := msg("k1", apnsTarget(1), apnsTarget(2), fcmTarget("fcm-1"))
	m.JourneyID, m.MessageID = "j1", "m1"
	results := h.send(context.Background(), []Message{m})

	if len(results) != 3 {
		t.Fatalf("got %d results, want 3", len(results))
	}
	done := 0
	for _, r := range results {
		if r.Status != StatusSent || r.GatewayID != "gw-"+r.Target.Token || r.Attempts != 1 {
			t.Errorf("%s: got %v %q after %d attempts, want sent gw-<token> after 1", r.Target.Token, r.Status, r.GatewayID, r.Attempts)
		}
		if r.MessageID != "m1" || r.JourneyID != "j1" || r.IdempotencyKey != "k1" {
			t.Errorf("got ids %q %q %q, want m1 j1 k1", r.MessageID, r.JourneyID, r.IdempotencyKey)
		}
		if r.MessageDone {
			done++
		}
	}
	if done != 1 || !results[len(results)-1].MessageDone {
		t.Errorf("got MessageDone on %d results (last: %v), want exactly the last", done, results[len(results)-1].MessageDone)
	}
	if len(h.recorded) != 3 || len(h.remembered["k1"]) != 3 {
		t.Errorf("got %d recorded and %d remembered, want 3 and 3", len(h.recorded), len(h.remembered["k1"]))
	}

	// The push carries the message span's traceparent.
	ended := spans.Ended()
	if len(ended) != 1 || ended[0].Name() != "delivery.message" {
		t.Fatalf("got spans %v, want one delivery.message", ended)
	}
	sc := ended[0].SpanContext()
	wantTP := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"
	var apnsPayload struct {
		APS map[string]any    `json:"aps"`
		PM  map[string]string `json:"pm"`
	}
	for _, p := range h.pushes {
		switch p.Target.Platform {
		case commonv1.Platform_PLATFORM_APNS:
			if err := json.Unmarshal(p.APNs.Payload, &apnsPayload); err != nil {
				t.Fatalf("APNs payload %s: %v", p.APNs.Payload, err)
			}
			if got := apnsPayload.PM; got["j"] != "j1" || got["m"] != "m1" || got["tp"] != wantTP {
				t.Errorf("APNs tracking keys: got %v, want j1 m1 %s", got, wantTP)
			}
			if p.APNs.CollapseID != "m1" || p.APNs.Topic != apnsApp || p.APNs.PushType != "alert" {
				t.Errorf("APNs request: got %+v, want collapse id m1, topic %s, alert", p.APNs, apnsApp)
			}
		case commonv1.Platform_PLATFORM_FCM:
			d := p.FCM.Data
			if d["pm_journey_id"] != "j1" || d["pm_message_id"] != "m1" || d["traceparent"] != wantTP || p.FCM.Token != "fcm-1" {
				t.Errorf("FCM data: got %v (token %q), want j1 m1 %s fcm-1", d, p.FCM.Token, wantTP)
			}
			if p.FCM.Android.CollapseKey != "m1" || *p.FCM.Android.TTL != DefaultTTL {
				t.Errorf("FCM android: got collapse key %q ttl %v, want m1 %v", p.FCM.Android.CollapseKey, *p.FCM.Android.TTL, DefaultTTL)
			}
		}
	}
}

func TestErrorClasses(t *testing.T) {
	gone := time.UnixMilli(1_700_000_000_000)
	type want struct {
		status   Status
		reason   commonv1.FailureReason
		attempts int
	}
	for _, tc := range []struct {
		name     string
		attempts []Attempt // per call; the last repeats
		want     want
		dead     bool
		suspend  bool
	}{
		{"unregistered", []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, GatewayTime: gone}},
			want{StatusFailed, commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, 1}, true, false},
		{"bad device token", []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN}},
			want{StatusFailed, commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN, 1}, true, false},
		{"not for topic", []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC}},
			want{StatusFailed, commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC, 1}, true, false},
		{"invalid message", []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE}},
			want{StatusFailed, commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE, 1}, false, false},
		{"invalid credentials", []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: "APNs 403 InvalidProviderToken"}},
			want{StatusFailed, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, 1}, false, true},
		{"sender mismatch", []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH}},
			want{StatusFailed, commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH, 1}, false, true},
		{"unavailable then sent", []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE}, {Reason: commonv1.FailureReason_FAILURE_REASON_NETWORK}, {GatewayID: "ok"}},
			want{StatusSent, commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED, 3}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			var calls atomic.Int32
			h.sender.SendFunc = func(_ context.Context, pushes []Push) []Attempt {
				i := int(calls.Add(1)) - 1
				a := tc.attempts[min(i, len(tc.attempts)-1)]
				return []Attempt{a}
			}
			results := h.send(context.Background(), []Message{msg("k", apnsTarget(1))})
			r := results[0]
			if got := (want{r.Status, r.Reason, r.Attempts}); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if int(calls.Load()) != tc.want.attempts {
				t.Errorf("got %d gateway calls, want %d", calls.Load(), tc.want.attempts)
			}
			if got := len(h.dead) == 1; got != tc.dead {
				t.Errorf("reported dead: got %v (%v), want %v", got, h.dead, tc.dead)
			}
			if tc.dead && tc.name == "unregistered" && !h.dead[0].GatewayTime.Equal(gone) {
				t.Errorf("dead token time: got %v, want the gateway's %v", h.dead[0].GatewayTime, gone)
			}
			if got := len(h.suspended) == 1; got != tc.suspend {
				t.Errorf("suspended: got %v, want %v", got, tc.suspend)
			}
		})
	}
}

func TestRetryHonoursRetryAfter(t *testing.T) {
	h := newHarness(t)
	const retryAfter = 200 * time.Millisecond
	var times []time.Time
	h.sender.SendFunc = func(_ context.Context, pushes []Push) []Attempt {
		times = append(times, time.Now())
		if len(times) == 1 {
			return []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED, RetryAfter: retryAfter}}
		}
		return []Attempt{{GatewayID: "ok"}}
	}
	results := h.send(context.Background(), []Message{msg("k", apnsTarget(1))})
	if r := results[0]; r.Status != StatusSent || r.Attempts != 2 {
		t.Fatalf("got %v after %d attempts, want sent after 2", r.Status, r.Attempts)
	}
	if gap := times[1].Sub(times[0]); gap < retryAfter {
		t.Errorf("retry came %v after the first attempt, want at least the Retry-After %v", gap, retryAfter)
	}
}

func TestRetriesStopAtTheTTL(t *testing.T) {
	h := newHarness(t)
	h.cfg.RetryInitial, h.cfg.RetryMax = 20*time.Millisecond, time.Second
	var calls atomic.Int32
	h.sender.SendFunc = func(_ context.Context, pushes []Push) []Attempt {
		calls.Add(1)
		return []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE, Detail: "APNs 503 ServiceUnavailable", RetryAfter: 30 * time.Millisecond}}
	}
	m := msg("k", apnsTarget(1))
	m.TTL = 100 * time.Millisecond
	results := h.send(context.Background(), []Message{m})
	r := results[0]
	if r.Status != StatusFailed || r.Reason != commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE {
		t.Fatalf("got %v %v, want failed GATEWAY_UNAVAILABLE", r.Status, r.Reason)
	}
	if !strings.Contains(r.Detail, "TTL") || !strings.Contains(r.Detail, "503") {
		t.Errorf("detail %q: want the gateway's words and the TTL", r.Detail)
	}
	if r.Attempts < 2 || int(calls.Load()) != r.Attempts {
		t.Errorf("got %d attempts (%d calls), want at least 2, one per call", r.Attempts, calls.Load())
	}
}

func TestSuspendedAppFailsFast(t *testing.T) {
	h := newHarness(t)
	var calls atomic.Int32
	h.sender.SendFunc = func(_ context.Context, pushes []Push) []Attempt {
		calls.Add(1)
		out := make([]Attempt, len(pushes))
		for i := range out {
			out[i] = Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: "APNs 403 InvalidProviderToken"}
		}
		return out
	}
	var suspends atomic.Int32
	suspend := h.apps.SuspendFunc
	h.apps.SuspendFunc = func(ctx context.Context, key AppKey, reason commonv1.FailureReason, detail string) error {
		suspends.Add(1)
		return suspend(ctx, key, reason, detail)
	}
	first := h.send(context.Background(), []Message{msg("k1", apnsTarget(1), apnsTarget(2))})
	for _, r := range first {
		if r.Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
			t.Errorf("first message: got %v, want INVALID_CREDENTIALS", r.Reason)
		}
	}
	if suspends.Load() != 1 {
		t.Errorf("got %d Suspend calls, want 1", suspends.Load())
	}
	second := h.send(context.Background(), []Message{msg("k2", apnsTarget(3))})
	if r := second[0]; r.Reason != commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED || r.Attempts != 0 || !strings.Contains(r.Detail, "InvalidProviderToken") {
		t.Errorf("second message: got %v after %d attempts (%q), want APP_SUSPENDED after 0 naming the cause", r.Reason, r.Attempts, r.Detail)
	}
	if calls.Load() != 1 {
		t.Errorf("got %d gateway calls, want 1 (none once suspended)", calls.Load())
	}
}

func TestPayloadLimits(t *testing.T) {
	big := strings.Repeat("x", 4500)
	for _, tc := range []struct {
		name   string
		target Target
		change func(m *Message)
		sent   bool
		limit  string
	}{
		{"APNs alert over 4096", apnsTarget(1), func(m *Message) { m.Notification.Body = big }, false, "4096"},
		{"APNs VoIP under 5120", apnsTarget(1), func(m *Message) { m.Notification.Body = big; m.APNs.PushType = APNsPushTypeVoIP }, true, ""},
		{"APNs VoIP over 5120", apnsTarget(1), func(m *Message) {
			m.Notification.Body = big + strings.Repeat("y", 800)
			m.APNs.PushType = APNsPushTypeVoIP
		}, false, "5120"},
		{"FCM over 4096", fcmTarget("f1"), func(m *Message) { m.Notification.Body = big }, false, "4096"},
		{"FCM under 4096", fcmTarget("f1"), func(m *Message) { m.Notification.Body = strings.Repeat("x", 3800) }, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			m := msg("k", tc.target)
			tc.change(&m)
			r := h.send(context.Background(), []Message{m})[0]
			if tc.sent {
				if r.Status != StatusSent {
					t.Errorf("got %v %v %q, want sent", r.Status, r.Reason, r.Detail)
				}
				return
			}
			if r.Reason != commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE || !strings.Contains(r.Detail, tc.limit) || r.Attempts != 0 {
				t.Errorf("got %v %q after %d attempts, want PAYLOAD_TOO_LARGE naming %s, not sent", r.Reason, r.Detail, r.Attempts, tc.limit)
			}
			if len(h.pushes) != 0 {
				t.Errorf("got %d pushes sent, want none", len(h.pushes))
			}
		})
	}
}

func TestProfileTargets(t *testing.T) {
	profile := func(key string) Message {
		return Message{IdempotencyKey: key, Profile: &ProfileTarget{ProfileID: "p1"}, Notification: Notification{Title: "Hi"}}
	}
	t.Run("tokens resolved", func(t *testing.T) {
		h := newHarness(t)
		h.resolver.ProfileTokensFunc = func(_ context.Context, pt ProfileTarget) ([]Target, error) {
			if pt.ProfileID != "p1" {
				t.Errorf("resolved %q, want p1", pt.ProfileID)
			}
			return []Target{apnsTarget(1), fcmTarget("f1")}, nil
		}
		results := h.send(context.Background(), []Message{profile("k")})
		if len(results) != 2 {
			t.Fatalf("got %d results, want 2", len(results))
		}
		for _, r := range results {
			if r.Status != StatusSent || r.Target.ProfileID != "p1" {
				t.Errorf("got %v for profile %q, want sent for p1", r.Status, r.Target.ProfileID)
			}
		}
	})
	for _, tc := range []struct {
		name      string
		resolve   func() ([]Target, error)
		status    Status
		exclusion commonv1.ExclusionReason
		reason    commonv1.FailureReason
	}{
		{"profile not found", func() ([]Target, error) { return nil, ErrProfileNotFound }, StatusExcluded, commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, 0},
		{"no tokens", func() ([]Target, error) { return nil, nil }, StatusExcluded, commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN, 0},
		{"profilesvc down", func() ([]Target, error) { return nil, errors.New("connection refused") }, StatusFailed, 0, commonv1.FailureReason_FAILURE_REASON_NETWORK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			var calls atomic.Int32
			h.resolver.ProfileTokensFunc = func(context.Context, ProfileTarget) ([]Target, error) {
				calls.Add(1)
				return tc.resolve()
			}
			results := h.send(context.Background(), []Message{profile("k")})
			if len(results) != 1 {
				t.Fatalf("got %d results, want 1 message-level result", len(results))
			}
			r := results[0]
			if r.Status != tc.status || r.Exclusion != tc.exclusion || r.Reason != tc.reason || r.Target.Token != "" || !r.MessageDone {
				t.Errorf("got %v %v %v token %q, want %v %v %v without a token", r.Status, r.Exclusion, r.Reason, r.Target.Token, tc.status, tc.exclusion, tc.reason)
			}
			if tc.reason == commonv1.FailureReason_FAILURE_REASON_NETWORK && int(calls.Load()) != 4 {
				t.Errorf("got %d profilesvc calls, want 4 (ResolveAttempts)", calls.Load())
			}
		})
	}
}

func TestUnregisteredApps(t *testing.T) {
	h := newHarness(t)
	h.apps.AppFunc = func(context.Context, AppKey) (App, error) { return App{}, ErrAppNotFound }
	h.resolver.ProfileTokensFunc = func(context.Context, ProfileTarget) ([]Target, error) { return []Target{apnsTarget(1)}, nil }
	results := h.send(context.Background(), []Message{
		msg("explicit", apnsTarget(2)),
		{IdempotencyKey: "profile", Profile: &ProfileTarget{ProfileID: "p1"}, Notification: Notification{Body: "x"}},
	})
	for _, r := range results {
		switch r.IdempotencyKey {
		case "explicit":
			if r.Status != StatusFailed || r.Reason != commonv1.FailureReason_FAILURE_REASON_APP_NOT_FOUND {
				t.Errorf("explicit token: got %v %v, want failed APP_NOT_FOUND", r.Status, r.Reason)
			}
		case "profile":
			if r.Status != StatusExcluded || r.Exclusion != commonv1.ExclusionReason_EXCLUSION_REASON_APP_NOT_REGISTERED {
				t.Errorf("profile token: got %v %v, want excluded APP_NOT_REGISTERED", r.Status, r.Exclusion)
			}
		}
	}
}

func TestMalformedTokenFailsAlone(t *testing.T) {
	h := newHarness(t)
	bad := Target{Token: "not-hex!", Platform: commonv1.Platform_PLATFORM_APNS, AppID: apnsApp}
	results := byToken(h.send(context.Background(), []Message{msg("k", bad, apnsTarget(1))}))
	if r := results["not-hex!"]; r.Reason != commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN || r.Attempts != 0 {
		t.Errorf("malformed token: got %v after %d attempts, want BAD_DEVICE_TOKEN unsent", r.Reason, r.Attempts)
	}
	if r := results[apnsToken(1)]; r.Status != StatusSent {
		t.Errorf("good token: got %v, want sent", r.Status)
	}
	if len(h.dead) != 0 {
		t.Errorf("got %d dead tokens reported, want 0: only gateway verdicts are reported", len(h.dead))
	}
}

func TestIdempotency(t *testing.T) {
	h := newHarness(t)
	first := h.send(context.Background(), []Message{msg("k", apnsTarget(1))})
	again := h.send(context.Background(), []Message{msg("k", apnsTarget(1)), msg("k", apnsTarget(1))})
	if len(h.pushes) != 1 {
		t.Fatalf("got %d pushes, want 1", len(h.pushes))
	}
	if len(again) != 2 {
		t.Fatalf("got %d results for two resends, want 2", len(again))
	}
	for _, r := range again {
		if !r.Duplicate || r.GatewayID != first[0].GatewayID || r.Status != StatusSent || !r.MessageDone {
			t.Errorf("resend: got duplicate=%v %q %v, want the first outcome %q marked duplicate", r.Duplicate, r.GatewayID, r.Status, first[0].GatewayID)
		}
	}

	// Two copies in flight at once: one send, one waits for its outcome.
	h2 := newHarness(t)
	release := make(chan struct{})
	send := h2.sender.SendFunc
	h2.sender.SendFunc = func(ctx context.Context, pushes []Push) []Attempt {
		<-release
		return send(ctx, pushes)
	}
	go func() { time.Sleep(20 * time.Millisecond); close(release) }()
	results := h2.send(context.Background(), []Message{msg("same", apnsTarget(1))}, []Message{msg("same", apnsTarget(1))})
	dups := 0
	for _, r := range results {
		if r.Duplicate {
			dups++
		}
	}
	if len(h2.pushes) != 1 || len(results) != 2 || dups != 1 {
		t.Errorf("concurrent copies: got %d pushes, %d results, %d duplicates; want 1, 2, 1", len(h2.pushes), len(results), dups)
	}
}

// TestCopiesTakeInFlightWeight: copies of a key in flight count against
// MaxInFlight like any message, so a client resending a batch while the
// first copy is held (a retry backoff can last up to the TTL) is held back
// by Submit instead of being given a goroutine per copy.
func TestCopiesTakeInFlightWeight(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxInFlight = 4
	mp, reader := metrictest.New(t)
	if h.cfg.Metrics, _ = metrics.New(mp); h.cfg.Metrics == nil {
		t.Fatal("no metrics")
	}
	sending := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unhold := func() { releaseOnce.Do(func() { close(release) }) }
	defer unhold() // even when the test fails early
	send := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []Push) []Attempt {
		sending <- struct{}{}
		<-release
		return send(ctx, pushes)
	}
	p := h.pipeline()
	first := p.Open(context.Background(), func(Result) {})
	if err := first.Submit([]Message{msg("k", apnsTarget(1))}); err != nil {
		t.Fatal(err)
	}
	<-sending // the first copy is held in the gateway, weighing 1 of 4
	before := runtime.NumGoroutine()
	copies := func(n int) []Message {
		b := make([]Message, n)
		for i := range b {
			b[i] = msg("k", apnsTarget(1))
		}
		return b
	}

	// Three copies fit; Submit waits for room for the fourth until its
	// session's deadline. The three admitted ones are then cancelled, and
	// give their weight back.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	var mu sync.Mutex
	var cancelled []Result
	timed := p.Open(ctx, func(r Result) {
		mu.Lock()
		cancelled = append(cancelled, r)
		mu.Unlock()
	})
	if err := timed.Submit(copies(100)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit of 100 copies with 3 slots free: got %v, want it to block until the deadline", err)
	}
	timed.Close()
	if len(cancelled) != 3 {
		t.Errorf("got %d results for the timed-out session, want 3 (the admitted copies, cancelled)", len(cancelled))
	}
	for _, r := range cancelled {
		if r.Reason != commonv1.FailureReason_FAILURE_REASON_CANCELLED {
			t.Errorf("admitted copy of the timed-out session: got %v %v, want CANCELLED", r.Status, r.Reason)
		}
	}
	// Never sent, they count as failures of no platform (their tokens were
	// never known), as the metrics' documentation says cancellations do.
	if got := reader.Value("pushmesh.notifications.failed", attribute.String("pushmesh.platform", "unspecified"),
		attribute.String("pushmesh.failure_reason", "cancelled")); got != 3 {
		t.Errorf("failed pushes counted as cancelled: got %d, want 3", got)
	}

	// Without a deadline Submit blocks, with at most three copies waiting
	// (one goroutine each), until the first copy completes.
	var dups atomic.Int32
	s := p.Open(context.Background(), func(r Result) {
		if r.Duplicate && r.Status == StatusSent {
			dups.Add(1)
		}
	})
	submitted := make(chan error, 1)
	go func() { submitted <- s.Submit(copies(200)) }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-submitted:
		t.Fatalf("Submit of 200 copies returned (%v) while the first copy was held, want it blocked", err)
	default:
	}
	if extra := runtime.NumGoroutine() - before; extra > 10 {
		t.Errorf("got %d more goroutines with the copies submitted, want a few (3 waiting copies and the submitter)", extra)
	}
	unhold()
	select {
	case err := <-submitted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Submit still blocked after the first copy was released")
	}
	s.Close()
	first.Close()
	if got := dups.Load(); got != 200 {
		t.Errorf("got %d duplicate results, want 200 (the first copy's outcome)", got)
	}
	if len(h.pushes) != 1 {
		t.Errorf("got %d pushes, want 1", len(h.pushes))
	}
}

// TestCopyAdmittedBeforeItsClaimSends: a message claims its key before it
// is admitted, so copies submitted meanwhile may get the room it waits for.
// A copy that is admitted first sends, and the claimer waits for it:
// copies waiting for a claimer stuck behind them would deadlock the
// pipeline.
func TestCopyAdmittedBeforeItsClaimSends(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxInFlight = 2
	p := h.pipeline()
	// Fill the pipeline so that A claims "k" and then waits for room.
	if err := p.sem.Acquire(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	type session struct {
		results []Result
		err     chan error
	}
	submit := func(batch []Message) *session {
		out := &session{err: make(chan error, 1)}
		var mu sync.Mutex
		s := p.Open(context.Background(), func(r Result) {
			mu.Lock()
			out.results = append(out.results, r)
			mu.Unlock()
		})
		go func() {
			err := s.Submit(batch)
			if cerr := s.Close(); err == nil {
				err = cerr
			}
			out.err <- err
		}()
		return out
	}
	a := submit([]Message{msg("blocker", apnsTarget(1), apnsTarget(2)), msg("k", apnsTarget(3), apnsTarget(4))})
	for deadline := time.Now().Add(5 * time.Second); !claimed(p, tenant.Default, "k"); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(`A's "k" was not claimed within 5s`)
		}
	}
	// B's copy weighs the whole pipeline: once admitted, nothing else is
	// until it is answered.
	b := submit([]Message{msg("k", apnsTarget(3), apnsTarget(4))})
	time.Sleep(20 * time.Millisecond) // let B queue for room, ahead of A's "k"
	p.sem.Release(2)
	for _, s := range []*session{a, b} {
		select {
		case err := <-s.err:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("deadlock: sessions still open 5s after room was made")
		}
	}
	sent, dups := 0, 0
	for _, r := range append(a.results, b.results...) {
		if r.IdempotencyKey != "k" {
			continue
		}
		if r.Duplicate {
			dups++
		} else if r.Status == StatusSent {
			sent++
		}
	}
	if sent != 2 || dups != 2 {
		t.Errorf("key k: got %d sent and %d duplicate results, want 2 and 2 (one send, one copy answered)", sent, dups)
	}
	if len(h.pushes) != 4 {
		t.Errorf("got %d pushes, want 4 (blocker's 2, k's 2 once)", len(h.pushes))
	}
}

// claimed says whether the key is in flight.
func claimed(p *Pipeline, tenantID, key string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.inflight[flightKey(tenantID, key)]
	return ok
}

// TestWorkersDoNotWaitForTheCommit: while the Recorder has not committed a
// message's outcome, the worker goes on to send the next message, and
// nothing of the first is reported, remembered or released (a copy of its
// key waits for it) until the commit is done.
func TestWorkersDoNotWaitForTheCommit(t *testing.T) {
	h := newHarness(t)
	h.cfg.Workers = 1
	commits := make(chan func(error), 10)
	h.recorder.AsyncFunc = func(_ context.Context, results []Result, done func(error)) {
		commits <- done
	}
	p := h.pipeline()
	var mu sync.Mutex
	var results []Result
	s := p.Open(context.Background(), func(r Result) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	})
	if err := s.Submit([]Message{msg("a", apnsTarget(1)), msg("b", apnsTarget(2))}); err != nil {
		t.Fatal(err)
	}
	var held []func(error)
	for len(held) < 2 { // both sent by the one worker
		select {
		case done := <-commits:
			held = append(held, done)
		case <-time.After(5 * time.Second):
			t.Fatal("the worker waited for the first message's commit before sending the second")
		}
	}
	// A copy of "a" submitted now must wait for a's outcome, not send again.
	copyDone := make(chan error, 1)
	go func() { copyDone <- s.Submit([]Message{msg("a", apnsTarget(1))}) }()
	time.Sleep(20 * time.Millisecond)
	mu.Lock()
	reported := len(results)
	mu.Unlock()
	h.mu.Lock()
	remembered, pushes := len(h.remembered), len(h.pushes)
	h.mu.Unlock()
	if reported != 0 || remembered != 0 || pushes != 2 {
		t.Fatalf("before the commits: %d results, %d remembered, %d pushes; want 0, 0, 2", reported, remembered, pushes)
	}
	for _, done := range held {
		done(nil)
	}
	if err := <-copyDone; err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	dups := 0
	for _, r := range results {
		if r.Duplicate {
			dups++
		}
	}
	if len(results) != 3 || dups != 1 || len(h.remembered) != 2 || len(h.pushes) != 2 {
		t.Errorf("after the commits: %d results (%d duplicates), %d remembered, %d pushes; want 3 (1), 2, 2", len(results), dups, len(h.remembered), len(h.pushes))
	}
}

// TestFailedRecordIsWrittenAgain: a message whose tracking records failed
// to commit (a disk error) is reported only once a retry commits them; it
// keeps its in-flight weight meanwhile, and the failure is logged once, not
// per retry.
func TestFailedRecordIsWrittenAgain(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxInFlight = 1
	var logs logtest.Buffer
	h.cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	failing := make(chan struct{})
	var calls atomic.Int32
	record := h.recorder.RecordFunc
	h.recorder.RecordFunc = func(ctx context.Context, results []Result) error {
		calls.Add(1)
		select {
		case <-failing:
			return record(ctx, results)
		default:
			return errors.New("write /data/deliverysvc.db: no space left on device")
		}
	}
	p := h.pipeline()
	var mu sync.Mutex
	var results []Result
	var recordedAtEmit int
	s := p.Open(context.Background(), func(r Result) {
		h.mu.Lock()
		n := len(h.recorded)
		h.mu.Unlock()
		mu.Lock()
		results = append(results, r)
		recordedAtEmit = n
		mu.Unlock()
	})
	if err := s.Submit([]Message{msg("k", apnsTarget(1))}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); calls.Load() < 5; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("got %d record calls in 5s, want the failed write retried", calls.Load())
		}
	}
	// The message holds the pipeline's one slot while its records fail.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Open(ctx, func(Result) {}).Submit([]Message{msg("other", apnsTarget(2))}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Submit while the only message's records fail: got %v, want it to wait for room until the deadline", err)
	}
	mu.Lock()
	early := len(results)
	mu.Unlock()
	h.mu.Lock()
	remembered := len(h.remembered)
	h.mu.Unlock()
	if early != 0 || remembered != 0 {
		t.Fatalf("while the records fail: %d results emitted, %d remembered; want none", early, remembered)
	}
	close(failing)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(results) != 1 || results[0].Status != StatusSent || recordedAtEmit != 1 {
		t.Errorf("got %d results (%v), %d records committed when emitted; want one sent result, emitted after its record", len(results), results, recordedAtEmit)
	}
	if len(h.recorded) != 1 || len(h.remembered) != 1 || len(h.pushes) != 1 {
		t.Errorf("got %d records, %d remembered, %d pushes; want 1, 1, 1", len(h.recorded), len(h.remembered), len(h.pushes))
	}
	out := logs.String()
	if n := strings.Count(out, "recording send outcomes failed"); n != 1 {
		t.Errorf("got %d log lines for %d failed writes, want 1:\n%s", n, calls.Load()-1, out)
	}
	if strings.Contains(out, apnsToken(1)) {
		t.Errorf("the log names the device token:\n%s", out)
	}
	if p.writesRetrying.Load() != 0 {
		t.Errorf("got %d messages counted as retrying after the commit, want 0", p.writesRetrying.Load())
	}
}

// TestFailedDeadTokenReportIsWrittenAgain: the same for dead-token reports.
func TestFailedDeadTokenReportIsWrittenAgain(t *testing.T) {
	h := newHarness(t)
	h.sender.SendFunc = func(context.Context, []Push) []Attempt {
		return []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_UNREGISTERED}}
	}
	var calls atomic.Int32
	report := h.feedback.ReportDeadFunc
	h.feedback.ReportDeadFunc = func(ctx context.Context, dead []DeadToken) error {
		if calls.Add(1) <= 3 {
			return errors.New("disk I/O error")
		}
		return report(ctx, dead)
	}
	var deadAtEmit int
	s := h.pipeline().Open(context.Background(), func(r Result) {
		h.mu.Lock()
		deadAtEmit = len(h.dead)
		h.mu.Unlock()
	})
	if err := s.Submit([]Message{msg("k", apnsTarget(1))}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if calls.Load() != 4 || len(h.dead) != 1 || deadAtEmit != 1 || len(h.recorded) != 1 {
		t.Errorf("got %d report calls, %d dead tokens reported (%d when emitted), %d records; want 4, 1 (1), 1", calls.Load(), len(h.dead), deadAtEmit, len(h.recorded))
	}
}

// TestRecordAfterTheOutboxClosed: once the outbox is closed (shutdown) a
// write is not retried, and the message is reported so that Close returns,
// but not remembered, as trackingsvc will not hear of it.
func TestRecordAfterTheOutboxClosed(t *testing.T) {
	h := newHarness(t)
	var logs logtest.Buffer
	h.cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	var calls atomic.Int32
	h.recorder.RecordFunc = func(context.Context, []Result) error {
		calls.Add(1)
		return ErrRecorderClosed
	}
	closed := make(chan []Result)
	go func() {
		closed <- h.send(context.Background(), []Message{msg("k1", apnsTarget(1)), msg("k2", apnsTarget(2))})
	}()
	var results []Result
	select {
	case results = <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close still waiting 5s after the outbox closed")
	}
	if len(results) != 2 || results[0].Status != StatusSent || results[1].Status != StatusSent {
		t.Errorf("got %v, want two sent results", results)
	}
	if calls.Load() != 2 || len(h.remembered) != 0 {
		t.Errorf("got %d record calls and %d remembered keys, want 2 (no retry) and none", calls.Load(), len(h.remembered))
	}
	if n := strings.Count(logs.String(), "outbox is closed"); n != 1 {
		t.Errorf("got %d log lines for two unrecorded messages, want 1:\n%s", n, logs.String())
	}
}

// TestRecordersClosedEndsRetriesAtOnce: a write waiting out a long
// backoff when the outboxes close tries at once, finds them closed and
// reports, so a stop on a failing disk does not wait for the backoff.
func TestRecordersClosedEndsRetriesAtOnce(t *testing.T) {
	h := newHarness(t)
	h.cfg.RetryInitial, h.cfg.RetryMax = time.Hour, time.Hour
	var closed atomic.Bool
	var calls atomic.Int32
	h.recorder.RecordFunc = func(context.Context, []Result) error {
		calls.Add(1)
		if closed.Load() {
			return ErrRecorderClosed
		}
		return errors.New("disk I/O error")
	}
	p := h.pipeline()
	done := make(chan struct{})
	s := p.Open(context.Background(), func(Result) {})
	go func() {
		defer close(done)
		if err := s.Submit([]Message{msg("k", apnsTarget(1))}); err != nil {
			t.Error(err)
		}
		s.Close()
	}()
	for deadline := time.Now().Add(5 * time.Second); calls.Load() < 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no record call in 5s")
		}
	}
	closed.Store(true)
	p.RecordersClosed()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the session still waits 5s after RecordersClosed, for a retry an hour away")
	}
	if calls.Load() != 2 {
		t.Errorf("got %d record calls, want 2 (the failure, then the retry that found the outbox closed)", calls.Load())
	}
}

func TestCallerCheckpointsSkipTheIdempotencyStore(t *testing.T) {
	h := newHarness(t)
	lookups := 0
	h.dedupe.LookupFunc = func(context.Context, []string) (map[string][]Result, error) {
		lookups++
		return nil, nil
	}
	opts := SessionOptions{CallerCheckpoints: true}
	first := h.sendWith(context.Background(), opts, []Message{msg("k", apnsTarget(1)), msg("k2", apnsTarget(2))})
	if len(first) != 2 || first[0].Status != StatusSent || first[1].Status != StatusSent {
		t.Fatalf("got %v, want two sent results", first)
	}
	if lookups != 0 || len(h.remembered) != 0 {
		t.Errorf("got %d lookups and %d remembered keys, want none", lookups, len(h.remembered))
	}
	// The caller's checkpoint decides what to resend, so a resend is sent.
	again := h.sendWith(context.Background(), opts, []Message{msg("k", apnsTarget(1))})
	if len(again) != 1 || again[0].Duplicate || len(h.pushes) != 3 {
		t.Errorf("resend: got %v and %d pushes, want a new send (3 pushes)", again, len(h.pushes))
	}
	// Outcomes are still recorded for tracking.
	if len(h.recorded) != 3 {
		t.Errorf("got %d recorded results, want 3", len(h.recorded))
	}
}

func TestInvalidMessagesAreNotRemembered(t *testing.T) {
	h := newHarness(t)
	bad := msg("k", apnsTarget(1))
	bad.Notification.Data = map[string]string{"aps": "x"}
	r := h.send(context.Background(), []Message{bad})[0]
	if r.Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE || !strings.Contains(r.Detail, `messages[0].notification.data["aps"]`) {
		t.Errorf("got %v %q, want INVALID_MESSAGE naming messages[0].notification.data[\"aps\"]", r.Reason, r.Detail)
	}
	if len(h.remembered) != 0 || len(h.recorded) != 0 {
		t.Errorf("got %d remembered and %d recorded, want none for an invalid message", len(h.remembered), len(h.recorded))
	}
	fixed := h.send(context.Background(), []Message{msg("k", apnsTarget(1))})
	if fixed[0].Status != StatusSent || fixed[0].Duplicate {
		t.Errorf("fixed message with the same key: got %v duplicate=%v, want sent, not a duplicate", fixed[0].Status, fixed[0].Duplicate)
	}
}

func TestSubmitRejectsUnusableBatches(t *testing.T) {
	h := newHarness(t)
	s := h.pipeline().Open(context.Background(), func(Result) {})
	defer s.Close()
	for _, tc := range []struct {
		name  string
		batch []Message
		field string
	}{
		{"empty", nil, "messages"},
		{"missing key", []Message{msg("ok", apnsTarget(1)), msg("", apnsTarget(2))}, "messages[1].idempotency_key"},
		{"long key", []Message{msg(strings.Repeat("k", 300), apnsTarget(1))}, "messages[0].idempotency_key"},
		{"too many", make([]Message, 1001), "messages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Submit(tc.batch)
			var ve *fault.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a validation error", err)
			}
			if ve.Violations[0].Field != tc.field {
				t.Errorf("got field %q, want %q", ve.Violations[0].Field, tc.field)
			}
		})
	}
}

func TestBackpressure(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxInFlight = 4
	var inFlight, maxInFlight, completed atomic.Int32
	release := make(chan struct{})
	h.sender.SendFunc = func(_ context.Context, pushes []Push) []Attempt {
		n := inFlight.Add(1)
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		inFlight.Add(-1)
		completed.Add(1)
		return []Attempt{{GatewayID: "ok"}}
	}
	p := h.pipeline()
	s := p.Open(context.Background(), func(Result) {})
	batch := make([]Message, 10)
	for i := range batch {
		batch[i] = msg(string(rune('a'+i)), apnsTarget(i))
	}
	submitted := make(chan int32)
	go func() {
		if err := s.Submit(batch); err != nil {
			t.Error(err)
		}
		submitted <- completed.Load()
	}()
	var atReturn int32
	for i := 0; i < 10; i++ {
		release <- struct{}{}
		if i == 9 {
			atReturn = <-submitted
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := maxInFlight.Load(); got > 4 {
		t.Errorf("got %d sends in flight at once, want at most 4", got)
	}
	// Ten messages through four slots: the tenth is admitted only after
	// six have completed.
	if atReturn < 6 {
		t.Errorf("Submit returned after %d completions, want at least 6", atReturn)
	}
}

// TestInFlightWeightBoundsWork: MaxInFlight bounds the tokens between
// admission and their results, whatever the number of workers (here 16, for
// room for 4 tokens: TestBackpressure alone would pass on the worker cap).
func TestInFlightWeightBoundsWork(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxInFlight, h.cfg.Workers = 4, 16
	var unfinished, most atomic.Int32 // tokens sent and not yet reported
	send := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []Push) []Attempt {
		n := unfinished.Add(int32(len(pushes)))
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond) // long enough for unbounded workers to pile up
		return send(ctx, pushes)
	}
	s := h.pipeline().Open(context.Background(), func(r Result) { unfinished.Add(-1) })
	batch := make([]Message, 20)
	for i := range batch {
		// Two tokens each: at most two messages in flight.
		batch[i] = msg("k"+strconv.Itoa(i), apnsTarget(2*i), apnsTarget(2*i+1))
	}
	if err := s.Submit(batch); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if got := most.Load(); got > 4 {
		t.Errorf("got %d tokens in flight at once, want at most MaxInFlight (4)", got)
	}
	if len(h.pushes) != 40 {
		t.Errorf("got %d pushes, want 40", len(h.pushes))
	}
}

// TestBlockedEmitHoldsWeight: a message keeps its in-flight weight until
// its results are emitted, so a session whose reader stops holds up intake
// (every session's, as the limit is shared) instead of queueing results.
func TestBlockedEmitHoldsWeight(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxInFlight = 2
	p := h.pipeline()
	reading := make(chan struct{}, 1)
	unblock := make(chan struct{})
	slow := p.Open(context.Background(), func(Result) {
		select {
		case reading <- struct{}{}:
		default:
		}
		<-unblock
	})
	if err := slow.Submit([]Message{msg("a", apnsTarget(1)), msg("b", apnsTarget(2))}); err != nil {
		t.Fatal(err)
	}
	<-reading // the first result is being emitted, and its reader is stuck
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Open(ctx, func(Result) {}).Submit([]Message{msg("c", apnsTarget(3))}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Submit while a stuck reader holds the pipeline: got %v, want it to wait for room until the deadline", err)
	}
	close(unblock)
	slow.Close()
	// The weight is given back once the reader resumed.
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var sent atomic.Int32
	s := p.Open(ctx, func(r Result) {
		if r.Status == StatusSent {
			sent.Add(1)
		}
	})
	if err := s.Submit([]Message{msg("c", apnsTarget(3))}); err != nil {
		t.Fatalf("Submit after the reader resumed: %v", err)
	}
	s.Close()
	if sent.Load() != 1 {
		t.Errorf("after the reader resumed: got %d sent results, want 1", sent.Load())
	}
}

// A session with its own bound holds at most that much of the pipeline
// while its reader is stuck: other sessions go on.
func TestSessionBoundLeavesRoomForOthers(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxInFlight = 4
	p := h.pipeline()
	reading := make(chan struct{}, 1)
	unblock := make(chan struct{})
	stuckCtx, cancelStuck := context.WithCancel(context.Background())
	defer cancelStuck()
	stuck := p.OpenWith(stuckCtx, func(Result) {
		select {
		case reading <- struct{}{}:
		default:
		}
		<-unblock
	}, SessionOptions{MaxInFlight: 2})
	submitted := make(chan error, 1)
	go func() {
		// The third message waits for the session's own room, not the
		// pipeline's.
		submitted <- stuck.Submit([]Message{msg("a", apnsTarget(1)), msg("b", apnsTarget(2)), msg("c", apnsTarget(3))})
	}()
	<-reading
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var sent atomic.Int32
	other := p.Open(ctx, func(r Result) {
		if r.Status == StatusSent {
			sent.Add(1)
		}
	})
	// Two messages of another session fit in what the stuck one left.
	if err := other.Submit([]Message{msg("d", apnsTarget(4)), msg("e", apnsTarget(5))}); err != nil {
		t.Fatalf("Submit beside a stuck session: %v", err)
	}
	other.Close()
	if sent.Load() != 2 {
		t.Errorf("beside a stuck session: got %d sent results, want 2", sent.Load())
	}
	select {
	case err := <-submitted:
		t.Fatalf("the stuck session's third message was admitted (err %v) while its first two held its bound", err)
	default:
	}
	// A message heavier than the session's bound is admitted with the
	// bound as its weight rather than waiting forever.
	close(unblock)
	if err := <-submitted; err != nil {
		t.Fatal(err)
	}
	if err := stuck.Submit([]Message{msg("f", apnsTarget(6), apnsTarget(7), apnsTarget(8))}); err != nil {
		t.Fatalf("a message of 3 tokens in a session bounded to 2: %v", err)
	}
	stuck.Close()
}

func TestCancelledSession(t *testing.T) {
	h := newHarness(t)
	h.sender.SendFunc = func(context.Context, []Push) []Attempt {
		return []Attempt{{Reason: commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE, RetryAfter: time.Hour}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var results []Result
	var mu sync.Mutex
	s := h.pipeline().Open(ctx, func(r Result) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	})
	if err := s.Submit([]Message{msg("k", apnsTarget(1))}); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(20*time.Millisecond, cancel)
	s.Close()
	if len(results) != 1 || results[0].Reason != commonv1.FailureReason_FAILURE_REASON_CANCELLED {
		t.Fatalf("got %v, want one CANCELLED result", results)
	}
	if len(h.remembered) != 0 || len(h.recorded) != 0 {
		t.Errorf("got %d remembered, %d recorded; want none for a cancelled message", len(h.remembered), len(h.recorded))
	}
}

func TestRateLimitBoundedByTTL(t *testing.T) {
	h := newHarness(t)
	limiter := rate.NewLimiter(1, 1) // one push a second
	appFunc := h.apps.AppFunc
	h.apps.AppFunc = func(ctx context.Context, key AppKey) (App, error) {
		a, err := appFunc(ctx, key)
		a.Limiter = limiter
		return a, err
	}
	m1, m2 := msg("k1", apnsTarget(1)), msg("k2", apnsTarget(2))
	m1.TTL, m2.TTL = 100*time.Millisecond, 100*time.Millisecond
	results := h.send(context.Background(), []Message{m1, m2})
	// Whichever takes the limiter first is sent; the other would wait a
	// second, past its 100ms TTL.
	count := map[string]int{}
	for _, r := range results {
		count[r.Status.String()+" "+r.Reason.String()]++
	}
	want := map[string]int{"sent FAILURE_REASON_UNSPECIFIED": 1, "failed FAILURE_REASON_TTL_EXPIRED": 1}
	if len(count) != 2 || count["sent FAILURE_REASON_UNSPECIFIED"] != 1 || count["failed FAILURE_REASON_TTL_EXPIRED"] != 1 {
		t.Errorf("got %v, want %v", count, want)
	}
}

func TestBackoff(t *testing.T) {
	p := New(Config{RetryInitial: 100 * time.Millisecond, RetryMax: time.Second}, Deps{})
	for _, tc := range []struct {
		attempt    int
		retryAfter time.Duration
		lo, hi     time.Duration
	}{
		{1, 0, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 0, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 0, 400 * time.Millisecond, 800 * time.Millisecond},
		{10, 0, 500 * time.Millisecond, time.Second},
		{1, 3 * time.Second, 3 * time.Second, 3 * time.Second},
	} {
		for i := 0; i < 20; i++ {
			if d := p.backoff(tc.attempt, tc.retryAfter); d < tc.lo || d > tc.hi {
				t.Errorf("backoff(%d, %v): got %v, want in [%v, %v]", tc.attempt, tc.retryAfter, d, tc.lo, tc.hi)
			}
		}
	}
}

// TestBackoffJitter: waits for the same attempt are spread over [d/2, d]
// ("equal jitter"), so messages that failed together do not retry together.
// Draws only, no timing: with 200 draws per attempt, the chance that all
// fall in one half of the range is 2^-199.
func TestBackoffJitter(t *testing.T) {
	p := New(Config{RetryInitial: 100 * time.Millisecond, RetryMax: time.Second}, Deps{})
	for _, tc := range []struct {
		attempt int
		d       time.Duration // the exponential step before jitter
	}{
		{1, 100 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{10, time.Second},
	} {
		low, high := 0, 0
		for i := 0; i < 200; i++ {
			got := p.backoff(tc.attempt, 0)
			switch {
			case got < tc.d/2 || got > tc.d:
				t.Fatalf("backoff(%d): got %v, want in [%v, %v]", tc.attempt, got, tc.d/2, tc.d)
			case got < tc.d*3/4:
				low++
			default:
				high++
			}
		}
		if low == 0 || high == 0 {
			t.Errorf("backoff(%d): %d draws in [d/2, 3d/4) and %d in [3d/4, d], want the range covered", tc.attempt, low, high)
		}
	}
}
