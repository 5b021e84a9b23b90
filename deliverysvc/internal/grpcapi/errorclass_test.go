package grpcapi_test

// End-to-end tests of the gateway error classes through the Send RPC, the
// real apns2 and firebase clients and the emulators: retryable failures that
// end in a send, credential failures that suspend and resume an app, dead
// tokens, and the dead-token feedback outbox while profilesvc is down.

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fault"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

// emulatorSeed is the fault seed testenv starts both emulators with (the
// zero Options.Seed).
const emulatorSeed = 0

// oneFailure finds how to make exactly one request fail with the faults
// made by with: the emulators draw each request's fate from the seed and
// the request's number since SetFaults (package fault), so a fault.Injector
// with the same seed and faults predicts them. It returns the faults and how
// many requests to spend first (skip) so that, after SetFaults, requests
// 1..skip pass, request skip+1 fails and request skip+2 passes.
func oneFailure(t *testing.T, with func(rate float64) fault.Faults) (fault.Faults, int) {
	t.Helper()
	for skip := 0; skip <= 4; skip++ {
		for pct := 1; pct < 100; pct++ {
			f := with(float64(pct) / 100)
			in := fault.NewInjector(emulatorSeed)
			if err := in.Set(f); err != nil {
				t.Fatal(err)
			}
			ok := true
			for i := 1; i <= skip+2 && ok; i++ {
				d := in.Draw()
				failed := d.Status != 0 || d.Drop != ""
				ok = failed == (i == skip+1)
			}
			if ok {
				return f, skip
			}
		}
	}
	t.Fatalf("no fault rate fails exactly one request within the first 6 with seed %d", emulatorSeed)
	return fault.Faults{}, 0
}

// gatewayLog is what one emulator received for one token, reduced to what
// the tests compare.
type gatewayLog struct {
	time     time.Time
	accepted bool
	outcome  string // reason or error code, "" when accepted
}

func apnsLog(env *testenv.Env, token string) []gatewayLog {
	var out []gatewayLog
	for _, d := range env.APNs.ReceivedFor(token) {
		out = append(out, gatewayLog{d.Time, d.Status == 200, d.Reason})
	}
	return out
}

func fcmLog(env *testenv.Env, token string) []gatewayLog {
	var out []gatewayLog
	for _, d := range env.FCM.ReceivedFor(token) {
		out = append(out, gatewayLog{d.Time, d.Status == 200 && !d.ValidateOnly, d.ErrorCode})
	}
	return out
}

