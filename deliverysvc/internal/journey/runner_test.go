package journey

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

// A profile with three devices (two iOS apps and an Android app) gets the
// personalized notification on all three; excluded profiles are counted by
// reason and reported as EXCLUDED outcomes.
func TestJourneyReachesEveryDeviceAndCountsExclusions(t *testing.T) {
	h := newHarness(t)
	h.setMembers(
		member(t, "p1", map[string]any{"firstName": "Ada", "locale": "fr-CA"},
			apnsTok(hexToken(1), shopApp), apnsTok(hexToken(2), walletApp), fcmTok("fcm-ada", shopApp)),
		&profilev1.AudienceMember{ProfileId: "p2", Excluded: true, ExclusionReason: commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT},
		member(t, "p3", map[string]any{}, apnsTok(hexToken(3), shopApp)),                // no firstName: render error
		member(t, "p4", map[string]any{"firstName": "Bo"}, fcmTok("fcm-bo", walletApp)), // wallet has no FCM app
		member(t, "p5", map[string]any{"firstName": "Cy"}),                              // no token
	)
	h.start()
	j := journey("three devices")
	j.Template.Title = "Hi {{firstName | required}}"
	j.Variants = []*deliveryv1.TemplateVariant{
		{Locale: "fr", Template: &deliveryv1.MessageTemplate{Title: "Salut {{firstName | required}}"}},
		{Locale: "fr", Platform: commonv1.Platform_PLATFORM_FCM, Template: &deliveryv1.MessageTemplate{Title: "Salut {{firstName | upper}} (Android)"}},
	}
	id := h.publish(j)
	got := h.wait(id)

	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("state: got %v (%s), want COMPLETED", got.GetState(), got.GetError())
	}
	pushes := h.pushesByToken()
	for _, tok := range []string{hexToken(1), hexToken(2), "fcm-ada"} {
		if len(pushes[tok]) != 1 {
			t.Errorf("token %s: got %d pushes, want 1", tok[:8], len(pushes[tok]))
		}
	}
	if len(pushes) != 3 {
		t.Errorf("got pushes to %d tokens, want 3 (profile p1's)", len(pushes))
	}
	msgID := got.GetMessageId()
	for _, p := range pushes[hexToken(1)] {
		if !strings.Contains(string(p.APNs.Payload), `"title":"Salut Ada"`) || p.APNs.CollapseID != msgID {
			t.Errorf("APNs push: payload %s collapse %q; want the fr title and collapse id %q", p.APNs.Payload, p.APNs.CollapseID, msgID)
		}
	}
	if p := pushes["fcm-ada"]; len(p) == 1 {
		if p[0].FCM.Notification.Title != "Salut ADA (Android)" || p[0].FCM.Android.CollapseKey != msgID {
			t.Errorf("FCM push: title %q collapse %q; want the FCM fr variant and collapse key %q", p[0].FCM.Notification.Title, p[0].FCM.Android.CollapseKey, msgID)
		}
	}

	p := got.GetProgress()
	for _, c := range []struct {
		name      string
		got, want int64
	}{
		{"qualified", p.GetQualified(), 5},
		{"tokens targeted", p.GetTokensTargeted(), 3},
		{"sent", p.GetSent(), 3},
		{"profiles done", p.GetProfilesDone(), 5},
		{"excluded no consent", excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT), 1},
		{"excluded render error", excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR), 1},
		{"excluded app not registered", excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_APP_NOT_REGISTERED), 1},
		{"excluded no token", excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, c.got, c.want)
		}
	}
	if p.GetEndTime() == nil || p.GetStartTime() == nil {
		t.Errorf("start %v end %v, want both set", p.GetStartTime(), p.GetEndTime())
	}

	// trackingsvc hears of every exclusion, by reason, and of every send.
	h.mu.Lock()
	excl := map[string]commonv1.ExclusionReason{}
	sent := 0
	for _, r := range h.recorded {
		switch r.Status {
		case delivery.StatusExcluded:
			excl[r.Target.ProfileID] = r.Exclusion
			if r.JourneyID != id || r.MessageID != msgID {
				t.Errorf("exclusion of %s: journey %q message %q, want %q %q", r.Target.ProfileID, r.JourneyID, r.MessageID, id, msgID)
			}
		case delivery.StatusSent:
			sent++
		}
	}
	h.mu.Unlock()
	want := map[string]commonv1.ExclusionReason{
		"p2": commonv1.ExclusionReason_EXCLUSION_REASON_NO_CONSENT,
		"p3": commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR,
		"p4": commonv1.ExclusionReason_EXCLUSION_REASON_APP_NOT_REGISTERED,
		"p5": commonv1.ExclusionReason_EXCLUSION_REASON_NO_ACTIVE_TOKEN,
	}
	for pid, reason := range want {
		if excl[pid] != reason {
			t.Errorf("recorded exclusion of %s: got %v, want %v", pid, excl[pid], reason)
		}
	}
	if sent != 3 {
		t.Errorf("recorded SENT outcomes: got %d, want 3", sent)
	}
	if cursor, _ := h.store.Cursor("acme", id); cursor != "p5" {
		t.Errorf("cursor: got %q, want the last profile p5", cursor)
	}
}

