package delivery

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"firebase.google.com/go/v4/messaging"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// tracking is the data every push carries back to the app.
type tracking struct {
	journeyID   string
	messageID   string
	traceParent string
}

// visible reports whether a notification shows something to the user.
func visible(n *Notification) bool {
	return n.Title != "" || n.Body != "" || n.Subtitle != ""
}

// apnsPushType returns the apns-push-type header of m.
func apnsPushType(m *Message) string {
	switch m.APNs.PushType {
	case APNsPushTypeAlert:
		return "alert"
	case APNsPushTypeBackground:
		return "background"
	case APNsPushTypeVoIP:
		return "voip"
	case APNsPushTypeLiveActivity:
		return "liveactivity"
	}
	if visible(&m.Notification) {
		return "alert"
	}
	return "background"
}

// apnsTopicSuffix is the suffix Apple requires on apns-topic per push type.
func apnsTopicSuffix(pushType string) string {
	switch pushType {
	case "voip":
		return ".voip"
	case "liveactivity":
		return ".push-type.liveactivity"
	}
	return ""
}

// apnsPriority returns the apns-priority of m: its own, or 10 for alerts
// and VoIP and 5 for the rest, as Apple recommends.
func apnsPriority(m *Message, pushType string) int {
	if m.APNs.Priority != 0 {
		return m.APNs.Priority
	}
	if pushType == "alert" || pushType == "voip" {
		return 10
	}
	return 5
}

// collapseID returns the collapse id or key: the explicit one, else the
// message id, hashed to 64 hex characters when it is longer than APNs
// allows (so both gateways collapse on the same value).
func collapseID(explicit, messageID string) string {
	if explicit != "" {
		return explicit
	}
	if len(messageID) <= MaxCollapseIDLen {
		return messageID
	}
	sum := sha256.Sum256([]byte(messageID))
	return hex.EncodeToString(sum[:])
}

// apnsLimit is the payload limit for a push type.
func apnsLimit(pushType string) int {
	if pushType == "voip" {
		return APNsVoIPPayloadLimit
	}
	return APNsPayloadLimit
}

// buildAPNs returns the APNs request of m for app (a bundle id), or an error
// naming the limit when the payload is too large. The payload is built once
// and shared by every token of the app.
func buildAPNs(m *Message, app string, tr tracking, deadline, now time.Time) (*APNsPush, error) {
	pushType := apnsPushType(m)
	payload := apnsPayload(m, pushType, tr, now)
	if limit := apnsLimit(pushType); len(payload) > limit {
		return nil, apnsTooLarge(len(payload), limit, pushType)
	}
	exp := m.APNs.Expiration
	if exp.IsZero() {
		exp = deadline
	}
	priority := apnsPriority(m, pushType)
	if priority == 10 {
		// Apple's default: leaving the header out saves encoding it on
		// every push.
		priority = 0
	}
	return &APNsPush{
		Topic:      app + apnsTopicSuffix(pushType),
		PushType:   pushType,
		Priority:   priority,
		Expiration: exp,
		CollapseID: collapseID(m.APNs.CollapseID, tr.messageID),
		Payload:    payload,
	}, nil
}

// traceParentLen is the length of every W3C traceparent the pipeline puts
// in a push ("00-", 32 hex digits, "-", 16, "-", 2).
const traceParentLen = 55

// sizingTraceParent stands for a message's traceparent when its payload is
// only measured: every traceparent has this length.
var sizingTraceParent = strings.Repeat("0", traceParentLen)

// CheckPayloadSize reports, as the pipeline would when sending, whether m's
// payload for platform is over the gateway's limit: the error is the one a
// send would fail with (PAYLOAD_TOO_LARGE). Journeys call it on what a
// profile rendered, so that a profile whose values make the notification
// too large is excluded with the reason instead of failing every send to
// its devices. It builds the payload only when a cheap upper bound does not
// already show that it fits.
func CheckPayloadSize(m *Message, platform commonv1.Platform, now time.Time) error {
	tr := tracking{journeyID: m.JourneyID, messageID: messageID(m), traceParent: sizingTraceParent}
	if platform == commonv1.Platform_PLATFORM_FCM {
		if size := fcmPayloadSize(&m.Notification, tr); size > FCMPayloadLimit {
			return fcmTooLarge(size)
		}
		return nil
	}
	pushType := apnsPushType(m)
	limit := apnsLimit(pushType)
	if apnsPayloadBound(m, tr) <= limit {
		return nil
	}
	if size := len(apnsPayload(m, pushType, tr, now)); size > limit {
		return apnsTooLarge(size, limit, pushType)
	}
	return nil
}

