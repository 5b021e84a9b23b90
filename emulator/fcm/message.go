package fcm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The request and message schema of projects.messages.send. Google's JSON
// mapping accepts both the proto field name (snake_case) and its
// lowerCamelCase form, so multi-word fields appear twice. Fields whose inner
// schema the emulator does not check are kept as raw JSON.

type sendRequest struct {
	ValidateOnly      bool            `json:"validate_only"`
	ValidateOnlyCamel bool            `json:"validateOnly"`
	RawMessage        json.RawMessage `json:"message"`

	// Message is RawMessage decoded, nil when absent or undecodable. The
	// two decodes run one after the other rather than nested (as a custom
	// UnmarshalJSON would): encoding/json recursion is stack-hungry, and
	// every HTTP/2 request runs on a fresh goroutine whose stack would
	// otherwise be grown and copied on each request.
	Message *message `json:"-"`
}

type message struct {
	Name            string                     `json:"name"`
	Data            map[string]json.RawMessage `json:"data"`
	Notification    *notification              `json:"notification"`
	Android         *androidConfig             `json:"android"`
	Webpush         *webpushConfig             `json:"webpush"`
	APNS            *apnsConfig                `json:"apns"`
	FCMOptions      json.RawMessage            `json:"fcm_options"`
	FCMOptionsCamel json.RawMessage            `json:"fcmOptions"`
	Token           string                     `json:"token"`
	Topic           string                     `json:"topic"`
	Condition       string                     `json:"condition"`
}

type notification struct {
	Title string `json:"title"`
	Body  string `json:"body"`
	Image string `json:"image"`
}

type androidConfig struct {
	CollapseKey                 string                     `json:"collapse_key"`
	CollapseKeyCamel            string                     `json:"collapseKey"`
	Priority                    string                     `json:"priority"`
	TTL                         string                     `json:"ttl"`
	RestrictedPackageName       string                     `json:"restricted_package_name"`
	RestrictedPackageNameCamel  string                     `json:"restrictedPackageName"`
	Data                        map[string]json.RawMessage `json:"data"`
	Notification                json.RawMessage            `json:"notification"`
	FCMOptions                  json.RawMessage            `json:"fcm_options"`
	FCMOptionsCamel             json.RawMessage            `json:"fcmOptions"`
	DirectBootOK                bool                       `json:"direct_boot_ok"`
	DirectBootOKCamel           bool                       `json:"directBootOk"`
	BandwidthConstrainedOK      bool                       `json:"bandwidth_constrained_ok"`
	BandwidthConstrainedOKCamel bool                       `json:"bandwidthConstrainedOk"`
	RestrictedSatelliteOK       bool                       `json:"restricted_satellite_ok"`
	RestrictedSatelliteOKCamel  bool                       `json:"restrictedSatelliteOk"`
}

type webpushConfig struct {
	Headers         map[string]string          `json:"headers"`
	Data            map[string]json.RawMessage `json:"data"`
	Notification    json.RawMessage            `json:"notification"`
	FCMOptions      json.RawMessage            `json:"fcm_options"`
	FCMOptionsCamel json.RawMessage            `json:"fcmOptions"`
}

type apnsConfig struct {
	Headers                map[string]string `json:"headers"`
	Payload                json.RawMessage   `json:"payload"`
	FCMOptions             json.RawMessage   `json:"fcm_options"`
	FCMOptionsCamel        json.RawMessage   `json:"fcmOptions"`
	LiveActivityToken      string            `json:"live_activity_token"`
	LiveActivityTokenCamel string            `json:"liveActivityToken"`
}

const (
	maxPayload   = 4096
	maxAPNsBytes = 4096
	maxTTL       = 28 * 24 * 3600 // four weeks, in seconds
	maxTopics    = 5              // per condition
	maxTokenLen  = 4096
)

// parseSend decodes and validates a send request body. It returns the
// request (possibly partial) and a reply when the request is refused.
func parseSend(body []byte) (*sendRequest, *reply) {
	var req sendRequest
	if r := decodeStrict(body, &req); r != nil {
		return &req, r
	}
	req.ValidateOnly = req.ValidateOnly || req.ValidateOnlyCamel
	if len(req.RawMessage) == 0 || string(req.RawMessage) == "null" {
		return &req, invalid("message", "Request contains an invalid argument: message is required.")
	}
	var m message
	if r := decodeStrict(req.RawMessage, &m); r != nil {
		return &req, r
	}
	req.Message = &m
	return &req, validateMessage(&m)
}

