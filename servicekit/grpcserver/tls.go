package grpcserver

import (
	"crypto/tls"
	"errors"
	"io"
	"net"

	"google.golang.org/grpc/credentials"

	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

// tlsMode describes cfg for the "serving" log line.
func tlsMode(cfg *tls.Config) string {
	switch {
	case cfg == nil:
		return "off"
	case cfg.ClientAuth == tls.RequireAndVerifyClientCert:
		return "mutual"
	default:
		return "on"
	}
}

// handshakeLogger logs the TLS handshakes the server refuses. grpc-go only
// reports them through its own logger, which is silent by default, so an
// operator would otherwise never learn that a client came without a
// certificate, with one from another CA, or in plaintext. Within
// tlsconfig.RefusalLog's bound: every connection can make a line, and
// anyone who reaches the port can open connections.
type handshakeLogger struct {
	credentials.TransportCredentials
	log *tlsconfig.RefusalLog
}

func (h *handshakeLogger) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	counted := &countingConn{Conn: conn}
	out, info, err := h.TransportCredentials.ServerHandshake(counted)
	switch {
	case err == nil:
	case counted.read == 0:
		// Gone (closed, reset, timed out) before saying anything: a TCP
		// probe (a load balancer's or the kubelet's health check) or a
		// port scan, not worth a line each.
	case errors.Is(err, io.EOF):
		h.log.Warn("refused a TLS handshake", "remote", conn.RemoteAddr().String(), "err", err,
			"hint", "the client hung up during the handshake: it may not trust this server's certificate, or lack the client certificate this server requires")
	default:
		h.log.Warn("refused a TLS handshake", "remote", conn.RemoteAddr().String(), "err", err)
	}
	return out, info, err
}

func (h *handshakeLogger) Clone() credentials.TransportCredentials {
	return &handshakeLogger{TransportCredentials: h.TransportCredentials.Clone(), log: h.log}
}

// countingConn counts the bytes read through it. Only the goroutine
// running the handshake reads it before read is looked at.
type countingConn struct {
	net.Conn
	read int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	return n, err
}