// apnsPayloadBound is at least the length of m's APNs payload: JSON
// escaping makes at most 6 bytes of a byte (\u00XX), and the keys, quotes
// and numbers apnsPayload adds stay under 512 bytes plus 8 per data entry.
func apnsPayloadBound(m *Message, tr tracking) int {
	n := &m.Notification
	text := len(n.Title) + len(n.Subtitle) + len(n.Body) + len(n.Sound) + len(n.Category) + len(n.ThreadID) +
		len(n.DeepLink) + len(n.ImageURL) + len(tr.journeyID) + len(tr.messageID) + len(tr.traceParent)
	for k, v := range n.Data {
		text += len(k) + len(v) + 8
	}
	return 6*text + 512
}

func apnsTooLarge(size, limit int, pushType string) error {
	return fmt.Errorf("APNs payload is %d bytes, over the %d-byte limit for %s pushes", size, limit, pushType)
}

func fcmTooLarge(size int) error {
	return fmt.Errorf("FCM payload is %d bytes, over the %d-byte limit", size, FCMPayloadLimit)
}

// fcmPayloadSize is what FCM measures against its 4096-byte limit: the
// data keys and values (pushmesh's own included) and the notification's
// text.
func fcmPayloadSize(n *Notification, tr tracking) int {
	size := len(n.Title) + len(n.Body) + len(n.ImageURL)
	for k, v := range n.Data {
		size += len(k) + len(v)
	}
	size += len(FCMMessageIDKey) + len(tr.messageID)
	if tr.journeyID != "" {
		size += len(FCMJourneyIDKey) + len(tr.journeyID)
	}
	if tr.traceParent != "" {
		size += len(FCMTraceParentKey) + len(tr.traceParent)
	}
	if n.DeepLink != "" {
		size += len(DeepLinkKey) + len(n.DeepLink)
	}
	return size
}

// apnsPayload writes the JSON body by hand: it runs once per message on the
// hot path, and encoding/json with maps costs several times more.
func apnsPayload(m *Message, pushType string, tr tracking, now time.Time) []byte {
	n := &m.Notification
	b := make([]byte, 0, 256+len(n.Title)+len(n.Body)+len(n.Subtitle)+dataLen(n.Data))
	b = append(b, `{"aps":{`...)
	first := true
	field := func(name string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, name)
		b = append(b, ':')
	}
	if visible(n) {
		field("alert")
		b = append(b, '{')
		inner := true
		for _, kv := range [...][2]string{{"title", n.Title}, {"subtitle", n.Subtitle}, {"body", n.Body}} {
			if kv[1] == "" {
				continue
			}
			if !inner {
				b = append(b, ',')
			}
			inner = false
			b = appendJSONString(b, kv[0])
			b = append(b, ':')
			b = appendJSONString(b, kv[1])
		}
		b = append(b, '}')
	}
	if n.Badge != nil {
		field("badge")
		b = strconv.AppendInt(b, int64(*n.Badge), 10)
	}
	if n.Sound != "" {
		field("sound")
		b = appendJSONString(b, n.Sound)
	}
	if n.Category != "" {
		field("category")
		b = appendJSONString(b, n.Category)
	}
	if n.ThreadID != "" {
		field("thread-id")
		b = appendJSONString(b, n.ThreadID)
	}
	if m.APNs.MutableContent {
		field("mutable-content")
		b = append(b, '1')
	}
	if m.APNs.ContentAvailable || pushType == "background" {
		field("content-available")
		b = append(b, '1')
	}
	live := pushType == "liveactivity"
	if live {
		// A Live Activity update: the data is the activity's content state.
		field("timestamp")
		b = strconv.AppendInt(b, now.Unix(), 10)
		field("event")
		b = append(b, `"update"`...)
		field("content-state")
		b = appendStringMap(b, n.Data)
	}
	b = append(b, `},"pm":{`...)
	b = append(b, `"m":`...)
	b = appendJSONString(b, tr.messageID)
	if tr.journeyID != "" {
		b = append(b, `,"j":`...)
		b = appendJSONString(b, tr.journeyID)
	}
	if tr.traceParent != "" {
		b = append(b, `,"tp":`...)
		b = appendJSONString(b, tr.traceParent)
	}
	b = append(b, '}')
	if n.DeepLink != "" {
		b = append(b, ',')
		b = appendJSONString(b, DeepLinkKey)
		b = append(b, ':')
		b = appendJSONString(b, n.DeepLink)
	}
	if n.ImageURL != "" {
		b = append(b, ',')
		b = appendJSONString(b, APNsImageURLKey)
		b = append(b, ':')
		b = appendJSONString(b, n.ImageURL)
	}
	if !live {
		for _, k := range sortedKeys(n.Data) {
			b = append(b, ',')
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, n.Data[k])
		}
	}
	return append(b, '}')
}