// A retryable failure is retried and the message is sent: the gateway saw
// the failure, then exactly one accepted request.
func TestRetryableFailuresEndInASend(t *testing.T) {
	const retryAfter = time.Second
	for _, tc := range []struct {
		name     string
		platform commonv1.Platform
		faults   func(rate float64) fault.Faults
		outcome  string // what the emulator logs for the failed request
		// attempts is the result's count: deliverysvc's attempts. firebase
		// retries 503 and network errors itself (its default retry
		// policy), inside one of deliverysvc's attempts.
		attempts int32
		// minGap is the least time between the failure and the retry: the
		// Retry-After sent with 429 and 503.
		minGap time.Duration
	}{
		{"FCM QUOTA_EXCEEDED", commonv1.Platform_PLATFORM_FCM,
			func(r float64) fault.Faults { return fault.Faults{TooManyRequestsRate: r, RetryAfter: retryAfter} },
			fcm.ErrQuotaExceeded, 2, retryAfter},
		{"FCM INTERNAL", commonv1.Platform_PLATFORM_FCM,
			func(r float64) fault.Faults { return fault.Faults{InternalErrorRate: r} },
			fcm.ErrInternal, 2, 0},
		{"FCM UNAVAILABLE", commonv1.Platform_PLATFORM_FCM,
			func(r float64) fault.Faults { return fault.Faults{UnavailableRate: r, RetryAfter: retryAfter} },
			fcm.ErrUnavailable, 1, retryAfter},
		{"FCM dropped connection", commonv1.Platform_PLATFORM_FCM,
			func(r float64) fault.Faults { return fault.Faults{DropRate: r, DropMode: fault.DropClose} },
			fcm.ErrorConnectionDropped, 1, 0},
		{"APNs InternalServerError", commonv1.Platform_PLATFORM_APNS,
			func(r float64) fault.Faults { return fault.Faults{InternalErrorRate: r} },
			apns.ReasonInternalServerError, 2, 0},
		{"APNs ServiceUnavailable", commonv1.Platform_PLATFORM_APNS,
			func(r float64) fault.Faults { return fault.Faults{UnavailableRate: r, RetryAfter: retryAfter} },
			apns.ReasonServiceUnavailable, 2, retryAfter},
		{"APNs dropped connection", commonv1.Platform_PLATFORM_APNS,
			func(r float64) fault.Faults { return fault.Faults{DropRate: r, DropMode: fault.DropClose} },
			apns.ReasonConnectionDropped, 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case waits on backoffs, not on the CPU
			env, _, _ := started(t)
			ctx := context.Background()
			target, setFaults, log := testenv.APNsTarget, env.APNs.SetFaults, apnsLog
			token := testenv.APNsToken
			if tc.platform == commonv1.Platform_PLATFORM_FCM {
				target, setFaults, log, token = testenv.FCMTarget, env.FCM.SetFaults, fcmLog, testenv.FCMToken
			}
			app := bundleID
			if tc.platform == commonv1.Platform_PLATFORM_FCM {
				app = packageName
			}

			f, skip := oneFailure(t, tc.faults)
			if err := setFaults(f); err != nil {
				t.Fatal(err)
			}
			// Spend the requests the fault sequence lets through first.
			if skip > 0 {
				var targets []*deliveryv1.TokenTarget
				for i := 0; i < skip; i++ {
					targets = append(targets, target(token(100+i), app))
				}
				for _, r := range send(t, env, ctx, []*deliveryv1.Message{testenv.TokensMessage("primer", note(), targets...)}).Results {
					if r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetAttempts() != 1 {
						t.Fatalf("primer push: got %v %v %q after %d attempts, want sent at once", r.GetStatus(), r.GetReason(), r.GetDetail(), r.GetAttempts())
					}
				}
			}

			out := send(t, env, ctx, []*deliveryv1.Message{testenv.TokensMessage("k", note(), target(token(1), app))})
			if len(out.Results) != 1 {
				t.Fatalf("got %d results, want 1", len(out.Results))
			}
			r := out.Results[0]
			if r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetGatewayId() == "" || r.GetAttempts() != tc.attempts {
				t.Errorf("got %v %v %q with gateway id %q after %d attempts, want SENT with a gateway id after %d",
					r.GetStatus(), r.GetReason(), r.GetDetail(), r.GetGatewayId(), r.GetAttempts(), tc.attempts)
			}
			got := log(env, token(1))
			if len(got) != 2 || got[0].accepted || got[0].outcome != tc.outcome || !got[1].accepted {
				t.Fatalf("the gateway received %+v, want one %s and then one accepted request", got, tc.outcome)
			}
			if gap := got[1].time.Sub(got[0].time); gap < tc.minGap {
				t.Errorf("the retry came %v after the failure, want at least the Retry-After of %v", gap, tc.minGap)
			}
		})
	}
}

// credentialCase is one gateway rejection of an app's credentials, made
// for every push of the app (the device tokens sent to and the token of the
// credential check) with per-token outcomes.
type credentialCase struct {
	name     string
	platform commonv1.Platform
	outcome  string // APNs reason or FCM error code
	reason   commonv1.FailureReason
}

