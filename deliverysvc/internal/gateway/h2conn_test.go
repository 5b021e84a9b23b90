package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fault"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// APNs lowers a connection's stream limit to 1 after a rejected push. With
// more pushes queued than the limit allows, the pooled Go HTTP/2 transports
// sent none of them until their deadline (and opened more connections);
// every push must instead go out, once, on the app's connection, a stream
// at a time. (Rarely a second connection: Go's client can open one stream
// beyond the limit just after the server's SETTINGS, Go's server resets it
// with PROTOCOL_ERROR, and the client then retires the connection.)
func TestAPNsHonoursALowStreamLimit(t *testing.T) {
	ca, err := tlsca.New()
	if err != nil {
		t.Fatal(err)
	}
	const limit = 2
	emu, err := apns.Start(apns.Options{CA: ca, MaxConcurrentStreams: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	if err := emu.SetFaults(apns.Faults{Latency: 5 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// A deadline that fails the test's pushes if they wait for it, yet
	// leaves a loaded race-detector run time to send them two at a time.
	gw, err := New(Config{APNsURL: emu.URL(), ExtraCAPEM: ca.CertPEM(), APNsConnections: 1, RequestTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e := &emulators{apns: emu, gw: gw}
	s := openSender(t, gw, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID))

	// Three callers of 64 pushes each: 192 requests queue for 2 streams.
	const callers, perCaller = 3, 64
	sendConcurrently(t, s, callers, perCaller, distinctToken, allSent)
	conns := map[uint64]bool{}
	byToken := map[string]int{}
	for _, d := range emu.Received() {
		conns[d.ConnID] = true
		byToken[d.Token]++
	}
	if len(byToken) != callers*perCaller || len(conns) > 2 {
		t.Errorf("APNs received pushes to %d tokens on %d connections, want %d on 1 (or 2)", len(byToken), len(conns), callers*perCaller)
	}
	for tok, n := range byToken {
		if n != 1 {
			t.Errorf("APNs received the push to %s… %d times, want once", tok[:8], n)
		}
	}
}

// sendConcurrently makes callers Send calls of perCaller pushes each at
// once, push n to tokenOf(n), and fails the test unless each push's outcome
// is want(its token).
func sendConcurrently(t *testing.T, s apps.Sender, callers, perCaller int, tokenOf func(n int) string, want func(token string) commonv1.FailureReason) {
	t.Helper()
	var wg sync.WaitGroup
	failures := make(chan string, callers*perCaller)
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pushes := make([]delivery.Push, perCaller)
			for i := range pushes {
				pushes[i] = apnsPush(tokenOf(c*perCaller + i))
			}
			for i, a := range s.Send(context.Background(), pushes) {
				if w := want(pushes[i].Target.Token); a.Reason != w {
					failures <- fmt.Sprintf("push %d: %v %s, want %v", c*perCaller+i, a.Reason, a.Detail, w)
				}
			}
		}()
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Fatal(f)
	}
}

// distinctToken and allSent are sendConcurrently's usual arguments.
func distinctToken(n int) string { return fmt.Sprintf("%064x", 0xc0000000+n) }

func allSent(string) commonv1.FailureReason { return commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED }

// A connection the server closes gracefully (GOAWAY) while requests are in
// flight and queued: requests the server never processed go out again on a
// new connection, once each, and none is received twice.
func TestH2ConnRetriesUnsentRequests(t *testing.T) {
	e := start(t)
	gw, err := New(Config{APNsURL: e.apns.URL(), ExtraCAPEM: e.gw.cfg.ExtraCAPEM, APNsConnections: 1})
	if err != nil {
		t.Fatal(err)
	}
	s := openSender(t, gw, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID))
	if err := e.apns.SetFaults(apns.Faults{DropEvery: 100, DropMode: fault.DropGoAway}); err != nil {
		t.Fatal(err)
	}
	// One Send of 400: 64 requests in flight (apnsFanOut), so the requests
	// a GOAWAY turns away are all processed on the next connection before
	// the 100th request after it is dropped in turn.
	const callers, perCaller = 1, 400
	sendConcurrently(t, s, callers, perCaller, distinctToken, allSent)
	conns := map[uint64]bool{}
	byToken := map[string]int{}
	for _, d := range e.apns.Received() {
		conns[d.ConnID] = true
		byToken[d.Token]++
	}
	for tok, n := range byToken {
		if n != 1 {
			t.Errorf("APNs received the push to %s… %d times, want once", tok[:8], n)
		}
	}
	if len(byToken) != callers*perCaller || len(conns) < 2 {
		t.Errorf("APNs received %d pushes on %d connections, want %d on several", len(byToken), len(conns), callers*perCaller)
	}
}

// Requests that find no connection share one dial, and each waits for it
// only until its own deadline: here a server that accepts TCP and never
// answers the TLS handshake.
func TestH2ConnSharesOneDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 100)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c // held open, silent
		}
	}()
	gw, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := &h2Conn{t: gw.h2, addr: ln.Addr().String()}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+ln.Addr().String()+"/3/device/x", nil)
			if _, err := c.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("RoundTrip: %v, want the request's deadline", err)
			}
		}()
	}
	wg.Wait()
	ln.Close()
	<-acceptDone
	close(accepted)
	n := 0
	for conn := range accepted {
		conn.Close()
		n++
	}
	if n != 1 {
		t.Errorf("%d connections dialed for 50 requests, want 1", n)
	}
}

// A CloseIdleConnections that comes while a dial is in progress, with no
// request left waiting for it, closes the new connection instead of leaving
// it open for no one.
func TestH2ConnClosedWhileDialing(t *testing.T) {
	e := start(t)
	// A forwarder to the emulator that lets each connection through only
	// after 300 ms: a slow dial.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	target := strings.TrimPrefix(e.apns.URL(), "https://")
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer in.Close()
				time.Sleep(300 * time.Millisecond)
				out, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer out.Close()
				go io.Copy(out, in)
				io.Copy(in, out)
			}()
		}
	}()
	c := &h2Conn{t: e.gw.h2, addr: ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+ln.Addr().String()+"/3/device/x", nil)
	if _, err := c.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RoundTrip: %v, want its deadline (the dial takes 300 ms)", err)
	}
	c.CloseIdleConnections()
	c.mu.Lock()
	d := c.dial
	c.mu.Unlock()
	if d == nil {
		t.Fatal("no dial in progress")
	}
	<-d.done
	c.mu.Lock()
	defer c.mu.Unlock()
	if d.err != nil {
		t.Fatalf("dial: %v", d.err)
	}
	if c.cur != nil {
		t.Error("the connection dialed for nobody stayed open")
	}
}