// The journey asks profilesvc for its audience with its apps, platforms
// and consent options, and a second journey sees the audience as it is
// then: a profile that stopped meeting the condition is not reached.
func TestJourneyQueriesItsAudience(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 3)...)
	h.start()
	j := journey("gold")
	j.Audience = &deliveryv1.Audience{Condition: `attributes.tier == "gold"`, Platforms: []commonv1.Platform{commonv1.Platform_PLATFORM_APNS}, RequireExplicitConsent: true}
	h.wait(h.publish(j))
	h.mu.Lock()
	q := h.queries[len(h.queries)-1]
	h.mu.Unlock()
	if q.GetCondition() != j.Audience.Condition || !q.GetRequireExplicitConsent() || len(q.GetPlatforms()) != 1 ||
		strings.Join(q.GetAppIds(), ",") != shopApp+","+walletApp {
		t.Errorf("query: got %v, want the journey's condition, platforms, consent and apps", q)
	}
	if got := q.GetMemberFields(); !slices.Equal(got.GetAttributes(), []string{"firstName", "locale"}) || len(got.GetIdentityNamespaces()) != 0 {
		t.Errorf("query: got member fields %v, want what the templates read (firstName) and the locale", got)
	}

	h.setMembers(population(t, 3)[1:]...) // p000000 no longer qualifies
	before := h.pushCount()
	h.wait(h.publish(journey("second")))
	if got := h.pushesByToken()[hexToken(0)]; len(got) != 1 {
		t.Errorf("the profile that left the audience: got %d pushes over two journeys, want 1 (first journey only)", len(got))
	}
	if got := h.pushCount() - before; got != 2 {
		t.Errorf("second journey: got %d pushes, want 2", got)
	}
}

// While one push hangs, the runner admits no more than the window: the
// messages after the durable cursor never exceed MaxWindow, and the cursor
// never passes the hanging profile.
func TestWindowBoundsWhatIsInFlight(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxWindow = 50
	const n = 600
	h.setMembers(population(t, n)...)
	release := make(chan struct{})
	stuck := hexToken(10)
	inner := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
		out := inner(ctx, pushes)
		for _, p := range pushes {
			if p.Target.Token == stuck {
				select {
				case <-release:
				case <-ctx.Done():
				}
			}
		}
		return out
	}
	h.start()
	id := h.publish(journey("window"))

	// Let the runner fill the window and checkpoint a few times.
	waitUntil(t, 10*time.Second, "window filled", func() bool { return h.pushCount() >= 50 })
	time.Sleep(300 * time.Millisecond)
	pushed := map[string]bool{}
	for tok := range h.pushesByToken() {
		pushed[tok] = true
	}
	cursor, err := h.store.Cursor("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	after := 0
	for i := range n {
		if fmt.Sprintf("p%06d", i) > cursor && pushed[hexToken(i)] {
			after++
		}
	}
	if after > h.cfg.MaxWindow {
		t.Errorf("%d messages sent after the durable cursor %q, want at most the window (%d)", after, cursor, h.cfg.MaxWindow)
	}
	if cursor >= "p000010" {
		t.Errorf("cursor %q passed the profile whose push hangs (p000010)", cursor)
	}
	if len(pushed) >= n {
		t.Errorf("every profile was sent to while one push hung: the window does not hold")
	}

	close(release)
	got := h.wait(id)
	if got.GetProgress().GetSent() != n || len(h.pushesByToken()) != n {
		t.Errorf("after release: sent %d to %d tokens, want %d", got.GetProgress().GetSent(), len(h.pushesByToken()), n)
	}
}

