// Package writebatch merges the small writes of many concurrent streams on
// one connection into fewer, larger socket writes.
//
// An HTTP/2 client or server flushes after almost every frame: a push costs
// its HEADERS and its DATA, each a TLS record and a write(2) of a hundred
// bytes. With hundreds of streams on a connection most of the CPU then goes
// to system calls and to waking the peer for each of them. A Conn's Write
// only appends to a buffer and returns; one goroutine per connection writes
// whatever has piled up while its previous write(2) ran. An idle connection
// therefore sends at once (one goroutine hand-off later), and a busy one
// sends many frames per system call. Order is kept; nothing waits on a
// timer.
//
// Wrap the plain TCP connection, under TLS: net/http and x/net/http2 look
// for a *tls.Conn to negotiate HTTP/2.
package writebatch

import (
	"net"
	"runtime"
	"sync"
	"time"
)

// maxPending bounds the bytes a Conn holds for the network. A writer that
// finds this much waiting blocks until the network takes some, so a peer
// that stops reading still pushes back on its senders.
const maxPending = 1 << 20

// Conn is a net.Conn whose writes are merged. Reads and deadlines go to the
// wrapped connection; a write deadline applies to the system call that
// carries the bytes, and its error is returned by the next Write.
type Conn struct {
	net.Conn

	mu      sync.Mutex
	drained sync.Cond // signalled when pending shrinks or the writer stops
	pending []byte
	writing bool // the writer goroutine owns a batch
	err     error
}

// NewConn wraps c.
func NewConn(c net.Conn) *Conn {
	wc := &Conn{Conn: c}
	wc.drained.L = &wc.mu
	return wc
}

// Write queues p for the network and returns. It blocks only while
// maxPending bytes are already waiting. An error of an earlier write, or a
// closed connection, is returned instead.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && len(c.pending) > 0 && len(c.pending)+len(p) > maxPending {
		c.drained.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	c.pending = append(c.pending, p...)
	if !c.writing {
		c.writing = true
		go c.writeOut()
	}
	return len(p), nil
}

// writeOut sends batches until none is left. It runs on its own goroutine,
// started by the Write that found it idle, so an idle connection holds no
// goroutine.
func (c *Conn) writeOut() {
	var batch []byte
	// Let the goroutines that are ready run first: under load they are
	// the other streams about to queue their frames, which then share this
	// system call. An idle process runs this at once. (Measured on a
	// journey: a third fewer write(2) calls, ~7 % less deliverysvc CPU.)
	runtime.Gosched()
	c.mu.Lock()
	for len(c.pending) > 0 && c.err == nil {
		// Swap buffers: writers fill the other one during the system call.
		batch, c.pending = c.pending, batch[:0]
		c.drained.Broadcast()
		c.mu.Unlock()
		_, err := c.Conn.Write(batch)
		c.mu.Lock()
		if err != nil && c.err == nil {
			c.err = err
		}
	}
	if cap(batch) > cap(c.pending) {
		c.pending = batch[:0] // keep the bigger buffer
	}
	c.writing = false
	c.drained.Broadcast()
	c.mu.Unlock()
}

// Flush waits until every queued byte was handed to the network and returns
// the first write error.
func (c *Conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.writing && c.err == nil {
		c.drained.Wait()
	}
	return c.err
}

// SetWriteDeadline sets the deadline of the system calls that carry queued
// bytes. A deadline that has already passed means "no more writes" (crypto/tls
// sets one right after queuing its close_notify): what is queued is sent
// first, bounded by the deadline in force until then.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.flushBeforePast(t)
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets the read deadline and, as SetWriteDeadline, the write
// deadline.
func (c *Conn) SetDeadline(t time.Time) error {
	c.flushBeforePast(t)
	return c.Conn.SetDeadline(t)
}

// flushBeforePast sends what is queued when t has already passed, before
// that deadline stops all writes.
func (c *Conn) flushBeforePast(t time.Time) {
	if !t.IsZero() && !t.After(time.Now()) {
		_ = c.Flush()
	}
}

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// closeFlushTimeout bounds how long Close tries to send what is queued to a
// peer that does not read: crypto/tls allows its close_notify as long.
const closeFlushTimeout = 5 * time.Second

// Close sends what is queued, for at most closeFlushTimeout, and closes the
// connection.
func (c *Conn) Close() error {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
	_ = c.Flush()
	c.mu.Lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.drained.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}

// Listener wraps every accepted connection in a Conn.
type Listener struct{ net.Listener }

// Accept implements net.Listener.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return NewConn(c), nil
}
