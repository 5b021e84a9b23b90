package apns

import (
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pushmesh/pushmesh/emulator/fault"
	"github.com/pushmesh/pushmesh/emulator/internal/httpsrv"
)

const devicePath = "/3/device/"

// ServeHTTP serves the provider API and, under /_emulator/, the admin API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_emulator/") {
		s.admin.ServeHTTP(w, r)
		return
	}
	s.push(w, r)
}

// push handles one provider API request. Checks run in this order: path and
// method, availability, latency, authentication, headers, device token, body,
// injected errors, per-token outcomes. Connection drops are decided with the
// other faults and only hit requests that passed validation.
func (s *Server) push(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	conn := httpsrv.ConnFrom(r.Context())
	d := Delivery{Time: now}
	if conn != nil {
		d.ConnID = conn.ID
	}
	h := r.Header
	d.ApnsID = first(h["Apns-Id"])
	if d.ApnsID == "" || !isUUID(d.ApnsID) {
		// Apple answers with an apns-id even when the client sent none (or
		// a bad one, which is then rejected below).
		d.ApnsID = newUUID()
	}

	token, ok := strings.CutPrefix(r.URL.Path, devicePath)
	if !ok || strings.Contains(token, "/") {
		s.reject(w, &d, ReasonBadPath, 0)
		return
	}
	d.Token = token
	if r.Method != http.MethodPost {
		s.reject(w, &d, ReasonMethodNotAllowed, 0)
		return
	}
	if r.ProtoMajor != 2 {
		s.reject(w, &d, ReasonHTTPVersionNotSupported, 0)
		return
	}
	if !s.available.Load() {
		s.reject(w, &d, ReasonServiceUnavailable, s.faults.Faults().RetryAfterSeconds())
		return
	}

	fate := s.faults.Draw()
	if fate.Delay > 0 {
		t := time.NewTimer(fate.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return // the client gave up; nothing to answer
		}
	}
	d.Topic = first(h["Apns-Topic"])
	d.PushType = first(h["Apns-Push-Type"])
	d.Priority = first(h["Apns-Priority"])
	d.Expiration = first(h["Apns-Expiration"])
	d.CollapseID = first(h["Apns-Collapse-Id"])

	var cs *connState
	if conn != nil {
		cs, _ = conn.Local.(*connState)
	}
	if cs == nil {
		cs = new(connState) // not reached with httpsrv; keeps ServeHTTP usable alone
	}
	tok, reason := s.authenticate(cs, h["Authorization"], now)
	if reason != "" {
		s.reject(w, &d, reason, 0)
		return
	}
	d.TeamID, d.KeyID = tok.team, tok.kid

	limit, reason := s.checkHeaders(h, tok.team)
	if reason != "" {
		s.reject(w, &d, reason, 0)
		return
	}
	if token == "" {
		s.reject(w, &d, ReasonMissingDeviceToken, 0)
		return
	}
	if !isDeviceToken(token) {
		s.reject(w, &d, ReasonBadDeviceToken, 0)
		return
	}
	payload, reason := readPayload(r, limit)
	d.Payload = payload
	if reason != "" {
		s.reject(w, &d, reason, 0)
		return
	}

	switch {
	case fate.Drop == fault.DropGoAway:
		// Answer (whatever the answer), then GOAWAY: net/http's HTTP/2
		// server turns "Connection: close" into a graceful shutdown of the
		// connection once its in-flight streams are done.
		w.Header()["Connection"] = []string{"close"}
	case fate.Drop == fault.DropClose && conn != nil:
		d.Reason = ReasonConnectionDropped
		s.record(d)
		conn.HardClose()
		return
	}
	switch fate.Status {
	case http.StatusTooManyRequests:
		s.reject(w, &d, ReasonTooManyRequests, s.faults.Faults().RetryAfterSeconds())
		return
	case http.StatusInternalServerError:
		s.reject(w, &d, ReasonInternalServerError, 0)
		return
	case http.StatusServiceUnavailable:
		s.reject(w, &d, ReasonServiceUnavailable, s.faults.Faults().RetryAfterSeconds())
		return
	}

	s.mu.RLock()
	o, marked := s.tokens[strings.ToLower(token)]
	s.mu.RUnlock()
	if marked {
		d.Status, d.Reason = o.status, o.reason
		writeError(w, d.ApnsID, o.status, o.reason, o.timestamp, 0)
		s.record(d)
		return
	}

	d.Status = http.StatusOK
	w.Header()["Apns-Id"] = []string{d.ApnsID}
	w.WriteHeader(http.StatusOK)
	s.record(d)
}

