// Package progress reports the progress of a long command on stderr: a bar
// redrawn in place when stderr is a terminal, plain lines every few seconds
// otherwise (a CI log, a file), so logs stay readable and short.
package progress

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Redraw intervals: a terminal bar is smooth at 10 frames a second; a log
// gets a line every 5 seconds.
const (
	terminalEvery = 100 * time.Millisecond
	plainEvery    = 5 * time.Second
)

// Meter throttles progress output. It is not safe for concurrent use: the
// command that owns the work calls it from its own goroutine.
type Meter struct {
	w        io.Writer
	terminal bool
	now      func() time.Time
	every    time.Duration
	last     time.Time
	drawn    bool
}

// New returns a meter writing to w. terminal selects the in-place bar; now
// is the clock (time.Now outside tests).
func New(w io.Writer, terminal bool, now func() time.Time) *Meter {
	every := plainEvery
	if terminal {
		every = terminalEvery
	}
	return &Meter{w: w, terminal: terminal, now: now, every: every, last: now()}
}

// Update shows the text that status returns, if enough time has passed since
// the last output. status is only called when its text will be shown.
func (m *Meter) Update(status func() string) {
	if m.now().Sub(m.last) < m.every {
		return
	}
	m.show(status())
}

// Now shows the text immediately (e.g. on a state change).
func (m *Meter) Now(text string) { m.show(text) }

func (m *Meter) show(text string) {
	m.last = m.now()
	if m.terminal {
		// \r returns to the line start, ESC[K clears what a longer previous
		// frame left behind.
		fmt.Fprintf(m.w, "\r%s\x1b[K", text)
		m.drawn = true
		return
	}
	fmt.Fprintln(m.w, text)
}

// Done ends the progress output. On a terminal the bar is redrawn one last
// time with final (when not empty) and the line is ended, so what follows
// starts on a fresh line; in plain mode nothing more is written.
func (m *Meter) Done(final string) {
	if !m.terminal {
		return
	}
	if final != "" {
		fmt.Fprintf(m.w, "\r%s\x1b[K", final)
		m.drawn = true
	}
	if m.drawn {
		fmt.Fprintln(m.w)
		m.drawn = false
	}
}

// Bar draws fraction (0..1) as a bar of width cells: "[######------]".
func Bar(fraction float64, width int) string {
	if math.IsNaN(fraction) || fraction < 0 {
		fraction = 0
	}
	if fraction > 1 {
		fraction = 1
	}
	full := int(math.Round(fraction * float64(width)))
	return "[" + strings.Repeat("#", full) + strings.Repeat("-", width-full) + "]"
}
