package tlsconfig

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/servicekit/logtest"
)

// A burst of refusals logs RefusalLogBurst lines; the next window's first
// line says how many were held back.
func TestRefusalLogBoundsAndCounts(t *testing.T) {
	var logs logtest.Buffer
	r := NewRefusalLog(slog.New(slog.NewTextHandler(&logs, nil)))
	c := &clock{t: time.Now()}
	r.now = c.now
	for range RefusalLogBurst + 5 {
		r.Warn("refused a TLS handshake")
	}
	if n := strings.Count(logs.String(), "refused a TLS handshake"); n != RefusalLogBurst {
		t.Errorf("%d refusals in a window: got %d lines, want %d", RefusalLogBurst+5, n, RefusalLogBurst)
	}
	if strings.Contains(logs.String(), "refusals_not_logged") {
		t.Errorf("no line let through since the first held back: want no count yet, got:\n%s", logs.String())
	}
	c.t = c.t.Add(RefusalLogWindow)
	r.Warn("refused a TLS handshake")
	if !strings.Contains(logs.String(), "refusals_not_logged=5") {
		t.Errorf("next window: want its first line to count the 5 held back, got:\n%s", logs.String())
	}
}