// checkHeaders validates the apns-* headers for a verified team and returns
// the payload size limit for the push type.
func (s *Server) checkHeaders(h http.Header, team string) (int, string) {
	for _, k := range [...]string{"Apns-Id", "Apns-Topic", "Apns-Push-Type", "Apns-Priority", "Apns-Expiration", "Apns-Collapse-Id"} {
		if len(h[k]) > 1 {
			return 0, ReasonDuplicateHeaders
		}
	}
	if id := first(h["Apns-Id"]); id != "" && !isUUID(id) {
		return 0, ReasonBadMessageID
	}
	pushType := first(h["Apns-Push-Type"])
	if pushType == "" {
		pushType = "alert" // Apple's default when the header is absent
	}
	suffix, ok := topicSuffix[pushType]
	if !ok {
		return 0, ReasonInvalidPushType
	}
	switch first(h["Apns-Priority"]) {
	case "", "5", "1":
	case "10":
		// Apple: "It's an error to specify this priority for a
		// notification whose apns-push-type is background."
		if pushType == "background" {
			return 0, ReasonBadPriority
		}
	default:
		return 0, ReasonBadPriority
	}
	if exp := first(h["Apns-Expiration"]); exp != "" {
		if v, err := strconv.ParseInt(exp, 10, 64); err != nil || v < 0 {
			return 0, ReasonBadExpirationDate
		}
	}
	if len(first(h["Apns-Collapse-Id"])) > maxCollapseID {
		return 0, ReasonBadCollapseID
	}
	topic := first(h["Apns-Topic"])
	if topic == "" {
		// Required with token authentication.
		return 0, ReasonMissingTopic
	}
	bundle, ok := strings.CutSuffix(topic, suffix)
	if !ok || bundle == "" {
		return 0, ReasonBadTopic
	}
	s.mu.RLock()
	owned := s.topics[team][bundle]
	s.mu.RUnlock()
	if !owned {
		return 0, ReasonTopicDisallowed
	}
	if pushType == "voip" {
		return maxVoIPPayload, ""
	}
	return maxPayload, ""
}

// readPayload reads the body up to limit bytes and checks it is a JSON
// object.
func readPayload(r *http.Request, limit int) ([]byte, string) {
	if r.ContentLength > int64(limit) {
		return nil, ReasonPayloadTooLarge
	}
	var body []byte
	var err error
	if r.ContentLength >= 0 {
		// The usual case (apns2 sends Content-Length): one exact allocation,
		// kept as the logged payload.
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, body)
	} else {
		body, err = io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	}
	if err != nil {
		return nil, ReasonBadPayload
	}
	if len(body) == 0 {
		return nil, ReasonPayloadEmpty
	}
	if len(body) > limit {
		return nil, ReasonPayloadTooLarge
	}
	// json.Valid does not build values: it is the cheapest full check.
	if !json.Valid(body) || firstNonSpace(body) != '{' {
		return body, ReasonBadPayload
	}
	return body, ""
}

// reject answers with reason and records the request.
func (s *Server) reject(w http.ResponseWriter, d *Delivery, reason string, retryAfter int64) {
	status := reasonStatus[reason]
	d.Status, d.Reason = status, reason
	var ts int64
	if status == http.StatusGone {
		ts = time.Now().UnixMilli()
	}
	writeError(w, d.ApnsID, status, reason, ts, retryAfter)
	s.record(*d)
}

// writeError writes Apple's error body, exactly {"reason":"X"} or, on 410,
// {"reason":"X","timestamp":MS}: apns2 decodes nothing else.
func writeError(w http.ResponseWriter, apnsID string, status int, reason string, timestamp, retryAfter int64) {
	hdr := w.Header()
	hdr["Apns-Id"] = []string{apnsID}
	hdr["Content-Type"] = []string{"application/json"}
	if retryAfter > 0 {
		hdr["Retry-After"] = []string{strconv.FormatInt(retryAfter, 10)}
	}
	buf := make([]byte, 0, 64)
	buf = append(buf, `{"reason":"`...)
	buf = append(buf, reason...)
	buf = append(buf, '"')
	if status == http.StatusGone {
		buf = append(buf, `,"timestamp":`...)
		buf = strconv.AppendInt(buf, timestamp, 10)
	}
	buf = append(buf, '}')
	w.WriteHeader(status)
	_, _ = w.Write(buf)
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func firstNonSpace(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
		default:
			return c
		}
	}
	return 0
}

// isDeviceToken accepts what Apple issues: an even number of hex digits, 32
// bytes (64 digits) today, up to 100 bytes to allow for growth.
func isDeviceToken(t string) bool {
	if len(t) < 64 || len(t) > 200 || len(t)%2 != 0 {
		return false
	}
	for i := 0; i < len(t); i++ {
		if !isHex(t[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

// isUUID accepts the canonical 8-4-4-4-12 hex form, either case.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

// newUUID returns a random (version 4) lower-case UUID. math/rand/v2's
// generator is per-thread and lock-free; apns-ids need no secrecy.
func newUUID() string {
	const hexdigits = "0123456789abcdef"
	hi, lo := rand.Uint64(), rand.Uint64()
	hi = (hi &^ (0xf << 12)) | (0x4 << 12) // version 4
	lo = (lo &^ (0x3 << 62)) | (0x2 << 62) // RFC 4122 variant
	var b [36]byte
	j := 0
	for i := 0; i < 32; i++ {
		if i == 8 || i == 12 || i == 16 || i == 20 {
			b[j] = '-'
			j++
		}
		var nib uint64
		if i < 16 {
			nib = (hi >> (60 - 4*uint(i))) & 0xf
		} else {
			nib = (lo >> (60 - 4*uint(i-16))) & 0xf
		}
		b[j] = hexdigits[nib]
		j++
	}
	return string(b[:])
}
