package delivery

import (
	"time"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// Limits of the pipeline's input, as documented in the delivery API.
const (
	// MaxBatchMessages bounds one Submit (and one SendRequest).
	MaxBatchMessages = 1000
	// MaxTokensPerMessage bounds a message's explicit tokens.
	MaxTokensPerMessage = 1000
	// MaxIdempotencyKeyLen bounds an idempotency key, in bytes.
	MaxIdempotencyKeyLen = 256
	// MaxIDLen bounds message, journey, profile and app ids, in bytes.
	MaxIDLen = 256
	// DefaultTTL is a message's TTL when it gives none.
	DefaultTTL = 24 * time.Hour
	// MaxTTL is the longest TTL, FCM's own maximum.
	MaxTTL = 28 * 24 * time.Hour

	// APNsPayloadLimit is Apple's limit on a push's JSON body, in bytes.
	APNsPayloadLimit = 4096
	// APNsVoIPPayloadLimit is Apple's limit for VoIP pushes.
	APNsVoIPPayloadLimit = 5120
	// FCMPayloadLimit is Google's limit on a message's payload.
	FCMPayloadLimit = 4096
	// MaxCollapseIDLen is Apple's limit on apns-collapse-id.
	MaxCollapseIDLen = 64
)

// Message is one notification to one target: a profile (every active token
// it owns) or explicit tokens.
type Message struct {
	// IdempotencyKey is required: a key completed before (per tenant, within
	// the dedupe window) is not sent again.
	IdempotencyKey string
	// MessageID identifies the message in tracking and is the default
	// collapse id; it defaults to IdempotencyKey.
	MessageID string
	// JourneyID is the journey the message belongs to, if any.
	JourneyID string

	// Exactly one of Profile and Tokens is set.
	Profile *ProfileTarget
	Tokens  []Target

	Notification Notification
	APNs         APNsOptions
	FCM          FCMOptions

	// TTL is how long the gateways (and the pipeline's retries) keep trying;
	// 0 means DefaultTTL.
	TTL time.Duration
}

// ProfileTarget sends to every active token of a profile, resolved through
// profilesvc.
type ProfileTarget struct {
	ProfileID string
	// AppIDs keeps only tokens of these apps; empty means all.
	AppIDs []string
	// Platforms keeps only tokens of these platforms; empty means all.
	Platforms []commonv1.Platform
}

// Target is one token of one app.
type Target struct {
	Token     string
	Platform  commonv1.Platform
	AppID     string
	ProfileID string
	// APNsEnvironment selects the APNs gateway for this token; unspecified
	// means the app's environment.
	APNsEnvironment commonv1.ApnsEnvironment
}

// Notification is the platform-neutral content of a push.
type Notification struct {
	Title    string
	Subtitle string // APNs only
	Body     string
	ImageURL string
	Sound    string
	Badge    *int32
	Data     map[string]string
	Category string // APNs category, FCM click_action
	ThreadID string // APNs thread-id (FCM has no grouping field)
	DeepLink string // delivered as the data key "deep_link"
}

// APNsPushType is the apns-push-type of a push.
type APNsPushType int

// Push types; Unspecified means alert when the notification has visible text
// and background otherwise.
const (
	APNsPushTypeUnspecified APNsPushType = iota
	APNsPushTypeAlert
	APNsPushTypeBackground
	APNsPushTypeVoIP
	APNsPushTypeLiveActivity
)

// APNsOptions are APNs-specific overrides.
type APNsOptions struct {
	PushType APNsPushType
	// Priority is 10, 5 or 1; 0 means 10 for alerts and 5 otherwise.
	Priority int
	// Expiration is when APNs may drop the push; zero derives it from the
	// TTL.
	Expiration time.Time
	// CollapseID defaults to the message id (hashed when it is longer than
	// 64 bytes).
	CollapseID       string
	MutableContent   bool
	ContentAvailable bool
}

// FCMPriority is android.priority.
type FCMPriority int

// FCM priorities; Unspecified leaves FCM's default.
const (
	FCMPriorityUnspecified FCMPriority = iota
	FCMPriorityNormal
	FCMPriorityHigh
)

// FCMOptions are FCM-specific overrides.
type FCMOptions struct {
	Priority FCMPriority
	// TTL is android.ttl; 0 uses the message's TTL.
	TTL time.Duration
	// CollapseKey defaults to the message id.
	CollapseKey string
	ChannelID   string
}

// Status is the outcome of a message for one token.
type Status int

// Statuses, matching deliveryv1.SendStatus.
const (
	StatusUnspecified Status = iota
	StatusSent
	StatusFailed
	StatusExcluded
)

// String names the status for logs.
func (s Status) String() string {
	switch s {
	case StatusSent:
		return "sent"
	case StatusFailed:
		return "failed"
	case StatusExcluded:
		return "excluded"
	}
	return "unspecified"
}

// Result is the outcome of one message for one token, or a message-level
// outcome (Target.Token empty) when no token was involved.
type Result struct {
	IdempotencyKey string
	MessageID      string
	JourneyID      string
	Target         Target
	Status         Status
	// GatewayID is the apns-id or the FCM message name of a sent push.
	GatewayID string
	// Reason says why a push failed (StatusFailed).
	Reason commonv1.FailureReason
	// Exclusion says why nothing was sent (StatusExcluded).
	Exclusion commonv1.ExclusionReason
	// Detail is the gateway's own words or the validation error.
	Detail string
	// GatewayTime is, for a dead token, the gateway's timestamp of its
	// invalidation (APNs 410) or when the error was seen.
	GatewayTime time.Time
	// Attempts counts the gateway calls made for this token.
	Attempts int
	// Duplicate marks the stored outcome of an earlier message with the same
	// idempotency key.
	Duplicate bool
	// Time is when the outcome was known.
	Time time.Time
	// TraceParent is the W3C traceparent put in the push.
	TraceParent string
	// MessageDone marks the last result of a message in this session.
	MessageDone bool
}