func TestCredentialErrorsSuspendAndResume(t *testing.T) {
	for _, tc := range []credentialCase{
		// Apple answers ExpiredProviderToken when the JWT is more than an
		// hour old; apns2 renews it after 50 minutes, so the emulator
		// answers it as an outcome instead.
		{"APNs ExpiredProviderToken", commonv1.Platform_PLATFORM_APNS, apns.ReasonExpiredProviderToken, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS},
		{"FCM SENDER_ID_MISMATCH", commonv1.Platform_PLATFORM_FCM, fcm.ErrSenderIDMismatch, commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH},
		{"FCM THIRD_PARTY_AUTH_ERROR", commonv1.Platform_PLATFORM_FCM, fcm.ErrThirdPartyAuthError, commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testCredentialCase(t, tc)
		})
	}
}

func testCredentialCase(t *testing.T, tc credentialCase) {
	env, a, _ := started(t)
	ctx := context.Background()
	isAPNs := tc.platform == commonv1.Platform_PLATFORM_APNS

	// The platform's side of the test.
	var (
		key         *deliveryv1.AppKey
		msg         func(key string, i int) []*deliveryv1.Message
		setOutcome  func(token, outcome string) error
		received    func() int64 // every request the gateway got
		checkToken  string       // the token of deliverysvc's credential check
		newCreds    func() (*deliveryv1.Credentials, string)
		signedWith  func(token string) string
		deviceToken func(i int) string
	)
	if isAPNs {
		key = apnsKey(bundleID)
		deviceToken = testenv.APNsToken
		msg = func(k string, i int) []*deliveryv1.Message {
			return []*deliveryv1.Message{testenv.TokensMessage(k, note(), testenv.APNsTarget(testenv.APNsToken(i), bundleID))}
		}
		setOutcome = env.APNs.SetTokenOutcome
		received = func() int64 { return env.APNs.Count().Received }
		log := env.APNs.Received()
		if len(log) != 1 {
			t.Fatalf("APNs received %d requests at registration, want the credential check only", len(log))
		}
		checkToken = log[0].Token
		newCreds = func() (*deliveryv1.Credentials, string) {
			p8, _, err := env.APNs.NewProviderKey(a.TeamID, "KEY3333333")
			if err != nil {
				t.Fatal(err)
			}
			return testenv.APNsCredentials(p8, "KEY3333333", a.TeamID), "KEY3333333"
		}
		signedWith = func(token string) string {
			got := env.APNs.ReceivedFor(token)
			if len(got) != 1 || got[0].Status != 200 {
				t.Fatalf("APNs received %+v for the push after the update, want one accepted", got)
			}
			return got[0].KeyID
		}
	} else {
		key = &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: packageName}
		deviceToken = testenv.FCMToken
		msg = func(k string, i int) []*deliveryv1.Message {
			return []*deliveryv1.Message{testenv.TokensMessage(k, note(), testenv.FCMTarget(testenv.FCMToken(i), packageName))}
		}
		setOutcome = env.FCM.SetTokenOutcome
		received = func() int64 { c := env.FCM.Count(); return c.Received + c.TokensIssued }
		log := env.FCM.Received()
		if len(log) != 1 || !log[0].ValidateOnly {
			t.Fatalf("FCM received %+v at registration, want the credential check (a dry run) only", log)
		}
		checkToken = log[0].Token
		newCreds = func() (*deliveryv1.Credentials, string) {
			sa, _, err := env.FCM.NewServiceAccount("proj-1")
			if err != nil {
				t.Fatal(err)
			}
			var parsed struct {
				ClientEmail string `json:"client_email"`
			}
			if err := json.Unmarshal(sa, &parsed); err != nil {
				t.Fatal(err)
			}
			return testenv.FCMCredentials(sa), parsed.ClientEmail
		}
		signedWith = func(token string) string {
			got := env.FCM.ReceivedFor(token)
			if len(got) != 1 || got[0].Status != 200 {
				t.Fatalf("FCM received %+v for the message after the update, want one accepted", got)
			}
			return got[0].ClientEmail
		}
	}
	rejectAll := func(outcome string) {
		t.Helper()
		for _, tok := range []string{checkToken, deviceToken(1), deviceToken(4)} {
			if err := setOutcome(tok, outcome); err != nil {
				t.Fatal(err)
			}
		}
	}
	suspended := func(step string) {
		t.Helper()
		app, err := env.Apps.GetApp(ctx, &deliveryv1.GetAppRequest{Key: key})
		if err != nil || app.GetApp().GetState() != deliveryv1.AppState_APP_STATE_SUSPENDED ||
			app.GetApp().GetSuspendedReason() != tc.reason || !strings.Contains(app.GetApp().GetSuspendedDetail(), tc.outcome) {
			t.Fatalf("%s: GetApp got %v %v, want SUSPENDED for %v naming %s", step, app.GetApp(), err, tc.reason, tc.outcome)
		}
	}
	sendOne := func(k string, i int) *deliveryv1.SendResult {
		t.Helper()
		out := send(t, env, ctx, msg(k, i))
		if len(out.Results) != 1 {
			t.Fatalf("%s: got %d results, want 1", k, len(out.Results))
		}
		return out.Results[0]
	}

	// The gateway refuses the credentials: the message fails with that
	// reason and the app is suspended.
	rejectAll(tc.outcome)
	r := sendOne("k1", 1)
	if r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_FAILED || r.GetReason() != tc.reason || !strings.Contains(r.GetDetail(), tc.outcome) || r.GetAttempts() != 1 {
		t.Fatalf("got %v %v %q after %d attempts, want FAILED %v naming %s after 1", r.GetStatus(), r.GetReason(), r.GetDetail(), r.GetAttempts(), tc.reason, tc.outcome)
	}
	suspended("after the refusal")

	// While suspended no send is burned: the gateway receives nothing.
	before := received()
	r = sendOne("k2", 2)
	if r.GetReason() != commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED || r.GetAttempts() != 0 {
		t.Errorf("while suspended: got %v %q after %d attempts, want APP_SUSPENDED without a send", r.GetReason(), r.GetDetail(), r.GetAttempts())
	}
	if after := received(); after != before {
		t.Errorf("the gateway got %d requests while the app was suspended, want none", after-before)
	}

	// ValidateApp while the gateway still refuses: still suspended.
	// (Not valid is either a response saying so or, as Register answers
	// rejected credentials, FailedPrecondition: both name the refusal.)
	v, err := env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: key})
	notValid := err == nil && !v.GetValid() && strings.Contains(v.GetDetail(), tc.outcome)
	if st := status.Convert(err); err != nil && st.Code() == codes.FailedPrecondition && strings.Contains(st.Message(), tc.outcome) {
		notValid = true
	}
	if !notValid {
		t.Errorf("ValidateApp before the fix: got %v %v, want not valid naming %s", v, err, tc.outcome)
	}
	suspended("after ValidateApp before the fix")

	// Fixed at the gateway: ValidateApp resumes the app.
	rejectAll("")
	v, err = env.Apps.ValidateApp(ctx, &deliveryv1.ValidateAppRequest{Key: key})
	if err != nil || !v.GetValid() || v.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE {
		t.Fatalf("ValidateApp after the fix: got %v %v, want valid and ACTIVE", v, err)
	}
	if r := sendOne("k3", 3); r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetAttempts() != 1 {
		t.Errorf("after ValidateApp: got %v %v %q, want sent", r.GetStatus(), r.GetReason(), r.GetDetail())
	}

	// Suspended again, then resumed by new credentials.
	rejectAll(tc.outcome)
	if r := sendOne("k4", 4); r.GetReason() != tc.reason {
		t.Fatalf("second refusal: got %v %q, want %v", r.GetReason(), r.GetDetail(), tc.reason)
	}
	suspended("after the second refusal")
	rejectAll("")
	c, signer := newCreds()
	up, err := env.Apps.UpdateAppCredentials(ctx, &deliveryv1.UpdateAppCredentialsRequest{Key: key, Credentials: c})
	if err != nil || up.GetApp().GetState() != deliveryv1.AppState_APP_STATE_ACTIVE {
		t.Fatalf("UpdateAppCredentials: got %v %v, want ACTIVE", up, err)
	}
	if r := sendOne("k5", 5); r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_SENT || r.GetAttempts() != 1 {
		t.Errorf("after the update: got %v %v %q, want sent", r.GetStatus(), r.GetReason(), r.GetDetail())
	}
	if got := signedWith(deviceToken(5)); got != signer {
		t.Errorf("the send after the update used %q, want the new credentials %q", got, signer)
	}
}

