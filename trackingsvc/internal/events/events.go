// Package events validates experience events and prepares them for storage:
// what counts as a good event, and how a push token is reduced to its hash
// so trackingsvc never keeps it in clear.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
)

// Limits on one event.
const (
	MaxEventIDLen = 128
	MaxFieldLen   = 512
	MaxTokenLen   = 4096
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
// when the event is good.
func Check(e *trackingv1.Event, now time.Time) (field, reason string) {
	switch {
	case e.GetEventId() == "":
		return "event_id", "required"
	case len(e.GetEventId()) > MaxEventIDLen:
		return "event_id", "longer than 128 bytes"
	case e.GetType() == trackingv1.EventType_EVENT_TYPE_UNSPECIFIED:
		return "type", "required"
	case trackingv1.EventType_name[int32(e.GetType())] == "":
		return "type", "unknown event type"
	case e.GetEventTime() == nil:
		return "event_time", "required"
	case !e.GetEventTime().IsValid():
		return "event_time", "not a valid timestamp"
	case e.GetEventTime().AsTime().After(now.Add(MaxFutureSkew)):
		return "event_time", "more than 5 minutes in the future"
	case e.GetType() == trackingv1.EventType_EVENT_TYPE_ACTION && e.GetActionId() == "":
		return "action_id", "required for an action event"
	case len(e.GetToken()) > MaxTokenLen:
		return "token", "longer than 4096 bytes"
	}
	for _, f := range []struct{ name, v string }{
		{"profile_id", e.GetProfileId()}, {"app_id", e.GetAppId()}, {"journey_id", e.GetJourneyId()},
		{"message_id", e.GetMessageId()}, {"action_id", e.GetActionId()}, {"traceparent", e.GetTraceparent()},
	} {
		if len(f.v) > MaxFieldLen {
			return f.name, "longer than 512 bytes"
		}
	}
	return "", ""
}

// Prepare returns the form of e that is stored: the token replaced by its
// hash, the receive time set. e is not modified.
func Prepare(e *trackingv1.Event, received time.Time) *trackingv1.Event {
	out := &trackingv1.Event{
		EventId: e.GetEventId(), Type: e.GetType(), EventTime: e.GetEventTime(),
		ProfileId: e.GetProfileId(), TokenHash: e.GetTokenHash(), AppId: e.GetAppId(),
		Platform: e.GetPlatform(), JourneyId: e.GetJourneyId(), MessageId: e.GetMessageId(),
		ActionId: e.GetActionId(), FailureReason: e.GetFailureReason(), ExclusionReason: e.GetExclusionReason(),
		Device: e.GetDevice(), Traceparent: e.GetTraceparent(),
	}
	if e.GetToken() != "" {
		out.TokenHash = TokenHash(e.GetToken())
	}
	out.ReceiveTime = timestamppb.New(received)
	return out
}
