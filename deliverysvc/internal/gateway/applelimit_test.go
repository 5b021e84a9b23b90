package gateway

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// swingingAPNs is a hand-written HTTP/2 server that answers APNs pushes the
// way Apple manages a connection's stream limit: it advertises initial
// concurrent streams (1,000; or 1, as Apple has been reported to do until a
// connection's first accepted push), lowers the limit to 1 when it rejects a
// push and raises it to 1,000 when it accepts one. Go's HTTP/2 server cannot
// change SETTINGS on an open connection, so the emulator cannot do this.
// A device token starting with "d" is answered 400 BadDeviceToken, any
// other 200, each after a short delay so that streams overlap.
type swingingAPNs struct {
	ln      net.Listener
	initial uint32

	mu         sync.Mutex
	conns      int
	accepted   int
	rejected   int
	refused    int // streams opened beyond the limit sent, refused (RFC 9113 §5.1.2)
	violations int // of them, beyond a limit the client had acknowledged
	lowered    int // times the limit went down to 1
}

func startSwingingAPNs(t *testing.T, ca *tlsca.CA, initial uint32) *swingingAPNs {
	t.Helper()
	cfg := ca.ServerTLSConfig()
	cfg.NextProtos = []string{"h2"}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &swingingAPNs{ln: ln, initial: initial}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			s.mu.Unlock()
			go s.serve(c)
		}
	}()
	return s
}

func (s *swingingAPNs) URL() string { return "https://" + s.ln.Addr().String() }

// swingConn is one connection's state; the read loop owns it, writes go
// through wmu.
type swingConn struct {
	s   *swingingAPNs
	c   net.Conn
	wmu sync.Mutex
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer

	mu        sync.Mutex
	active    int               // streams opened and not yet answered
	sentLimit uint32            // the last limit sent
	unacked   []uint32          // limits sent, not yet acknowledged, in order
	acked     uint32            // the limit the client has acknowledged
	paths     map[uint32]string // open streams' :path
}

const swingHigh, swingLow = 1000, 1

func (s *swingingAPNs) serve(c net.Conn) {
	defer c.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	sc := &swingConn{s: s, c: c, fr: http2.NewFramer(c, c), paths: map[uint32]string{}, acked: swingHigh}
	sc.enc = hpack.NewEncoder(&sc.buf)
	sc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	sc.wmu.Lock()
	sc.setLimitLocked(s.initial, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
	_ = sc.fr.WriteWindowUpdate(0, 1<<30-65535)
	sc.wmu.Unlock()
	for {
		f, err := sc.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				sc.mu.Lock()
				if len(sc.unacked) > 0 {
					sc.acked, sc.unacked = sc.unacked[0], sc.unacked[1:]
				}
				sc.mu.Unlock()
				continue
			}
			sc.write(func() error { return sc.fr.WriteSettingsAck() })
		case *http2.MetaHeadersFrame:
			sc.mu.Lock()
			// A limit lowered but not yet acknowledged applies too: the
			// client may not have seen it, so such a stream is refused
			// but is no violation.
			over := sc.active >= int(min(sc.acked, sc.sentLimit))
			violation := sc.active >= int(sc.acked)
			if !over {
				sc.active++
				sc.paths[f.StreamID] = f.PseudoValue("path")
			}
			sc.mu.Unlock()
			if over {
				// RFC 9113 §5.1.2: a stream beyond the limit is refused.
				s.mu.Lock()
				s.refused++
				if violation {
					s.violations++
				}
				s.mu.Unlock()
				id := f.StreamID
				sc.write(func() error { return sc.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
			}
		case *http2.DataFrame:
			sc.mu.Lock()
			path, open := sc.paths[f.StreamID]
			sc.mu.Unlock()
			if open && f.StreamEnded() {
				sc.mu.Lock()
				delete(sc.paths, f.StreamID)
				sc.mu.Unlock()
				id := f.StreamID
				time.AfterFunc(time.Millisecond, func() { sc.answer(id, path) })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				sc.write(func() error { return sc.fr.WritePing(true, data) })
			}
		case *http2.GoAwayFrame:
			return
		}
	}
}

func (sc *swingConn) write(fn func() error) {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	_ = fn()
}

// setLimitLocked sends SETTINGS with a new stream limit (and extra
// settings); wmu is held, so limits reach the wire in the order they are
// recorded and acknowledgements match them.
func (sc *swingConn) setLimitLocked(limit uint32, extra ...http2.Setting) {
	sc.mu.Lock()
	sc.sentLimit = limit
	sc.unacked = append(sc.unacked, limit)
	sc.mu.Unlock()
	_ = sc.fr.WriteSettings(append([]http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: limit}}, extra...)...)
}