// A service stop mid-journey, then a start over the same data: the journey
// resumes from its checkpoint, reaches every token, counts each once, and
// sends again at most the window.
func TestResumeAfterStopSkipsNobody(t *testing.T) {
	h := newHarness(t)
	h.cfg.MaxWindow = 100
	const n = 1500
	h.setMembers(population(t, n)...)
	var gate atomic.Bool // pushes hang from some point, until the stop
	inner := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
		if gate.Load() {
			<-ctx.Done()
			out := make([]delivery.Attempt, len(pushes))
			for i := range out {
				out[i] = delivery.Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_NETWORK, Detail: ctx.Err().Error()}
			}
			return out
		}
		return inner(ctx, pushes)
	}
	h.start()
	id := h.publish(journey("resume"))
	waitUntil(t, 10*time.Second, "a third sent", func() bool { return h.pushCount() >= n/3 })
	gate.Store(true)
	h.stop()
	stopped, err := h.store.Get("acme", id)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_RUNNING {
		t.Fatalf("after the stop: state %v, want RUNNING (to resume)", stopped.GetState())
	}
	atStop := h.pushCount()
	if atStop >= n {
		t.Fatalf("the journey finished (%d pushes) before the stop", atStop)
	}

	gate.Store(false)
	h.start()
	got := h.wait(id)
	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("state: got %v (%s), want COMPLETED", got.GetState(), got.GetError())
	}
	pushes := h.pushesByToken()
	resent := 0
	for i := range n {
		c := len(pushes[hexToken(i)])
		if c == 0 {
			t.Fatalf("profile p%06d was skipped", i)
		}
		resent += c - 1
	}
	if resent > h.cfg.MaxWindow {
		t.Errorf("re-sent %d, want at most the window (%d)", resent, h.cfg.MaxWindow)
	}
	p := got.GetProgress()
	if p.GetSent() != n || p.GetQualified() != n || p.GetTokensTargeted() != n {
		t.Errorf("progress: sent %d qualified %d targeted %d, want each %d (counted once)", p.GetSent(), p.GetQualified(), p.GetTokensTargeted(), n)
	}
	t.Logf("stopped after %d pushes; %d re-sent after the restart", atStop, resent)
}

// Cancel stops the journey at once: it returns within a second, the
// journey is CANCELLED, and no push starts after it returned.
func TestCancelStopsSendingWithinASecond(t *testing.T) {
	h := newHarness(t)
	const n = 5000
	id := h.publishSlowly(n, "cancel")
	start := time.Now()
	j, err := h.m.Cancel(testCtx, id)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if took > time.Second {
		t.Errorf("Cancel took %s, want under a second", took)
	}
	if j.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Errorf("state: got %v, want CANCELLED", j.GetState())
	}
	atCancel := h.pushCount()
	time.Sleep(100 * time.Millisecond)
	if got := h.pushCount(); got != atCancel {
		t.Errorf("%d pushes started after Cancel returned", got-atCancel)
	}
	if atCancel >= n {
		t.Errorf("the journey finished before the cancel")
	}
	if _, err := h.m.Cancel(testCtx, id); !errors.Is(err, ErrFinished) {
		t.Errorf("second cancel: got %v, want ErrFinished", err)
	}
}

// The throughput cap holds: n messages at c per second cannot take less
// than (n - burst) / c, whatever the machine's speed.
func TestThroughputCap(t *testing.T) {
	h := newHarness(t)
	const n, perSecond = 300, 200
	h.setMembers(population(t, n)...)
	h.start()
	j := journey("capped")
	j.Delivery = &deliveryv1.DeliveryOptions{MaxMessagesPerSecond: perSecond}
	start := time.Now()
	got := h.wait(h.publish(j))
	elapsed := time.Since(start)
	burst := perSecond / 10 // one submit batch under a cap
	if lower := time.Duration(float64(n-burst) / perSecond * float64(time.Second)); elapsed < lower {
		t.Errorf("%d messages at %d/s took %s, want at least %s", n, perSecond, elapsed, lower)
	}
	if got.GetProgress().GetSent() != n {
		t.Errorf("sent: got %d, want %d", got.GetProgress().GetSent(), n)
	}
}

