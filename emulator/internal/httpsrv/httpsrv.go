// Package httpsrv runs the emulators' HTTPS servers: TLS from the emulator
// CA, HTTP/2 with Apple's stream limit, per-connection state, and the two
// ways of dropping a connection that the fault injector needs.
package httpsrv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pushmesh/pushmesh/emulator/tlsca"
	"github.com/pushmesh/pushmesh/servicekit/writebatch"
)

// MaxConcurrentStreams is what APNs advertises per connection; the Go
// default (250) would make benchmarks with many senders behave unlike Apple.
const MaxConcurrentStreams = 1000

// Conn is the per-connection state handed to handlers through the request
// context.
type Conn struct {
	// ID numbers connections from 1 in accept order.
	ID uint64
	// Local is what Config.NewLocal returned for this connection.
	Local any

	raw net.Conn // the accepted *tls.Conn
}

// HardClose drops the connection at once: the TCP socket is closed with a
// reset (linger 0), without a TLS close_notify or an HTTP/2 GOAWAY, the way a
// crashed gateway or a broken middlebox looks to the client.
func (c *Conn) HardClose() {
	nc := c.raw
	// Unwrap *tls.Conn and writebatch.Conn down to the TCP socket.
	for {
		w, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = w.NetConn()
	}
	if tcp, ok := nc.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = nc.Close()
}

type connKey struct{}

// ConnFrom returns the connection a request arrived on, or nil.
func ConnFrom(ctx context.Context) *Conn {
	c, _ := ctx.Value(connKey{}).(*Conn)
	return c
}

// Config configures Start.
type Config struct {
	Addr     string // default 127.0.0.1:0
	CA       *tlsca.CA
	Handler  http.Handler
	Logger   *slog.Logger
	NewLocal func() any // optional per-connection state constructor
	// MaxConcurrentStreams per connection; 0 means MaxConcurrentStreams.
	MaxConcurrentStreams int
}

// Server is a running HTTPS server.
type Server struct {
	srv    *http.Server
	ln     net.Listener
	url    string
	nextID atomic.Uint64
	done   chan struct{}
}

// Start listens on cfg.Addr and serves in the background.
func Start(cfg Config) (*Server, error) {
	if cfg.CA == nil {
		return nil, errors.New("httpsrv: CA is required")
	}
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	// Merge the many small HTTP/2 frame writes of busy connections into
	// fewer system calls, as a real gateway's front end does; the emulator
	// then costs the machine less next to the service under test.
	ln = writebatch.Listener{Listener: ln}
	maxStreams := cfg.MaxConcurrentStreams
	if maxStreams <= 0 {
		maxStreams = MaxConcurrentStreams
	}
	s := &Server{ln: ln, done: make(chan struct{})}
	s.url = "https://" + ln.Addr().String()

	s.srv = &http.Server{
		Handler:           cfg.Handler,
		TLSConfig:         cfg.CA.ServerTLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       10 * time.Minute, // APNs keeps idle connections for a long time
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
		// Handshake failures and resets caused by clients going away are
		// expected here (fault injection causes them on purpose): log them
		// at debug level instead of on stderr.
		ErrorLog: log.New(debugWriter{logger}, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			conn := &Conn{ID: s.nextID.Add(1), raw: c}
			if cfg.NewLocal != nil {
				conn.Local = cfg.NewLocal()
			}
			return context.WithValue(ctx, connKey{}, conn)
		},
	}
	go func() {
		defer close(s.done)
		err := s.srv.ServeTLS(ln, "", "")
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("emulator server stopped", "addr", s.url, "err", err)
		}
	}()
	return s, nil
}

// URL returns https://host:port.
func (s *Server) URL() string { return s.url }

// Addr returns the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server at once: the listener and every connection are
// closed, and requests in flight fail on the client side. Tests call it in
// cleanup, where waiting for clients to hang up would only add time.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}

// Shutdown stops the server gracefully: new connections are refused, every
// HTTP/2 connection gets a GOAWAY, and in-flight requests may finish until
// ctx is done, after which the remaining connections are closed.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	return err
}

type debugWriter struct{ l *slog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.l.Debug("http server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

var _ io.Writer = debugWriter{}