// answer answers a push: the limit changes first, as Apple's does with its
// answer, then the response.
func (sc *swingConn) answer(id uint32, path string) {
	token := path[strings.LastIndex(path, "/")+1:]
	rejected := strings.HasPrefix(token, "d")
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.mu.Lock()
	sc.active--
	current := sc.sentLimit
	sc.mu.Unlock()
	sc.s.mu.Lock()
	if rejected {
		sc.s.rejected++
	} else {
		sc.s.accepted++
	}
	if rejected && current != swingLow {
		sc.s.lowered++
	}
	sc.s.mu.Unlock()
	switch {
	case rejected && current != swingLow:
		sc.setLimitLocked(swingLow)
	case !rejected && current != swingHigh:
		sc.setLimitLocked(swingHigh)
	}
	sc.buf.Reset()
	status, body := "200", ""
	if rejected {
		status, body = "400", `{"reason":"BadDeviceToken"}`
	}
	_ = sc.enc.WriteField(hpack.HeaderField{Name: ":status", Value: status})
	_ = sc.enc.WriteField(hpack.HeaderField{Name: "apns-id", Value: fmt.Sprintf("00000000-0000-0000-0000-%012d", id)})
	if err := sc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: sc.buf.Bytes(), EndHeaders: true, EndStream: body == ""}); err != nil || body == "" {
		return
	}
	_ = sc.fr.WriteData(id, true, []byte(body))
}

// newAPNsCreds returns credentials with a new P-256 key.
func newAPNsCreds(t *testing.T) creds.Credentials {
	t.Helper()
	p8, _, err := apns.GenerateProviderKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := creds.ParseAPNs(string(p8), keyID, teamID, "c")
	if err != nil {
		t.Fatal(err)
	}
	return creds.Credentials{APNs: c}
}

// Against Apple's swinging stream limit, every push gets its answer on one
// connection, exactly once.
//
// Go's HTTP/2 client takes a stream slot before it writes the stream's
// HEADERS, and a SETTINGS frame lowering the limit can be acknowledged in
// between: now and then a stream opens beyond a limit the client has
// acknowledged. The fake refuses it (REFUSED_STREAM, as RFC 9113 allows;
// Apple has been seen to answer with a GOAWAY), and h2Conn sends it again.
func TestAPNsFollowsApplesSwingingStreamLimit(t *testing.T) {
	for _, initial := range []uint32{swingHigh, swingLow} {
		t.Run(fmt.Sprintf("initial limit %d", initial), func(t *testing.T) {
			ca, err := tlsca.New()
			if err != nil {
				t.Fatal(err)
			}
			srv := startSwingingAPNs(t, ca, initial)
			gw, err := New(Config{APNsURL: srv.URL(), ExtraCAPEM: ca.CertPEM(), APNsConnections: 1, RequestTimeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			s := openSender(t, gw, apnsKey, sandbox, newAPNsCreds(t))

			// Every fourth token is dead: the limit falls to 1 and climbs
			// back again and again while up to 3 x 64 pushes are queued.
			const callers, perCaller = 3, 200
			sendConcurrently(t, s, callers, perCaller, func(n int) string {
				if n%4 == 0 {
					return fmt.Sprintf("d%063x", n)
				}
				return fmt.Sprintf("%064x", n)
			}, func(token string) commonv1.FailureReason {
				if strings.HasPrefix(token, "d") {
					return commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN
				}
				return commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED
			})
			srv.mu.Lock()
			defer srv.mu.Unlock()
			t.Logf("%d accepted, %d rejected on %d connections; limit lowered %d times; %d streams refused, %d of them beyond an acknowledged limit",
				srv.accepted, srv.rejected, srv.conns, srv.lowered, srv.refused, srv.violations)
			if srv.accepted+srv.rejected != callers*perCaller || srv.conns != 1 || srv.lowered < 10 {
				t.Errorf("server: %d accepted + %d rejected on %d connections, limit lowered %d times; want %d on 1, lowered at least 10 times",
					srv.accepted, srv.rejected, srv.conns, srv.lowered, callers*perCaller)
			}
		})
	}
}
