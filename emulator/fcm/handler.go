package fcm

import (
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pushmesh/pushmesh/emulator/fault"
	"github.com/pushmesh/pushmesh/emulator/internal/httpsrv"
)

// maxRequestBody bounds a send request; real messages are far smaller (the
// payload limit is 4 KiB), this only stops a runaway client.
const maxRequestBody = 256 << 10

// ServeHTTP serves messages:send, the token endpoint and, under /_emulator/,
// the admin API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, "/v1/projects/"):
		s.send(w, r)
	case p == "/token":
		s.token(w, r)
	case strings.HasPrefix(p, "/_emulator/"):
		s.admin.ServeHTTP(w, r)
	default:
		writeReply(w, &reply{status: http.StatusNotFound, rpc: statusNotFound, message: "Method not found."})
	}
}

// send handles projects.messages.send. Checks run in this order: path and
// method, availability, latency, authentication, quota, body, injected
// errors, per-token outcomes. Connection drops are decided with the other
// faults and only hit requests that passed validation.
func (s *Server) send(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	d := Delivery{Time: now}
	if conn := httpsrv.ConnFrom(r.Context()); conn != nil {
		d.ConnID = conn.ID
	}
	project, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v1/projects/"), "/messages:send")
	if !ok || project == "" || strings.Contains(project, "/") || r.Method != http.MethodPost {
		writeReply(w, &reply{status: http.StatusNotFound, rpc: statusNotFound, message: "Method not found."})
		return
	}
	d.Project = project
	if !s.up.Load() {
		rp := fcmReply(ErrUnavailable, "")
		rp.retryAfter = s.faults.Faults().RetryAfterSeconds()
		s.refuse(w, &d, rp)
		return
	}

	fate := s.faults.Draw()
	if fate.Delay > 0 {
		t := time.NewTimer(fate.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}

	email, rp := s.authorize(r.Header["Authorization"], project, now)
	d.ClientEmail = email
	if rp != nil {
		s.refuse(w, &d, rp)
		return
	}
	if retryAfter, ok := s.takeQuota(project, now); !ok {
		rp := fcmReply(ErrQuotaExceeded, "")
		rp.retryAfter = retryAfter
		s.refuse(w, &d, rp)
		return
	}

	body, err := readBody(r, maxRequestBody)
	if err != nil {
		return // the client went away
	}
	if len(body) > maxRequestBody {
		d.Message = body[:0]
		s.refuse(w, &d, malformed("", "Request payload size exceeds the limit: "+strconv.Itoa(maxRequestBody)+" bytes."))
		return
	}
	req, rp := parseSend(body)
	d.ValidateOnly = req.ValidateOnly
	d.Message = body
	if len(req.RawMessage) > 0 {
		d.Message = req.RawMessage // a sub-slice of body: no copy
	}
	if m := req.Message; m != nil {
		d.Token, d.Topic, d.Condition = m.Token, m.Topic, m.Condition
	}
	if rp != nil {
		s.refuse(w, &d, rp)
		return
	}

	switch {
	case fate.Drop == fault.DropGoAway:
		// Answer, then GOAWAY: net/http's HTTP/2 server turns
		// "Connection: close" into a graceful shutdown of the connection.
		w.Header()["Connection"] = []string{"close"}
	case fate.Drop == fault.DropClose:
		if conn := httpsrv.ConnFrom(r.Context()); conn != nil {
			d.ErrorCode = ErrorConnectionDropped
			s.record(d)
			conn.HardClose()
			return
		}
	}
	switch fate.Status {
	case http.StatusTooManyRequests:
		rp := fcmReply(ErrQuotaExceeded, "")
		rp.retryAfter = s.faults.Faults().RetryAfterSeconds()
		s.refuse(w, &d, rp)
		return
	case http.StatusInternalServerError:
		s.refuse(w, &d, fcmReply(ErrInternal, ""))
		return
	case http.StatusServiceUnavailable:
		rp := fcmReply(ErrUnavailable, "")
		rp.retryAfter = s.faults.Faults().RetryAfterSeconds()
		s.refuse(w, &d, rp)
		return
	}

	if d.Token != "" {
		s.mu.RLock()
		code, marked := s.tokens[d.Token]
		s.mu.RUnlock()
		if marked {
			rp := fcmReply(code, "")
			if code == ErrQuotaExceeded || code == ErrUnavailable {
				rp.retryAfter = s.faults.Faults().RetryAfterSeconds()
			}
			s.refuse(w, &d, rp)
			return
		}
	}

	d.Status = http.StatusOK
	d.Name = s.messageName(project, d.ValidateOnly, now)
	out := make([]byte, 0, len(d.Name)+16)
	out = append(out, `{"name":"`...)
	out = append(out, d.Name...)
	out = append(out, "\"}\n"...)
	w.Header()["Content-Type"] = []string{"application/json; charset=UTF-8"}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
	s.record(d)
}

// messageName returns projects/{p}/messages/{id}. Dry runs get FCM's fixed
// "fake_message_id"; real ones an id shaped like FCM's,
// "0:<microseconds>%<16 hex digits>".
func (s *Server) messageName(project string, dryRun bool, now time.Time) string {
	b := make([]byte, 0, 64+len(project))
	b = append(b, "projects/"...)
	b = append(b, project...)
	b = append(b, "/messages/"...)
	if dryRun {
		return string(append(b, "fake_message_id"...))
	}
	b = append(b, "0:"...)
	b = strconv.AppendInt(b, now.UnixMicro(), 10)
	b = append(b, '%')
	var id [8]byte
	v := rand.Uint64() ^ s.msgSeq.Add(1) // unique even if two sends share a microsecond
	for i := range id {
		id[i] = byte(v >> (8 * i))
	}
	b = hex.AppendEncode(b, id[:])
	return string(b)
}

func (s *Server) refuse(w http.ResponseWriter, d *Delivery, rp *reply) {
	d.Status, d.ErrorCode = rp.status, rp.code()
	writeReply(w, rp)
	s.record(*d)
}

// readBody reads at most limit+1 bytes: in one exact allocation when the
// client sent a Content-Length (firebase does), growing a buffer otherwise.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if n := r.ContentLength; n >= 0 && n <= limit {
		body := make([]byte, n)
		_, err := io.ReadFull(r.Body, body)
		return body, err
	}
	return io.ReadAll(io.LimitReader(r.Body, limit+1))
}