// A failed audience stream is reopened after the last admitted profile:
// nobody is skipped and nobody is sent to twice.
func TestAudienceStreamFailureResumes(t *testing.T) {
	h := newHarness(t)
	h.cfg.AudienceBatch = 100
	const n = 350
	h.setMembers(population(t, n)...)
	var failed atomic.Bool
	serve := h.audience.QueryFunc
	h.audience.QueryFunc = func(ctx context.Context, q *profilev1.QueryAudienceRequest, each func(*profilev1.QueryAudienceResponse) error) error {
		batches := 0
		err := serve(ctx, q, func(resp *profilev1.QueryAudienceResponse) error {
			batches++
			if q.GetLimit() == 0 && q.GetBatchSize() == 100 && batches == 3 && !failed.Swap(true) {
				return status.Error(codes.Unavailable, "profilesvc restarting")
			}
			return each(resp)
		})
		return err
	}
	h.cfg.SkipAudienceCount = true
	h.start()
	got := h.wait(h.publish(journey("flaky audience")))
	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("state: got %v (%s), want COMPLETED", got.GetState(), got.GetError())
	}
	pushes := h.pushesByToken()
	for i := range n {
		if c := len(pushes[hexToken(i)]); c != 1 {
			t.Errorf("p%06d: got %d pushes, want 1", i, c)
		}
	}
	if !failed.Load() {
		t.Error("the audience stream never failed: the test proves nothing")
	}
}

// A journey that starts later waits, SCHEDULED, and sends nothing before
// its start time.
func TestScheduledJourney(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 5)...)
	var firstPush atomic.Int64
	inner := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
		firstPush.CompareAndSwap(0, time.Now().UnixNano())
		return inner(ctx, pushes)
	}
	h.start()
	j := journey("later")
	startAt := time.Now().Add(300 * time.Millisecond)
	j.StartTime = timestamppb.New(startAt)
	out, _, err := h.m.Publish(testCtx, PublishInput{Journey: j})
	if err != nil {
		t.Fatal(err)
	}
	if out.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED {
		t.Errorf("state at publish: got %v, want SCHEDULED", out.GetState())
	}
	got := h.wait(out.GetJourneyId())
	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED || got.GetProgress().GetSent() != 5 {
		t.Errorf("got %v with %d sent, want COMPLETED with 5", got.GetState(), got.GetProgress().GetSent())
	}
	if first := time.Unix(0, firstPush.Load()); first.Before(startAt) {
		t.Errorf("first push at %s, before the start time %s", first.Format(time.StampMilli), startAt.Format(time.StampMilli))
	}
}

// A scheduled journey survives a restart, and can be cancelled before it
// starts.
func TestScheduledJourneyResumesAndCancels(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 3)...)
	h.start()
	j := journey("tomorrow")
	j.StartTime = timestamppb.New(time.Now().Add(24 * time.Hour))
	id := h.publish(j)
	h.stop()
	h.start()
	got, err := h.m.Get(testCtx, id)
	if err != nil || got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED {
		t.Fatalf("after a restart: %v %v, want SCHEDULED", got.GetState(), err)
	}
	if got, err := h.m.Cancel(testCtx, id); err != nil || got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_CANCELLED {
		t.Fatalf("cancel: %v %v, want CANCELLED", got.GetState(), err)
	}
	if h.pushCount() != 0 {
		t.Errorf("got %d pushes, want none", h.pushCount())
	}
}

// While a journey runs, its progress has a rate and, once the count pass
// sized the audience, an ETA: from a stream of the audience, or from an
// AudienceCounter.
func TestProgressRateAndETA(t *testing.T) {
	t.Run("streamed count", func(t *testing.T) { testProgressRateAndETA(t, false) })
	t.Run("counter", func(t *testing.T) { testProgressRateAndETA(t, true) })
}

