package delivery

import (
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pushmesh/pushmesh/servicekit/fault"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// Payload keys pushmesh adds to every push; see the package documentation.
const (
	APNsTrackingKey   = "pm"
	FCMJourneyIDKey   = "pm_journey_id"
	FCMMessageIDKey   = "pm_message_id"
	FCMTraceParentKey = "traceparent"
	DeepLinkKey       = "deep_link"
	APNsImageURLKey   = "image_url"
	maxDataKeyLen     = 256
	maxFCMTokenLen    = 4096
	minAPNsTokenLen   = 64
	maxAPNsTokenLen   = 200
	// maxNotificationLen only guards against absurd fields; the payload
	// limits of the gateways decide (PAYLOAD_TOO_LARGE).
	maxNotificationLen = 16 << 10
)

// CheckBatch validates what a batch must get right before any message can be
// answered on its own: its size and every message's idempotency key (results
// are reported by key). field is the batch's field path, e.g. "messages".
func CheckBatch(msgs []Message, field string) error {
	v := &fault.ValidationError{}
	if len(msgs) == 0 {
		v.Add(field, "at least one message is required")
	}
	if len(msgs) > MaxBatchMessages {
		v.Add(field, "at most %d messages per batch, got %d", MaxBatchMessages, len(msgs))
	}
	for i := range msgs {
		checkKey(v, fmt.Sprintf("%s[%d].idempotency_key", field, i), msgs[i].IdempotencyKey)
	}
	return v.Err()
}

func checkKey(v *fault.ValidationError, field, key string) {
	switch {
	case key == "":
		v.Add(field, "required")
	case len(key) > MaxIdempotencyKeyLen:
		v.Add(field, "at most %d bytes, got %d", MaxIdempotencyKeyLen, len(key))
	case !utf8.ValidString(key):
		v.Add(field, "must be valid UTF-8")
	}
}

// ValidateMessage checks one message's content; field is its path, e.g.
// "messages[3]". Token syntax is not checked here: a malformed token fails
// on its own (BAD_DEVICE_TOKEN) without failing the message's other tokens.
// Field paths are only built for violations: this runs for every message.
func ValidateMessage(m *Message, field string, now time.Time) error {
	v := &fault.ValidationError{}
	if m.IdempotencyKey == "" || len(m.IdempotencyKey) > MaxIdempotencyKeyLen || !utf8.ValidString(m.IdempotencyKey) {
		checkKey(v, field+".idempotency_key", m.IdempotencyKey)
	}
	checkText(v, field, ".message_id", m.MessageID, MaxIDLen)
	checkText(v, field, ".journey_id", m.JourneyID, MaxIDLen)

	switch {
	case m.Profile != nil && len(m.Tokens) > 0:
		v.Add(field+".target", "set either profile or tokens, not both")
	case m.Profile != nil:
		validateProfileTarget(v, field+".profile", m.Profile)
	case len(m.Tokens) > 0:
		validateTokens(v, field, m.Tokens)
	default:
		v.Add(field+".target", "required: a profile or explicit tokens")
	}

	validateNotification(v, field, &m.Notification)
	validateAPNsOptions(v, field, m, now)
	if m.FCM.TTL < 0 || m.FCM.TTL > MaxTTL {
		v.Add(field+".fcm.ttl", "must be between 0 and %s, got %s", MaxTTL, m.FCM.TTL)
	}
	if m.FCM.Priority < FCMPriorityUnspecified || m.FCM.Priority > FCMPriorityHigh {
		v.Add(field+".fcm.priority", "unknown priority %d", m.FCM.Priority)
	}
	checkText(v, field, ".fcm.collapse_key", m.FCM.CollapseKey, MaxIDLen)
	checkText(v, field, ".fcm.channel_id", m.FCM.ChannelID, MaxIDLen)
	if m.TTL < 0 || m.TTL > MaxTTL {
		v.Add(field+".ttl", "must be between 0 and %s, got %s", MaxTTL, m.TTL)
	}
	return v.Err()
}

// checkText checks a string's length and encoding; the field path is
// field+name, built only when the check fails.
func checkText(v *fault.ValidationError, field, name, s string, maxLen int) {
	if len(s) > maxLen {
		v.Add(field+name, "at most %d bytes, got %d", maxLen, len(s))
	} else if !utf8.ValidString(s) {
		v.Add(field+name, "must be valid UTF-8")
	}
}

func validateProfileTarget(v *fault.ValidationError, field string, p *ProfileTarget) {
	if p.ProfileID == "" {
		v.Add(field+".profile_id", "required")
	}
	checkText(v, field, ".profile_id", p.ProfileID, MaxIDLen)
	for i, app := range p.AppIDs {
		if app == "" {
			v.Add(fmt.Sprintf("%s.app_ids[%d]", field, i), "must not be empty")
		}
		checkText(v, fmt.Sprintf("%s.app_ids[%d]", field, i), "", app, MaxIDLen)
	}
	for i, pl := range p.Platforms {
		if !knownPlatform(pl) {
			v.Add(fmt.Sprintf("%s.platforms[%d]", field, i), "must be PLATFORM_APNS or PLATFORM_FCM, got %s", pl)
		}
	}
}

func validateTokens(v *fault.ValidationError, field string, tokens []Target) {
	if len(tokens) > MaxTokensPerMessage {
		v.Add(field+".tokens.tokens", "at most %d tokens per message, got %d", MaxTokensPerMessage, len(tokens))
		return
	}
	for i := range tokens {
		t := &tokens[i]
		f := func() string { return fmt.Sprintf("%s.tokens.tokens[%d]", field, i) }
		if t.Token == "" {
			v.Add(f()+".token", "required")
		}
		if !knownPlatform(t.Platform) {
			v.Add(f()+".platform", "must be PLATFORM_APNS or PLATFORM_FCM, got %s", t.Platform)
		}
		if t.AppID == "" {
			v.Add(f()+".app_id", "required")
		}
		if len(t.AppID) > MaxIDLen || len(t.ProfileID) > MaxIDLen || !utf8.ValidString(t.AppID) || !utf8.ValidString(t.ProfileID) {
			checkText(v, f(), ".app_id", t.AppID, MaxIDLen)
			checkText(v, f(), ".profile_id", t.ProfileID, MaxIDLen)
		}
	}
}

func knownPlatform(p commonv1.Platform) bool {
	return p == commonv1.Platform_PLATFORM_APNS || p == commonv1.Platform_PLATFORM_FCM
}

// ValidateNotification checks a notification as ValidateMessage does; the
// violations' fields start with "notification.". Journeys use it on what a
// profile's values rendered, to exclude that profile rather than fail its
// sends.
func ValidateNotification(n *Notification) error {
	var v fault.ValidationError // on the stack: nothing allocated when valid
	validateNotification(&v, "", n)
	if len(v.Violations) == 0 {
		return nil
	}
	out := &fault.ValidationError{Violations: v.Violations}
	for i := range out.Violations {
		out.Violations[i].Field = strings.TrimPrefix(out.Violations[i].Field, ".")
	}
	return out
}

func validateNotification(v *fault.ValidationError, field string, n *Notification) {
	for _, f := range [...]struct{ name, value string }{
		{".notification.title", n.Title}, {".notification.subtitle", n.Subtitle}, {".notification.body", n.Body},
		{".notification.sound", n.Sound}, {".notification.category", n.Category}, {".notification.thread_id", n.ThreadID},
		{".notification.image_url", n.ImageURL}, {".notification.deep_link", n.DeepLink},
	} {
		checkText(v, field, f.name, f.value, maxNotificationLen)
	}
	if n.ImageURL != "" {
		if u, err := url.ParseRequestURI(n.ImageURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") {
			v.Add(field+".notification.image_url", "must be an absolute http(s) URL")
		}
	}
	if n.Badge != nil && *n.Badge < 0 {
		v.Add(field+".notification.badge", "must not be negative, got %d", *n.Badge)
	}
	for k, val := range n.Data {
		f := func() string { return fmt.Sprintf("%s.notification.data[%q]", field, k) }
		if reason := reservedDataKey(k); reason != "" {
			v.Add(f(), "key %q is reserved: %s", k, reason)
			continue
		}
		if len(k) > maxDataKeyLen {
			v.Add(f(), "key is longer than %d bytes", maxDataKeyLen)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(val) {
			v.Add(f(), "key and value must be valid UTF-8")
		}
	}
}

// reservedDataKey says why a data key cannot be used, or "" when it can.
func reservedDataKey(k string) string {
	switch k {
	case "":
		return "data keys must not be empty"
	case "aps", APNsTrackingKey, APNsImageURLKey:
		return "pushmesh uses it in the APNs payload"
	case FCMJourneyIDKey, FCMMessageIDKey, FCMTraceParentKey, DeepLinkKey:
		return "pushmesh uses it for tracking data"
	case "from", "notification", "message_type", "collapse_key":
		return "FCM reserves it"
	}
	if strings.HasPrefix(k, "google") || strings.HasPrefix(k, "gcm") {
		return `FCM reserves keys starting with "google" or "gcm"`
	}
	return ""
}

func validateAPNsOptions(v *fault.ValidationError, field string, m *Message, now time.Time) {
	o := &m.APNs
	if o.PushType < APNsPushTypeUnspecified || o.PushType > APNsPushTypeLiveActivity {
		v.Add(field+".apns.push_type", "unknown push type %d", o.PushType)
	}
	switch o.Priority {
	case 0, 1, 5:
	case 10:
		if apnsPushType(m) == "background" {
			v.Add(field+".apns.priority", "10 is not allowed for background pushes (use 5 or 1)")
		}
	default:
		v.Add(field+".apns.priority", "must be 10, 5 or 1, got %d", o.Priority)
	}
	if len(o.CollapseID) > MaxCollapseIDLen {
		v.Add(field+".apns.collapse_id", "at most %d bytes, got %d", MaxCollapseIDLen, len(o.CollapseID))
	}
	if !o.Expiration.IsZero() && o.Expiration.Before(now) {
		v.Add(field+".apns.expiration", "is in the past (%s)", o.Expiration.UTC().Format(time.RFC3339))
	}
}