func appendStringMap(b []byte, m map[string]string) []byte {
	b = append(b, '{')
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, m[k])
	}
	return append(b, '}')
}

// sortedKeys makes payloads deterministic, which keeps them comparable in
// tests and lets APNs and apps see the same bytes for the same message.
func sortedKeys(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func dataLen(m map[string]string) int {
	n := 0
	for k, v := range m {
		n += len(k) + len(v) + 6
	}
	return n
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript parsers;
		// escape them as encoding/json does.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// fcmTemplate is the FCM message of m without a token; each push copies it
// and sets its token (the maps and nested structs are shared, read-only).
func buildFCM(m *Message, tr tracking, ttl time.Duration) (*messaging.Message, error) {
	n := &m.Notification
	data := make(map[string]string, len(n.Data)+4)
	for k, v := range n.Data {
		data[k] = v
	}
	data[FCMMessageIDKey] = tr.messageID
	if tr.journeyID != "" {
		data[FCMJourneyIDKey] = tr.journeyID
	}
	if tr.traceParent != "" {
		data[FCMTraceParentKey] = tr.traceParent
	}
	if n.DeepLink != "" {
		data[DeepLinkKey] = n.DeepLink
	}
	if size := fcmPayloadSize(n, tr); size > FCMPayloadLimit {
		return nil, fcmTooLarge(size)
	}
	msg := &messaging.Message{Data: data}
	if n.Title != "" || n.Body != "" || n.ImageURL != "" {
		msg.Notification = &messaging.Notification{Title: n.Title, Body: n.Body, ImageURL: n.ImageURL}
	}
	if m.FCM.TTL > 0 {
		ttl = m.FCM.TTL
	}
	android := &messaging.AndroidConfig{
		CollapseKey: collapseID(m.FCM.CollapseKey, tr.messageID),
		TTL:         &ttl,
	}
	switch m.FCM.Priority {
	case FCMPriorityHigh:
		android.Priority = "high"
	case FCMPriorityNormal:
		android.Priority = "normal"
	}
	an := &messaging.AndroidNotification{
		Sound:       n.Sound,
		ClickAction: n.Category,
		ChannelID:   m.FCM.ChannelID,
	}
	if msg.Notification != nil {
		// collapse_key only merges messages still queued for an offline
		// device; the tag replaces a notification already shown, as
		// apns-collapse-id does on iOS. So a resend after a crash (same
		// message id) replaces rather than duplicates on Android too.
		an.Tag = android.CollapseKey
	}
	if n.Badge != nil {
		count := int(*n.Badge)
		an.NotificationCount = &count
	}
	if an.Sound != "" || an.Tag != "" || an.ClickAction != "" || an.ChannelID != "" || an.NotificationCount != nil {
		android.Notification = an
	}
	msg.Android = android
	return msg, nil
}