func testProgressRateAndETA(t *testing.T, counter bool) {
	h := newHarness(t)
	var counted atomic.Bool
	if counter {
		h.counter = &fakeCountingAudience{fakeAudience: h.audience, CountFunc: func(_ context.Context, q *profilev1.QueryAudienceRequest) (int64, error) {
			counted.Store(true)
			h.mu.Lock()
			defer h.mu.Unlock()
			return int64(len(h.members)), nil
		}}
	}
	h.cfg.MaxWindow = 20
	const n = 3000
	h.setMembers(population(t, n)...)
	inner := h.sender.SendFunc
	h.sender.SendFunc = func(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
		}
		return inner(ctx, pushes)
	}
	h.start()
	id := h.publish(journey("eta"))
	var seen *deliveryv1.Journey
	waitUntil(t, 20*time.Second, "an ETA", func() bool {
		j, err := h.m.Get(testCtx, id)
		if err != nil {
			t.Fatal(err)
		}
		seen = j
		return j.GetProgress().GetEta() != nil && j.GetProgress().GetRatePerSecond() > 0
	})
	if counter != counted.Load() {
		t.Errorf("the counter was used: %v, want %v", counted.Load(), counter)
	}
	p := seen.GetProgress()
	remaining := float64(n-p.GetQualified()) / p.GetRatePerSecond()
	if eta := p.GetEta().AsDuration(); eta <= 0 || eta > time.Duration(remaining*10)*time.Second {
		t.Errorf("ETA %s for %d remaining profiles at %.0f/s: not plausible", eta, n-p.GetQualified(), p.GetRatePerSecond())
	}
	if _, err := h.m.Cancel(testCtx, id); err != nil {
		t.Fatal(err)
	}
	final, _ := h.m.Get(testCtx, id)
	if final.GetProgress().GetEta() != nil || final.GetProgress().GetRatePerSecond() != 0 {
		t.Errorf("a finished journey has no rate or ETA; got %v", final.GetProgress())
	}
}

// Messages the pipeline answers without a token (an invalid message) still
// complete their profile: the journey ends and counts them.
func TestInvalidMessagesCompleteTheirProfile(t *testing.T) {
	h := newHarness(t)
	h.setMembers(
		member(t, "p0", map[string]any{"img": "https://example.com/p0.png"}, apnsTok(hexToken(0), shopApp)), // the publish sample
		member(t, "p1", map[string]any{"img": "not a url"}, apnsTok(hexToken(1), shopApp)),
	)
	h.start()
	j := journey("bad image for one profile")
	j.Template.ImageUrl = "{{img | default \"https://example.com/a.png\"}}"
	got := h.wait(h.publish(j))
	if got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_COMPLETED {
		t.Fatalf("state: got %v, want COMPLETED", got.GetState())
	}
	p := got.GetProgress()
	if excludedCount(p, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR) != 1 || failedCount(p, commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE) != 0 ||
		p.GetProfilesDone() != 2 || p.GetSent() != 1 || p.GetTokensTargeted() != 1 {
		t.Errorf("progress: got %v, want 1 sent, the bad image's profile excluded as a render error, both profiles done", p)
	}
	// The dry run counts it the same way, before anything is sent.
	_, dr, err := h.m.Publish(testCtx, PublishInput{Journey: j, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if excludedCount(&deliveryv1.JourneyProgress{Excluded: dr.GetExcluded()}, commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR) != 1 || dr.GetTokensTargeted() != 1 {
		t.Errorf("dry run: got %v, want the bad image's profile excluded as a render error", dr)
	}
}

// Journeys belong to their tenant.
func TestJourneysAreScopedByTenant(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 1)...)
	h.start()
	id := h.wait(h.publish(journey("acme's"))).GetJourneyId()
	other := tenantCtx("globex")
	if _, err := h.m.Get(other, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get from another tenant: got %v, want ErrNotFound", err)
	}
	if js, _, err := h.m.List(other, 0, "", nil); err != nil || len(js) != 0 {
		t.Errorf("List from another tenant: got %d journeys (%v), want none", len(js), err)
	}
	if _, err := h.m.Cancel(other, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("Cancel from another tenant: got %v, want ErrNotFound", err)
	}
}

// A stored journey that no longer compiles fails alone at startup; the
// others resume.
func TestResumeFailsOnlyAJourneyThatNoLongerCompiles(t *testing.T) {
	h := newHarness(t)
	h.setMembers(population(t, 3)...)
	h.start()
	later := journey("later")
	later.StartTime = timestamppb.New(time.Now().Add(time.Hour))
	good := h.publish(later)
	bad := h.publish(later)
	h.stop()
	j, err := h.store.Get("acme", bad)
	if err != nil {
		t.Fatal(err)
	}
	j.Template.Title = "{{ broken"
	if err := h.store.Checkpoint("acme", j, ""); err != nil {
		t.Fatal(err)
	}
	h.start()
	if got, _ := h.m.Get(testCtx, bad); got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_FAILED || !strings.Contains(got.GetError(), "cannot resume") {
		t.Errorf("the broken journey: got %v %q, want FAILED", got.GetState(), got.GetError())
	}
	if got, _ := h.m.Get(testCtx, good); got.GetState() != deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED {
		t.Errorf("the good journey: got %v, want SCHEDULED", got.GetState())
	}
}
