package delivery

import (
	"context"
	"errors"
	"time"

	"firebase.google.com/go/v4/messaging"
	"golang.org/x/time/rate"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/outbox"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// Sentinel errors of the pipeline's dependencies.
var (
	// ErrAppNotFound: the app is not registered for the tenant.
	ErrAppNotFound = errors.New("app not registered")
	// ErrProfileNotFound: profilesvc does not know the profile.
	ErrProfileNotFound = errors.New("profile not found")
	// ErrSessionClosed: Submit after Close.
	ErrSessionClosed = errors.New("delivery session closed")
	// ErrRecorderClosed: a Recorder or Feedback is shut down for good. It
	// is the outboxes' ErrClosed, which the outbox-backed implementations
	// pass on as it is.
	ErrRecorderClosed = outbox.ErrClosed
)

// AppKey names an app within the tenant of the context it travels with.
type AppKey struct {
	Platform commonv1.Platform
	AppID    string
}

// App is what the pipeline needs of a registered app at the moment it sends.
// Apps returns a fresh value on every call; a credential rotation gives new
// calls a new Sender while sends holding the old one finish with it.
type App struct {
	Key AppKey
	// APNsEnvironment is the app's default APNs environment.
	APNsEnvironment commonv1.ApnsEnvironment
	// Suspended apps fail messages fast with APP_SUSPENDED.
	Suspended       bool
	SuspendedReason commonv1.FailureReason
	SuspendedDetail string
	// Limiter is the app's send rate limit (pushes per second).
	Limiter *rate.Limiter
	// Sender reaches the app's gateway with its current credentials.
	Sender Sender
}

// Apps looks up registered apps and suspends them after credential errors.
// The tenant is tenant.FromContext(ctx).
type Apps interface {
	// App returns the app, or an error wrapping ErrAppNotFound.
	App(ctx context.Context, key AppKey) (App, error)
	// Suspend marks the app suspended (durably) so that no more sends are
	// burned on rejected credentials.
	Suspend(ctx context.Context, key AppKey, reason commonv1.FailureReason, detail string) error
}

// Sender is an app's live connection to its gateway (APNs or FCM).
type Sender interface {
	// Send makes one attempt for each push and returns one Attempt per push,
	// in the same order. It never retries a gateway error itself; the
	// pipeline does.
	Send(ctx context.Context, pushes []Push) []Attempt
}

// Push is one notification to one token, ready for its gateway.
type Push struct {
	Target Target
	// Deadline is when the message's TTL ends: a sender must not keep
	// trying (or waiting inside a client library's own retries) past it,
	// and reports TTL_EXPIRED when it runs out.
	Deadline time.Time
	// APNs is set for PLATFORM_APNS pushes.
	APNs *APNsPush
	// FCM is set for PLATFORM_FCM pushes; its Token is the target's.
	FCM *messaging.Message
}

// APNsPush is the request of one APNs push, minus the device token.
type APNsPush struct {
	Topic    string
	PushType string
	// Priority is the apns-priority header; 0 leaves it out (Apple's
	// default, 10).
	Priority   int
	Expiration time.Time
	CollapseID string
	// Payload is the JSON body, shared by every token of the message: a
	// Sender must not modify it.
	Payload []byte
}

// Attempt is the gateway's answer to one push.
type Attempt struct {
	// Reason is FAILURE_REASON_UNSPECIFIED when the gateway accepted the
	// push; otherwise the classified failure.
	Reason commonv1.FailureReason
	// GatewayID is the apns-id or FCM message name of an accepted push.
	GatewayID string
	// Detail is the gateway's reason in its own words.
	Detail string
	// RetryAfter is the gateway's Retry-After, if any.
	RetryAfter time.Duration
	// GatewayTime is the time the gateway gives for a token's invalidation
	// (APNs 410 timestamp); zero when it gives none.
	GatewayTime time.Time
}

// Resolver finds the active tokens of a profile (profilesvc).
type Resolver interface {
	// ProfileTokens returns the profile's active tokens that match t's app
	// and platform filters, or an error wrapping ErrProfileNotFound.
	ProfileTokens(ctx context.Context, t ProfileTarget) ([]Target, error)
}

// Recorder keeps outcomes for trackingsvc durably (an outbox), so a crash
// loses no outcome the caller has seen.
type Recorder interface {
	// Record returns once results are durable.
	Record(ctx context.Context, results []Result) error
	// RecordAsync makes results durable, then calls done: exactly once,
	// possibly on another goroutine, and done must not block. The pipeline
	// reports results only after done, so its workers go on sending while
	// the outbox commits. On an error the pipeline calls RecordAsync again
	// with the same results after a backoff, so a failed call must have
	// stored nothing (or its records must be deduplicated downstream);
	// ErrRecorderClosed (possibly wrapped) stops the retries.
	RecordAsync(ctx context.Context, results []Result, done func(error))
}

// DeadToken is a gateway's verdict that a token will never work again.
type DeadToken struct {
	Target Target
	// Reason is one of the permanent token reasons.
	Reason commonv1.FailureReason
	// GatewayTime is the gateway's timestamp, or when the error was seen.
	GatewayTime time.Time
}

// Feedback reports dead tokens to profilesvc durably, like Recorder.
type Feedback interface {
	// ReportDeadAsync makes the report durable, then calls done: exactly
	// once, possibly on another goroutine, and done must not block. Errors
	// are retried as for Recorder.RecordAsync.
	ReportDeadAsync(ctx context.Context, dead []DeadToken, done func(error))
}

// Dedupe remembers completed messages by idempotency key, per tenant.
type Dedupe interface {
	// Lookup returns the stored results of the keys completed before; keys
	// without a record are absent from the map.
	Lookup(ctx context.Context, keys []string) (map[string][]Result, error)
	// Remember stores a completed message's results. It may write them
	// asynchronously (in big sorted batches); Lookup sees them at once.
	Remember(ctx context.Context, key string, results []Result)
}
