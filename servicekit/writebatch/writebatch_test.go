package writebatch_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/servicekit/writebatch"
)

// tcpPair returns a connected loopback pair: the client side wrapped, the
// server side plain.
func tcpPair(t *testing.T) (*writebatch.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	wc := writebatch.NewConn(c)
	t.Cleanup(func() { wc.Close(); peer.Close() })
	return wc, peer
}

// Concurrent writers serialised by a mutex (as an HTTP/2 framer's are) must
// arrive complete and in their order, whatever the batching.
func TestWritesArriveInOrder(t *testing.T) {
	wc, peer := tcpPair(t)
	const writers, each = 8, 2000
	var (
		mu   sync.Mutex
		want bytes.Buffer
		wg   sync.WaitGroup
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				msg := fmt.Appendf(nil, "writer %d message %d|", w, i)
				mu.Lock()
				want.Write(msg)
				if _, err := wc.Write(msg); err != nil {
					mu.Unlock()
					t.Error(err)
					return
				}
				mu.Unlock()
			}
		}()
	}
	got := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	wg.Wait()
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("peer read %d bytes, want %d identical bytes", len(b), want.Len())
	}
}

// A peer that stops reading pushes back: Write blocks once the socket
// buffers and the queue bound are full, and a write deadline then fails the
// blocked writers instead of letting them wait forever.
func TestStalledPeerBlocksThenDeadlineFails(t *testing.T) {
	wc, _ := tcpPair(t) // the peer never reads
	if err := wc.SetWriteDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	done := make(chan error, 1)
	go func() {
		// Far more than socket buffers and the queue bound together.
		for range 4096 {
			if _, err := wc.Write(chunk); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Write returned %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Write neither blocked on the bound nor failed at the deadline")
	}
	// Later writes report the same failure at once.
	if _, err := wc.Write([]byte("x")); err == nil {
		t.Fatal("Write after a failed flush succeeded")
	}
}

// A deadline in the past (crypto/tls's way to stop writes after its
// close_notify) still lets what was queued before it go out.
func TestPastDeadlineSendsQueuedBytesFirst(t *testing.T) {
	wc, peer := tcpPair(t)
	if _, err := wc.Write([]byte("goodbye")); err != nil {
		t.Fatal(err)
	}
	if err := wc.SetWriteDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "goodbye" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
}

// Writes to a closed connection fail; Close flushes what was queued.
func TestCloseFlushesThenRejects(t *testing.T) {
	wc, peer := tcpPair(t)
	for range 100 {
		if _, err := wc.Write([]byte("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(peer)
	if err != nil || len(b) != 1000 {
		t.Fatalf("peer read %d bytes (%v), want 1000", len(b), err)
	}
	if _, err := wc.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// Under concurrent writers the bytes share system calls: that is the point.
func TestBusyConnectionBatches(t *testing.T) {
	wc, peer := tcpPair(t)
	counter := &countingConn{Conn: wc.NetConn()}
	wc = writebatch.NewConn(counter)
	var mu sync.Mutex
	var wg sync.WaitGroup
	const writers, each = 16, 500
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				mu.Lock()
				_, _ = wc.Write(make([]byte, 100))
				mu.Unlock()
			}
		}()
	}
	go io.Copy(io.Discard, peer)
	wg.Wait()
	if err := wc.Flush(); err != nil {
		t.Fatal(err)
	}
	counter.mu.Lock()
	calls, n := counter.calls, counter.bytes
	counter.mu.Unlock()
	if n != writers*each*100 {
		t.Fatalf("%d bytes written, want %d", n, writers*each*100)
	}
	if calls >= writers*each {
		t.Fatalf("%d system calls for %d writes: nothing was batched", calls, writers*each)
	}
	t.Logf("%d writes in %d system calls", writers*each, calls)
}

type countingConn struct {
	net.Conn
	mu           sync.Mutex
	calls, bytes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.calls++
	c.bytes += len(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// Close does not hang on a peer that stopped reading: it gives up sending
// after a bounded time and closes.
func TestCloseOnStalledPeerReturns(t *testing.T) {
	t.Parallel()
	wc, _ := tcpPair(t) // the peer never reads
	chunk := make([]byte, 64<<10)
	// Fill the socket buffers until the flusher blocks, then queue more.
	go func() {
		for range 512 {
			if _, err := wc.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- wc.Close() }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close blocked on a peer that does not read")
	}
}
