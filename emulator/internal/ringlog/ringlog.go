// Package ringlog is a bounded, append-only, in-order log: once it holds max
// entries, each append drops the oldest. The emulators keep what they received
// in one, so inspection never grows memory without bound under load.
package ringlog

import "sync"

// DefaultMax is the capacity used when New is given zero or less.
const DefaultMax = 1_000_000

// Log is safe for concurrent use. Append holds the lock only to store one
// value; the slice grows on demand, so an idle emulator costs nothing.
type Log[T any] struct {
	mu    sync.Mutex
	max   int
	buf   []T // len(buf) <= max; once full, it is used as a ring
	start int // index of the oldest entry when full
	total uint64
}

// New returns an empty log holding at most max entries.
func New[T any](max int) *Log[T] {
	if max <= 0 {
		max = DefaultMax
	}
	return &Log[T]{max: max}
}

// Append adds v as the newest entry and returns its 1-based sequence number
// since the last Reset.
func (l *Log[T]) Append(v T) uint64 {
	l.mu.Lock()
	if len(l.buf) < l.max {
		l.buf = append(l.buf, v)
	} else {
		l.buf[l.start] = v
		l.start++
		if l.start == l.max {
			l.start = 0
		}
	}
	l.total++
	n := l.total
	l.mu.Unlock()
	return n
}

// Snapshot returns the retained entries, oldest first, that keep(v) accepts
// (all of them when keep is nil). At most limit entries are returned, the
// newest ones, when limit > 0.
func (l *Log[T]) Snapshot(keep func(*T) bool, limit int) []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []T
	if keep == nil {
		out = make([]T, 0, len(l.buf))
	}
	// Oldest first: buf[start:] then buf[:start].
	for _, part := range [2][]T{l.buf[l.start:], l.buf[:l.start]} {
		for i := range part {
			if keep == nil || keep(&part[i]) {
				out = append(out, part[i])
			}
		}
	}
	if limit > 0 && len(out) > limit {
		out = append([]T(nil), out[len(out)-limit:]...)
	}
	return out
}

// Len returns the number of retained entries and the number appended since
// the last Reset (retained or dropped).
func (l *Log[T]) Len() (retained int, total uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buf), l.total
}

// Reset empties the log and releases its memory.
func (l *Log[T]) Reset() {
	l.mu.Lock()
	l.buf, l.start, l.total = nil, 0, 0
	l.mu.Unlock()
}