// APNs ExpiredToken and DeviceTokenNotForTopic: sent once, never retried,
// reported to profilesvc with the gateway's timestamp when it gives one
// (410) and the time the answer was seen otherwise (400).
func TestAPNsDeadTokensEndToEnd(t *testing.T) {
	env, _, _ := started(t)
	ctx := context.Background()
	setAt := time.Now()
	for i, reason := range []string{apns.ReasonExpiredToken, apns.ReasonDeviceTokenNotForTopic} {
		if err := env.APNs.SetTokenOutcome(testenv.APNsToken(i+1), reason); err != nil {
			t.Fatal(err)
		}
	}
	setDone := time.Now()
	cases := map[string]struct {
		outcome  string
		reason   commonv1.FailureReason
		feedback profilev1.FeedbackReason
		gone     bool // 410: APNs sends a timestamp
	}{
		testenv.APNsToken(1): {apns.ReasonExpiredToken, commonv1.FailureReason_FAILURE_REASON_EXPIRED_TOKEN, profilev1.FeedbackReason_FEEDBACK_REASON_EXPIRED_TOKEN, true},
		testenv.APNsToken(2): {apns.ReasonDeviceTokenNotForTopic, commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC, profilev1.FeedbackReason_FEEDBACK_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC, false},
	}
	out := send(t, env, ctx, []*deliveryv1.Message{testenv.TokensMessage("dead", note(),
		testenv.APNsTarget(testenv.APNsToken(1), bundleID), testenv.APNsTarget(testenv.APNsToken(2), bundleID))})
	if len(out.Results) != 2 {
		t.Fatalf("got %d results, want 2", len(out.Results))
	}
	results := map[string]*deliveryv1.SendResult{}
	for _, r := range out.Results {
		results[r.GetToken()] = r
		c := cases[r.GetToken()]
		if r.GetStatus() != deliveryv1.SendStatus_SEND_STATUS_FAILED || r.GetReason() != c.reason || !strings.Contains(r.GetDetail(), c.outcome) || r.GetAttempts() != 1 {
			t.Errorf("%s: got %v %v %q after %d attempts, want FAILED %v after 1", c.outcome, r.GetStatus(), r.GetReason(), r.GetDetail(), r.GetAttempts(), c.reason)
		}
	}
	for token, c := range cases {
		if got := env.APNs.ReceivedFor(token); len(got) != 1 || got[0].Reason != c.outcome {
			t.Errorf("%s: APNs received %+v, want the one refused push", c.outcome, got)
		}
	}

	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := env.Feedback.WaitFor(wait, 2); err != nil {
		t.Fatalf("got %d verdicts, want 2: %v", len(env.Feedback.All()), err)
	}
	fbs := env.Feedback.All()
	if len(fbs) != 2 {
		t.Fatalf("profilesvc got %d verdicts, want 2", len(fbs))
	}
	for _, fb := range fbs {
		c, ok := cases[fb.GetToken()]
		if !ok {
			t.Errorf("verdict on an unexpected token: %v", fb)
			continue
		}
		if fb.GetReason() != c.feedback || fb.GetPlatform() != commonv1.Platform_PLATFORM_APNS || fb.GetAppId() != bundleID {
			t.Errorf("%s: got verdict %v, want %v for APNs app %s", c.outcome, fb, c.feedback, bundleID)
		}
		at := fb.GetGatewayTime().AsTime()
		if c.gone {
			// The 410 body's timestamp (milliseconds, read by apns2 to
			// the second) from when the outcome was set.
			if at.Unix() < setAt.Unix() || at.Unix() > setDone.Unix() || at.Nanosecond() != 0 {
				t.Errorf("%s: gateway time %v, want the 410 timestamp, within [%v, %v] to the second", c.outcome, at, setAt, setDone)
			}
		} else if want := results[fb.GetToken()].GetTime().AsTime(); !at.Equal(want) {
			t.Errorf("%s: gateway time %v, want when the answer was seen, the result's time %v", c.outcome, at, want)
		}
	}
}