// decodeStrict decodes one JSON value, refusing unknown fields and trailing
// data, as Google's JSON mapping does.
func decodeStrict(b []byte, v any) *reply {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeReply(err)
	}
	if dec.More() {
		return malformed("", "Invalid JSON payload received. Unexpected token after the value.")
	}
	return nil
}

// decodeReply words a JSON decoding error the way Google's front end does.
func decodeReply(err error) *reply {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	msg := err.Error()
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field != "validate_only" && field != "validateOnly" {
			field = "message." + field // the message is decoded on its own, without its path
		}
		return malformed(field, fmt.Sprintf("Invalid value at '%s' (%s)", field, typeErr.Value))
	case errors.As(err, &syntaxErr):
		return malformed("", "Invalid JSON payload received. "+msg)
	case strings.HasPrefix(msg, "json: unknown field "):
		name := strings.TrimPrefix(msg, "json: unknown field ")
		return malformed("", "Invalid JSON payload received. Unknown name "+name+": Cannot find field.")
	default:
		return malformed("", "Invalid JSON payload received. "+msg)
	}
}

func validateMessage(m *message) *reply {
	targets := 0
	for _, t := range []string{m.Token, m.Topic, m.Condition} {
		if t != "" {
			targets++
		}
	}
	if targets != 1 {
		return invalid("message", "Request contains an invalid argument: exactly one of token, topic or condition must be set.")
	}
	switch {
	case m.Token != "":
		if !validToken(m.Token) {
			return invalid("message.token", "The registration token is not a valid FCM registration token")
		}
	case m.Topic != "":
		if !validTopic(m.Topic) {
			return invalid("message.topic", "Invalid topic name: "+m.Topic)
		}
	default:
		if r := validateCondition(m.Condition); r != nil {
			return r
		}
	}

	size, r := dataSize("message.data", m.Data)
	if r != nil {
		return r
	}
	if m.Notification != nil {
		size += len(m.Notification.Title) + len(m.Notification.Body) + len(m.Notification.Image)
	}
	if r := checkObject("message.fcm_options", m.FCMOptions, m.FCMOptionsCamel); r != nil {
		return r
	}
	if a := m.Android; a != nil {
		n, r := validateAndroid(a)
		if r != nil {
			return r
		}
		size = max(size, n)
	}
	if wp := m.Webpush; wp != nil {
		n, r := dataSize("message.webpush.data", wp.Data)
		if r != nil {
			return r
		}
		size = max(size, n)
		if r := checkObject("message.webpush.notification", wp.Notification); r != nil {
			return r
		}
		if r := checkObject("message.webpush.fcm_options", wp.FCMOptions, wp.FCMOptionsCamel); r != nil {
			return r
		}
	}
	if a := m.APNS; a != nil {
		if r := validateAPNs(a); r != nil {
			return r
		}
	}
	if size > maxPayload {
		return invalid("message", fmt.Sprintf("Message is too big: the payload is %d bytes, the limit is %d.", size, maxPayload))
	}
	return nil
}

// validToken accepts what FCM registration tokens are made of (base64url
// characters and colons) without insisting on the exact shape, so tests may
// use readable tokens such as "android-device-1".
func validToken(t string) bool {
	if len(t) > maxTokenLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == ':' || c == '.') {
			return false
		}
	}
	return true
}

// validTopic is FCM's topic pattern, [a-zA-Z0-9-_.~%]+, with an optional
// "/topics/" prefix.
func validTopic(t string) bool {
	t = strings.TrimPrefix(t, "/topics/")
	if t == "" || len(t) > 900 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_.~%", c) >= 0) {
			return false
		}
	}
	return true
}

// validateCondition checks the topics named in a condition such as
// "'a' in topics && ('b' in topics || 'c' in topics)": at most five, each
// quoted and valid.
func validateCondition(c string) *reply {
	n := strings.Count(c, "in topics")
	if n == 0 {
		return invalid("message.condition", "Invalid condition expression provided.")
	}
	if n > maxTopics {
		return invalid("message.condition", fmt.Sprintf("Invalid condition expression provided: %d topics, at most %d are allowed.", n, maxTopics))
	}
	for _, part := range strings.Split(c, "in topics")[:n] {
		part = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(part), "(!&| "))
		if len(part) < 3 || (part[0] != '\'' && part[0] != '"') || part[len(part)-1] != part[0] || !validTopic(part[1:len(part)-1]) {
			return invalid("message.condition", "Invalid condition expression provided.")
		}
	}
	return nil
}

