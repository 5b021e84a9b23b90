// Package gateway connects apps to Apple and Google: an APNs sender per app
// (github.com/sideshow/apns2 token clients, several HTTP/2 connections,
// round-robin, one JWT reused for 50 minutes) and an FCM sender per app
// (firebase.google.com/go/v4 messaging, SendEach in chunks of at most 500),
// the live credential checks, and the classification of every gateway
// answer into a commonv1.FailureReason.
//
// Both point at Apple and Google by default; Config points them at other
// hosts (the emulators) and adds a CA to trust.
package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/writebatch"
)

const tracerName = "github.com/pushmesh/pushmesh/deliverysvc/internal/gateway"

// Apple's hosts.
const (
	APNsProductionURL = "https://api.push.apple.com"
	APNsSandboxURL    = "https://api.sandbox.push.apple.com"
)

// Config configures the gateways. The zero value talks to Apple and Google.
type Config struct {
	// APNsURL replaces both Apple hosts (sandbox and production), e.g.
	// https://127.0.0.1:PORT for the emulator; with APNsSandboxURL set, the
	// production host only.
	APNsURL string
	// APNsSandboxURL replaces Apple's sandbox host, so that tests and local
	// runs can tell the environments apart (a token of one environment is
	// BadDeviceToken in the other, and Unregistered there deactivates it).
	APNsSandboxURL string
	// FCMEndpoint replaces FCM's endpoint, e.g. https://127.0.0.1:PORT/v1.
	FCMEndpoint string
	// ExtraCAPEM holds PEM certificates trusted on top of the system roots
	// (the emulators' CA).
	ExtraCAPEM []byte
	// Proxy is the URL of the proxy every gateway connection goes through
	// (APNs, FCM and the OAuth2 token exchange): http:// (an HTTP CONNECT
	// proxy, as most egress proxies are) or socks5://. Empty: the proxy
	// that HTTPS_PROXY and NO_PROXY name, if any (http.ProxyFromEnvironment,
	// which never proxies loopback hosts).
	Proxy string
	// APNsConnections is the number of HTTP/2 connections (apns2 clients)
	// per app and environment; default 4.
	APNsConnections int
	// APNsConcurrency bounds the pushes in flight per app; default 1000.
	APNsConcurrency int
	// FCMConcurrentChunks bounds the SendEach calls in flight per app, each
	// up to 500 messages and 50 requests; default 8.
	FCMConcurrentChunks int
	// FCMLinger is how long a partly filled FCM chunk waits for more
	// messages before it is sent; default 2 ms.
	FCMLinger time.Duration
	// RequestTimeout bounds one gateway request; default 30 s.
	RequestTimeout time.Duration
	// Logger receives connection-level warnings; default slog.Default().
	Logger *slog.Logger
	// TracerProvider makes the gateway spans; default the global one.
	TracerProvider trace.TracerProvider
	// Metrics records each gateway request's duration; nil records
	// nothing.
	Metrics *metrics.Metrics
}

// Gateways implements apps.Gateways.
type Gateways struct {
	cfg       Config
	roots     *x509.CertPool
	tracer    trace.Tracer
	deadlines *sharedDeadline // bounds APNs and FCM requests by cfg.RequestTimeout
	h2        *http.Transport // dials the APNs connections (h2Conn)
	proxy     func(*http.Request) (*url.URL, error)
}

// New returns the gateways for cfg.
func New(cfg Config) (*Gateways, error) {
	if cfg.APNsConnections <= 0 {
		cfg.APNsConnections = 4
	}
	if cfg.APNsConcurrency <= 0 {
		cfg.APNsConcurrency = 1000
	}
	if cfg.FCMConcurrentChunks <= 0 {
		cfg.FCMConcurrentChunks = 8
	}
	if cfg.FCMLinger <= 0 {
		cfg.FCMLinger = 2 * time.Millisecond
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	for name, raw := range map[string]string{"APNs URL": cfg.APNsURL, "APNs sandbox URL": cfg.APNsSandboxURL, "FCM endpoint": cfg.FCMEndpoint} {
		if raw == "" {
			continue
		}
		if u, err := url.Parse(raw); err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("%s %q: want an https URL", name, raw)
		}
	}
	proxy := http.ProxyFromEnvironment
	if cfg.Proxy != "" {
		u, err := url.Parse(cfg.Proxy)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "socks5" && u.Scheme != "socks5h") {
			return nil, fmt.Errorf("gateway proxy %q: want an http:// or socks5:// URL", redactURL(cfg.Proxy))
		}
		proxy = http.ProxyURL(u)
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if len(cfg.ExtraCAPEM) > 0 && !roots.AppendCertsFromPEM(cfg.ExtraCAPEM) {
		return nil, errors.New("gateway CA: no PEM certificate found")
	}
	g := &Gateways{cfg: cfg, roots: roots, tracer: cfg.TracerProvider.Tracer(tracerName), deadlines: newSharedDeadline(cfg.RequestTimeout), proxy: proxy}
	g.h2 = newH2Transport(g.tlsConfig(), proxy)
	return g, nil
}

// redactURL is raw without the password a proxy URL may carry, for errors.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// LoadCAFile reads the PEM certificates of --gateway-ca-file, to trust on
// top of the system roots.
func LoadCAFile(path string) ([]byte, error) {
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gateway CA file: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("gateway CA file %s: no PEM certificate found", path)
	}
	return pemBytes, nil
}

func (g *Gateways) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: g.roots, MinVersion: tls.VersionTLS12}
}

// gatewayDialer dials the gateways. Its connections merge the small frame
// writes of concurrent pushes into fewer system calls (writebatch): without
// it each push costs two TLS records and two write(2) calls of its own,
// which was most of deliverysvc's system time.
var gatewayDialer = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}

func dialBatched(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := gatewayDialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return writebatch.NewConn(c), nil
}

// dialTLSBatched is dialBatched under TLS.
func dialTLSBatched(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
	c, err := dialBatched(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return tc, nil
}

// Check implements apps.Gateways: a live check of the credentials.
func (g *Gateways) Check(ctx context.Context, key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.RequestTimeout)
	defer cancel()
	switch {
	case key.Platform == commonv1.Platform_PLATFORM_APNS && c.APNs != nil:
		return g.checkAPNs(ctx, key, env, c.APNs)
	case key.Platform == commonv1.Platform_PLATFORM_FCM && c.FCM != nil:
		return g.checkFCM(ctx, c.FCM)
	}
	return errors.New("credentials do not match the app's platform")
}

// Open implements apps.Gateways: the app's sender. Connections open lazily.
func (g *Gateways) Open(key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) (apps.Sender, error) {
	switch {
	case key.Platform == commonv1.Platform_PLATFORM_APNS && c.APNs != nil:
		return g.openAPNs(key, env, c.APNs), nil
	case key.Platform == commonv1.Platform_PLATFORM_FCM && c.FCM != nil:
		return g.openFCM(key, c.FCM)
	}
	return nil, errors.New("credentials do not match the app's platform")
}

// cleanNetError drops the request URL from a transport error: for APNs it
// holds the device token, which must not end up in results or logs whole.
func cleanNetError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + ": " + ue.Err.Error()
	}
	return err.Error()
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	var secs int64
	if _, err := fmt.Sscanf(v, "%d", &secs); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
