package grpcserver

import (
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
)

// Anyone who reaches the port can make handshakes fail: probes that leave
// without a byte (closed or reset) make no line, and the rest at most
// tlsconfig.RefusalLogBurst per window. The handshakes run on the test's
// goroutine, so each has been logged, or not, when it returns.
func TestRefusedHandshakesDoNotFloodTheLog(t *testing.T) {
	f := tlstest.New(t, "mesh")
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	cfg, err := tlsconfig.NewServer(tlsconfig.Server{CertFile: f.Server.CertFile, KeyFile: f.Server.KeyFile}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h := &handshakeLogger{TransportCredentials: credentials.NewTLS(cfg), log: tlsconfig.NewRefusalLog(log)}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	// handshake accepts a connection that client dialed and then treated,
	// and runs the server's handshake on it.
	handshake := func(client func(*net.TCPConn)) {
		t.Helper()
		c, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := lis.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(time.Minute))
		client(c.(*net.TCPConn))
		if _, _, err := h.ServerHandshake(s); err == nil {
			t.Fatal("handshake succeeded, want it refused")
		}
	}

	// A port scanner's connect: reset at once.
	handshake(func(c *net.TCPConn) { _ = c.SetLinger(0); _ = c.Close() })
	// A TCP health check: connect, close.
	handshake(func(c *net.TCPConn) { _ = c.Close() })
	if got := logs.String(); got != "" {
		t.Errorf("probes that sent nothing: want no line, got:\n%s", got)
	}

	// Something that is not TLS, again and again.
	for range 3 * tlsconfig.RefusalLogBurst {
		handshake(func(c *net.TCPConn) { _, _ = c.Write(make([]byte, 8)); _ = c.CloseWrite() })
	}
	if n := strings.Count(logs.String(), "refused a TLS handshake"); n < 1 || n > tlsconfig.RefusalLogBurst {
		t.Errorf("%d refused handshakes: got %d lines, want 1 to %d:\n%s", 3*tlsconfig.RefusalLogBurst, n, tlsconfig.RefusalLogBurst, logs.String())
	}
}