// reservedDataKey reports keys FCM refuses in data payloads.
func reservedDataKey(k string) bool {
	switch k {
	case "from", "notification", "message_type", "":
		return true
	}
	return strings.HasPrefix(k, "google") || strings.HasPrefix(k, "gcm")
}

// dataSize checks that every data value is a string and returns the bytes
// of keys plus values, the measure FCM applies its 4096-byte limit to.
func dataSize(field string, data map[string]json.RawMessage) (int, *reply) {
	size := 0
	for k, raw := range data {
		var v string
		if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &v) != nil {
			// Rejected by the JSON mapping before FCM sees it.
			return 0, malformed(field+"["+strconv.Quote(k)+"].value", fmt.Sprintf("Invalid value at '%s' (TYPE_STRING), %s", field+"["+strconv.Quote(k)+"].value", raw))
		}
		if reservedDataKey(k) {
			return 0, invalid(field, "Invalid data payload key: "+k)
		}
		size += len(k) + len(v)
	}
	return size, nil
}

// checkObject requires each present raw value to be a JSON object.
func checkObject(field string, raws ...json.RawMessage) *reply {
	for _, raw := range raws {
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		if raw[0] != '{' {
			return malformed(field, fmt.Sprintf("Invalid value at '%s' (type.googleapis.com/google.protobuf.Struct), %s", field, raw))
		}
	}
	return nil
}

func validateAndroid(a *androidConfig) (int, *reply) {
	switch strings.ToUpper(a.Priority) {
	// firebase sends "normal"/"high"; the API's enum is NORMAL/HIGH and
	// Google's JSON mapping accepts either case.
	case "", "NORMAL", "HIGH":
	default:
		return 0, malformed("message.android.priority", fmt.Sprintf("Invalid value at 'message.android.priority' (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), %q", a.Priority))
	}
	if a.TTL != "" {
		secs, ok := parseDuration(a.TTL)
		if !ok {
			return 0, malformed("message.android.ttl", fmt.Sprintf("Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), %q", a.TTL))
		}
		if secs > maxTTL {
			return 0, invalid("message.android.ttl", fmt.Sprintf("Invalid TTL %s: the maximum is %ds (four weeks).", a.TTL, maxTTL))
		}
	}
	if r := checkObject("message.android.notification", a.Notification); r != nil {
		return 0, r
	}
	if r := checkObject("message.android.fcm_options", a.FCMOptions, a.FCMOptionsCamel); r != nil {
		return 0, r
	}
	return dataSize("message.android.data", a.Data)
}

// parseDuration reads a protobuf Duration in JSON form: seconds with up to
// nine fractional digits and an "s" suffix, e.g. "3.5s" or "86400s".
func parseDuration(s string) (float64, bool) {
	num, ok := strings.CutSuffix(s, "s")
	if !ok || num == "" {
		return 0, false
	}
	whole, frac, hasFrac := strings.Cut(num, ".")
	if whole == "" || (hasFrac && (frac == "" || len(frac) > 9)) {
		return 0, false
	}
	for _, part := range []string{whole, frac} {
		for i := 0; i < len(part); i++ {
			if part[i] < '0' || part[i] > '9' {
				return 0, false
			}
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	return v, err == nil
}

func validateAPNs(a *apnsConfig) *reply {
	if p := a.Headers["apns-priority"]; p != "" && p != "10" && p != "5" && p != "1" {
		return invalid("message.apns.headers", "Invalid APNs priority: "+p)
	}
	if e := a.Headers["apns-expiration"]; e != "" {
		if v, err := strconv.ParseInt(e, 10, 64); err != nil || v < 0 {
			return invalid("message.apns.headers", "Invalid APNs expiration: "+e)
		}
	}
	if id := a.Headers["apns-collapse-id"]; len(id) > 64 {
		return invalid("message.apns.headers", "apns-collapse-id is longer than 64 bytes")
	}
	if r := checkObject("message.apns.payload", a.Payload); r != nil {
		return r
	}
	if len(a.Payload) > maxAPNsBytes {
		return invalid("message.apns.payload", fmt.Sprintf("APNs payload is %d bytes, the limit is %d.", len(a.Payload), maxAPNsBytes))
	}
	if len(a.Payload) > 0 {
		var p map[string]json.RawMessage
		if err := json.Unmarshal(a.Payload, &p); err == nil {
			if aps, ok := p["aps"]; ok && !bytes.HasPrefix(bytes.TrimSpace(aps), []byte("{")) {
				return invalid("message.apns.payload", "aps must be a dictionary")
			}
		}
	}
	return checkObject("message.apns.fcm_options", a.FCMOptions, a.FCMOptionsCamel)
}