// A dead token's verdict waits in the feedback outbox while profilesvc is
// down, across a restart, and is delivered once it is back.
func TestDeadTokenFeedbackWaitsForProfiles(t *testing.T) {
	env, _, _ := started(t)
	ctx := context.Background()
	var down atomic.Bool
	down.Store(true)
	refused := make(chan struct{}, 1000)
	env.Profiles.ReportTokenFeedbackFunc = func(ctx context.Context, req *profilev1.ReportTokenFeedbackRequest) (*profilev1.ReportTokenFeedbackResponse, error) {
		if down.Load() {
			refused <- struct{}{}
			return nil, status.Error(codes.Unavailable, "profilesvc is down (test)")
		}
		return env.Feedback.Report(ctx, req)
	}
	awaitRefusals := func(n int) {
		t.Helper()
		wait, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for i := 0; i < n; i++ {
			select {
			case <-refused:
			case <-wait.Done():
				t.Fatalf("profilesvc was asked %d times, want at least %d", i, n)
			}
		}
	}

	gone := time.UnixMilli(1_750_000_000_000)
	env.APNs.MarkUnregistered(testenv.APNsToken(1), gone)
	out := send(t, env, ctx, []*deliveryv1.Message{testenv.TokensMessage("k", note(), testenv.APNsTarget(testenv.APNsToken(1), bundleID))})
	if r := out.Results[0]; r.GetReason() != commonv1.FailureReason_FAILURE_REASON_UNREGISTERED || r.GetAttempts() != 1 {
		t.Fatalf("got %v after %d attempts, want UNREGISTERED after 1", r.GetReason(), r.GetAttempts())
	}
	// The outbox tries, is refused, and tries again.
	awaitRefusals(2)
	if n := len(env.Feedback.All()); n != 0 {
		t.Fatalf("profilesvc down, yet it got %d verdicts", n)
	}

	// A restart while profilesvc is down keeps the verdict on disk: the
	// new process asks again.
	if err := env.StopService(); err != nil {
		t.Fatal(err)
	}
	for len(refused) > 0 {
		<-refused
	}
	if err := env.StartService(); err != nil {
		t.Fatal(err)
	}
	awaitRefusals(1)

	down.Store(false)
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := env.Feedback.WaitFor(wait, 1); err != nil {
		t.Fatalf("after profilesvc came back: %v", err)
	}
	fbs := env.Feedback.All()
	if len(fbs) != 1 {
		t.Fatalf("got %d verdicts, want 1", len(fbs))
	}
	fb := fbs[0]
	if fb.GetToken() != testenv.APNsToken(1) || fb.GetReason() != profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED ||
		fb.GetAppId() != bundleID || fb.GetGatewayTime().AsTime().Unix() != gone.Unix() {
		t.Errorf("got verdict %v, want UNREGISTERED for %s at the 410 timestamp %v", fb, bundleID, gone)
	}
	if n := len(env.APNs.ReceivedFor(testenv.APNsToken(1))); n != 1 {
		t.Errorf("APNs got %d pushes for the dead token, want 1", n)
	}
}
