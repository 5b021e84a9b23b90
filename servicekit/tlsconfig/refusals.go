package tlsconfig

import (
	"log/slog"
	"sync"
	"time"
)

// Refused handshakes are logged at most RefusalLogBurst times per
// RefusalLogWindow: a port scan, an internet-facing endpoint's stray
// clients or a client retrying with the wrong certificate would otherwise
// write a line each, without bound. A few lines a minute still tell an
// operator what is wrong.
const (
	RefusalLogBurst  = 10
	RefusalLogWindow = time.Minute
)

// RefusalLog logs refused TLS handshakes on its logger, within the bound
// above. The lines it holds back are counted, and the count is logged
// (refusals_not_logged) with the next line it lets through. Safe for
// concurrent use.
type RefusalLog struct {
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	start   time.Time // of the current window
	logged  int       // lines in the current window
	dropped int       // lines held back since the last one logged
}

// NewRefusalLog returns a RefusalLog writing to log.
func NewRefusalLog(log *slog.Logger) *RefusalLog {
	return &RefusalLog{log: log, now: time.Now}
}

// Warn logs msg and args as a warning unless this window's lines are used
// up.
func (r *RefusalLog) Warn(msg string, args ...any) {
	r.mu.Lock()
	now := r.now()
	if now.Sub(r.start) >= RefusalLogWindow {
		r.start, r.logged = now, 0
	}
	if r.logged >= RefusalLogBurst {
		r.dropped++
		r.mu.Unlock()
		return
	}
	r.logged++
	dropped := r.dropped
	r.dropped = 0
	r.mu.Unlock()
	if dropped > 0 {
		args = append(args, "refusals_not_logged", dropped)
	}
	r.log.Warn(msg, args...)
}
