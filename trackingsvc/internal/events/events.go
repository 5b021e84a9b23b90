// Package events validates experience events and prepares them for storage:
// what counts as a good event, and how a push token is reduced to its hash
// so trackingsvc never keeps it in clear.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"time"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

// Limits on one event.
const (
	MaxEventIDLen = 128
	// MaxFieldLen bounds every other identifier (profile, app, journey,
	// message, action, traceparent, device details): they become parts of
	// aggregate keys, which must stay small.
	MaxFieldLen = 512
	// MaxTokenLen is generous: APNs tokens are 64 hex characters, FCM
	// tokens about 160; only the hash is stored anyway.
	MaxTokenLen = 4096
	// MaxFutureSkew is how far in the future an event time may be: device
	// clocks drift, but an event from next week is a bug.
	MaxFutureSkew = 5 * time.Minute
)

// Rejection says why one event of a batch was refused.
type Rejection struct {
	Index   int64
	EventID string
	Field   string
	Reason  string
}

// TokenHash is the stored form of a push token: SHA-256, hex, first 16 bytes.
func TokenHash(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:16])
}

// Check validates one event and returns the field at fault and why, or ""
// when the event is good. Field names are relative to the event (e.g.
// "event_time", "device.model"); the caller adds the event's index.
func Check(e *trackingv1.Event, now time.Time) (field, reason string) {
	typ := e.GetType()
	switch {
	case e.GetEventId() == "":
		return "event_id", "required"
	case len(e.GetEventId()) > MaxEventIDLen:
		return "event_id", "longer than " + strconv.Itoa(MaxEventIDLen) + " bytes"
	case typ == trackingv1.EventType_EVENT_TYPE_UNSPECIFIED:
		return "type", "required"
	case trackingv1.EventType_name[int32(typ)] == "":
		return "type", "unknown event type " + strconv.Itoa(int(typ))
	case e.GetEventTime() == nil:
		return "event_time", "required"
	case !e.GetEventTime().IsValid():
		return "event_time", "not a valid timestamp"
	case e.GetEventTime().GetSeconds() < 0:
		return "event_time", "before 1970"
	case e.GetEventTime().AsTime().After(now.Add(MaxFutureSkew)):
		return "event_time", "more than 5 minutes in the future"
	case e.GetProfileId() == "" && e.GetToken() == "":
		return "profile_id", "profile_id or token required"
	case commonv1.Platform_name[int32(e.GetPlatform())] == "":
		return "platform", "unknown platform " + strconv.Itoa(int(e.GetPlatform()))
	case typ == trackingv1.EventType_EVENT_TYPE_ACTION && e.GetActionId() == "":
		return "action_id", "required for an action event"
	case typ == trackingv1.EventType_EVENT_TYPE_FAILED && e.GetFailureReason() == commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED:
		return "failure_reason", "required for a failed event"
	case commonv1.FailureReason_name[int32(e.GetFailureReason())] == "":
		return "failure_reason", "unknown failure reason " + strconv.Itoa(int(e.GetFailureReason()))
	case typ == trackingv1.EventType_EVENT_TYPE_EXCLUDED && e.GetExclusionReason() == commonv1.ExclusionReason_EXCLUSION_REASON_UNSPECIFIED:
		return "exclusion_reason", "required for an excluded event"
	case commonv1.ExclusionReason_name[int32(e.GetExclusionReason())] == "":
		return "exclusion_reason", "unknown exclusion reason " + strconv.Itoa(int(e.GetExclusionReason()))
	case len(e.GetToken()) > MaxTokenLen:
		return "token", "longer than " + strconv.Itoa(MaxTokenLen) + " bytes"
	}
	d := e.GetDevice()
	for _, f := range [...]struct{ name, v string }{
		{"profile_id", e.GetProfileId()}, {"app_id", e.GetAppId()}, {"journey_id", e.GetJourneyId()},
		{"message_id", e.GetMessageId()}, {"action_id", e.GetActionId()}, {"traceparent", e.GetTraceparent()},
		{"device.model", d.GetModel()}, {"device.os_version", d.GetOsVersion()}, {"device.app_version", d.GetAppVersion()},
		{"device.locale", d.GetLocale()}, {"device.time_zone", d.GetTimeZone()},
	} {
		if len(f.v) > MaxFieldLen {
			return f.name, "longer than " + strconv.Itoa(MaxFieldLen) + " bytes"
		}
	}
	return "", ""
}

// Prepare turns e, in place, into the form that is stored: the token
// replaced by its hash, the output-only fields of the input (token_hash,
// receive_time) dropped; the store stamps the receive time. Rewriting in
// place spares a copy per event on the ingest path; callers pass events they
// own (a decoded request).
func Prepare(e *trackingv1.Event) {
	e.TokenHash = TokenHash(e.GetToken())
	e.Token = ""
	e.ReceiveTime = nil
}
