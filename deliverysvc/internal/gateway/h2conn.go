package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/sideshow/apns2"
)

// h2Conn is one HTTP/2 connection to an APNs host, dialed on first use and
// again after it breaks. It is an http.RoundTripper for an apns2 client.
//
// Why not an http2.Transport with its connection pool: APNs lowers a
// connection's SETTINGS_MAX_CONCURRENT_STREAMS to 1 after a rejected push
// (a dead token is routine) and raises it again after an accepted one. The
// pooled transports of golang.org/x/net/http2 (v0.62) and net/http (Go 1.26)
// count requests queued for a connection against its limit, so once more
// requests are queued than the lowered limit allows (strict mode), none of
// them is ever sent and all wait for their deadline; without strict mode
// they open more connections instead, and x/net's still lets some hang. A single http.ClientConn has no such
// queue accounting: a request waits for a free stream and is sent when one
// frees up, so a connection always honours the server's current limit.
// TestAPNsHonoursALowStreamLimit shows both.
type h2Conn struct {
	t    *http.Transport
	addr string // host:port

	mu      sync.Mutex
	cur     *h2Link   // nil until dialed, and after a failure or close
	dial    *h2Dial   // the dial in progress, if any
	retired []*h2Link // refused new requests (GOAWAY); closed once idle
	// closeIdle is set when CloseIdleConnections comes during a dial: the
	// new connection is closed at once unless a request still waits for it.
	closeIdle bool
}

// h2Dial is a dial every request waiting for the connection shares.
type h2Dial struct {
	done    chan struct{} // closed once the dial ended and cur is set
	err     error         // the dial's error, set before done is closed
	waiters int           // requests waiting for it
}

// h2Link is one dialed connection and the requests using it.
type h2Link struct {
	cc    *http.ClientConn
	users int // requests between get and release
}

// newH2Transport is the transport h2Conns dial with: HTTP/2 only, over TLS
// with tlsConfig, writes merged (dialBatched), through the proxy that proxy
// picks if any. A proxied connection is dialed by net/http: the TCP
// connection to the proxy (DialContext), CONNECT, then TLS to the gateway
// over the tunnel with TLSClientConfig; DialTLSContext serves direct ones.
func newH2Transport(tlsConfig *tls.Config, proxy func(*http.Request) (*url.URL, error)) *http.Transport {
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	cfg := tlsConfig.Clone()
	cfg.NextProtos = []string{"h2"}
	return &http.Transport{
		Protocols:       &protocols,
		TLSClientConfig: cfg,
		Proxy:           proxy,
		DialContext:     dialBatched,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			dialCfg := cfg.Clone()
			dialCfg.ServerName = host
			return dialTLSBatched(ctx, network, addr, dialCfg)
		},
		HTTP2: &http.HTTP2Config{
			// As apns2: ping a connection that has been silent for 15 s,
			// so a dead one is noticed and replaced.
			SendPingTimeout: apns2.ReadIdleTimeout,
			PingTimeout:     5 * time.Second,
		},
	}
}

// h2DialTimeout bounds a dial, which every request to the connection waits
// for (each at most until its own deadline).
const h2DialTimeout = 10 * time.Second

// h2MaxSends bounds how often one request is sent when the server turns it
// away: 8, as golang.org/x/net/http2 allows a request 7 retries. A
// refused stream waits for a free slot before it goes again, so a server
// that keeps changing its limit costs a few attempts, not a busy loop.
const h2MaxSends = 8

// RoundTrip implements http.RoundTripper. A request the server turned away
// (resendOf) is sent again, up to h2MaxSends times in all: on the same
// connection if the server refused its stream, on a fresh one if the
// connection had stopped taking requests.
func (c *h2Conn) RoundTrip(req *http.Request) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		l, err := c.get(req.Context())
		if err != nil {
			return nil, err
		}
		res, err := l.cc.RoundTrip(req)
		retry := err != nil && attempt < h2MaxSends
		fate := resendNo
		if err != nil {
			fate = resendOf(err)
		}
		c.release(l, fate == resendNewConn)
		if !retry || fate == resendNo {
			return res, err
		}
		if req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				return nil, err
			}
			body, berr := req.GetBody()
			if berr != nil {
				return nil, err
			}
			req = req.Clone(req.Context())
			req.Body = body
		}
	}
}

