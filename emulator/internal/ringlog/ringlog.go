// Package ringlog is a bounded, append-only, in-order log: once it holds max
// entries, each append drops the oldest. The emulators keep what they received
// in one, so inspection never grows memory without bound under load.
package ringlog

import "sync"

// DefaultMax is the capacity used when New is given zero or less.
const DefaultMax = 1_000_000

// chunkSize entries are allocated at a time. Growing one big slice would copy
// every retained entry, under the lock, each time it doubles; fixed chunks
// never move.
const chunkSize = 4096

// Log is safe for concurrent use. Append holds the lock only to store one
// value; memory is allocated a chunk at a time as the log fills, so an idle
// emulator costs nothing.
type Log[T any] struct {
	mu     sync.Mutex
	max    int
	chunks [][]T  // ring storage: entry i lives at chunks[i/chunkSize][i%chunkSize]
	n      int    // retained entries, <= max
	start  int    // ring index of the oldest entry
	total  uint64 // appended since the last Reset
}

// New returns an empty log holding at most max entries.
func New[T any](max int) *Log[T] {
	if max <= 0 {
		max = DefaultMax
	}
	return &Log[T]{max: max}
}

// slot returns the storage for ring index i, allocating its chunk if needed.
func (l *Log[T]) slot(i int) *T {
	c := i / chunkSize
	for len(l.chunks) <= c {
		l.chunks = append(l.chunks, nil)
	}
	if l.chunks[c] == nil {
		size := chunkSize
		if rest := l.max - c*chunkSize; rest < size {
			size = rest
		}
		l.chunks[c] = make([]T, size)
	}
	return &l.chunks[c][i%chunkSize]
}

// Append adds v as the newest entry and returns its 1-based sequence number
// since the last Reset.
func (l *Log[T]) Append(v T) uint64 {
	l.mu.Lock()
	if l.n < l.max {
		*l.slot((l.start + l.n) % l.max) = v
		l.n++
	} else {
		// Full: overwrite the oldest.
		*l.slot(l.start) = v
		l.start = (l.start + 1) % l.max
	}
	l.total++
	seq := l.total
	l.mu.Unlock()
	return seq
}

// Snapshot returns the retained entries, oldest first, that keep(v) accepts
// (all of them when keep is nil). At most limit entries are returned, the
// newest ones, when limit > 0.
func (l *Log[T]) Snapshot(keep func(*T) bool, limit int) []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []T
	if keep == nil {
		out = make([]T, 0, l.n)
	}
	for k := 0; k < l.n; k++ {
		v := l.slot((l.start + k) % l.max)
		if keep == nil || keep(v) {
			out = append(out, *v)
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
	return l.n, l.total
}

// Reset empties the log and releases its memory.
func (l *Log[T]) Reset() {
	l.mu.Lock()
	l.chunks, l.n, l.start, l.total = nil, 0, 0, 0
	l.mu.Unlock()
}