// get returns the current connection, dialing it if there is none or it
// broke. One dial serves every request that needs it: a dial per waiting
// request is what this type exists to avoid. It runs on its own goroutine,
// so each request waits only as long as its own context allows, and no lock
// is held meanwhile (requests finishing on a retired connection release it).
func (c *h2Conn) get(ctx context.Context) (*h2Link, error) {
	c.mu.Lock()
	if c.cur != nil && c.cur.cc.Err() != nil {
		_ = c.cur.cc.Close()
		c.cur = nil
	}
	if l := c.cur; l != nil {
		l.users++
		c.mu.Unlock()
		return l, nil
	}
	d := c.dial
	if d == nil {
		d = &h2Dial{done: make(chan struct{})}
		c.dial = d
		go c.dialNow(d)
	}
	d.waiters++
	c.mu.Unlock()
	var err error
	select {
	case <-d.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	c.mu.Lock()
	d.waiters--
	c.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if d.err != nil {
		return nil, d.err
	}
	return c.get(ctx)
}

// dialNow makes the connection for d, bounded by h2DialTimeout.
func (c *h2Conn) dialNow(d *h2Dial) {
	ctx, cancel := context.WithTimeout(context.Background(), h2DialTimeout)
	defer cancel()
	cc, err := c.t.NewClientConn(ctx, "https", c.addr)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dial = nil
	switch {
	case err != nil:
		d.err = fmt.Errorf("connect to %s: %w", c.addr, err)
	case c.closeIdle && d.waiters == 0:
		// Closed while dialing (the app's credentials were replaced, or
		// it was removed) and nobody waits: the connection would stay
		// open, pinged, for no one.
		_ = cc.Close()
	default:
		c.cur = &h2Link{cc: cc}
	}
	c.closeIdle = false
	close(d.done)
}

// release ends a request's use of l. unusable says l turned the request
// away because it takes no new ones (the server sent GOAWAY): l is retired,
// and closed once its last request is done. A broken connection is dropped
// now rather than by the next request, so an idle pool keeps no dead socket.
func (c *h2Conn) release(l *h2Link, unusable bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l.users--
	if c.cur == l && (unusable || l.cc.Err() != nil) {
		c.cur = nil
		c.retired = append(c.retired, l)
	}
	c.closeIdleRetiredLocked()
}

func (c *h2Conn) closeIdleRetiredLocked() {
	kept := c.retired[:0]
	for _, l := range c.retired {
		if (l.users == 0 && l.cc.InFlight() == 0) || l.cc.Err() != nil {
			_ = l.cc.Close()
			continue
		}
		kept = append(kept, l)
	}
	clear(c.retired[len(kept):])
	c.retired = kept
}

// CloseIdleConnections closes the connection if no request is using it; the
// next request dials again. apns2's Client.CloseIdleConnections reaches it.
func (c *h2Conn) CloseIdleConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dial != nil {
		c.closeIdle = true
	}
	if l := c.cur; l != nil && l.users == 0 && l.cc.InFlight() == 0 {
		_ = l.cc.Close()
		c.cur = nil
	}
	c.closeIdleRetiredLocked()
}

// resendFate says whether a failed request is sent again at once, and where.
type resendFate int

const (
	resendNo       resendFate = iota // the error classes decide (it may have been processed)
	resendSameConn                   // the server turned its stream away
	resendNewConn                    // the connection takes no new requests
)

// resendOf tells from a RoundTrip error whether to send the request again
// at once. The connection was unusable (closed, or after a GOAWAY) before
// the request was written, or the server's graceful GOAWAY named a last
// stream below it: the server never saw it (RFC 9113 §8.7), and a new
// connection takes it. The server refused the stream (REFUSED_STREAM, the
// same guarantee): the same connection takes it. The server reset the
// stream with PROTOCOL_ERROR, which is how Go's server answers a stream
// beyond its limit (Go's client can open one such stream when a SETTINGS
// frame lowering the limit arrives between taking a stream slot and writing
// the HEADERS); Go's client then takes no more requests on the connection,
// so a new one takes it. PROTOCOL_ERROR promises nothing, but a push sent
// twice shows once (its collapse id), and the retryable error class would
// send it again anyway, only later. net/http does not export these errors;
// their texts are matched, and TestH2ConnRetriesUnsentRequests and
// TestAPNsHonoursALowStreamLimit fail if they change.
func resendOf(err error) resendFate {
	msg := err.Error()
	if strings.Contains(msg, "REFUSED_STREAM") {
		return resendSameConn
	}
	if strings.HasPrefix(msg, "stream error: ") && strings.HasSuffix(msg, "; PROTOCOL_ERROR; received from peer") {
		return resendNewConn
	}
	for _, s := range []string{
		"http2: client conn not usable",
		"http2: client conn could not be established",
		"http2: Transport received Server's graceful shutdown GOAWAY",
	} {
		if strings.Contains(msg, s) {
			return resendNewConn
		}
	}
	return resendNo
}
