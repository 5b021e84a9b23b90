package gateway

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// connectProxy is an HTTP CONNECT proxy, as corporate egress proxies are:
// it records every tunnel's target and splices the bytes through.
type connectProxy struct {
	*httptest.Server
	mu      sync.Mutex
	targets []string
}

func startConnectProxy(t *testing.T) *connectProxy {
	t.Helper()
	p := &connectProxy{}
	p.Server = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.Close)
	return p
}

func (p *connectProxy) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	upstream, err := net.Dial("tcp", r.Host)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	p.mu.Lock()
	p.targets = append(p.targets, r.Host)
	p.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	client, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		_ = upstream.Close()
		return
	}
	go func() {
		// Bytes the client sent right behind its CONNECT are buffered.
		if n := buf.Reader.Buffered(); n > 0 {
			early, _ := buf.Reader.Peek(n)
			_, _ = upstream.Write(early)
		}
		_, _ = io.Copy(upstream, client)
		_ = upstream.Close()
	}()
	go func() {
		_, _ = io.Copy(client, upstream)
		_ = client.Close()
	}()
}

// tunnels returns the distinct targets tunnelled to, sorted.
func (p *connectProxy) tunnels() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clone(p.targets)
	slices.Sort(out)
	return slices.Compact(out)
}

// Egress through a proxy is how many production networks reach Apple and
// Google: every gateway connection — APNs pushes and checks, the FCM token
// exchange and sends — must go through the configured one.
func TestGatewaysGoThroughTheProxy(t *testing.T) {
	e := start(t)
	proxy := startConnectProxy(t)
	gw, err := New(Config{
		APNsURL: e.apns.URL(), FCMEndpoint: e.fcm.URL() + "/v1", ExtraCAPEM: e.gw.cfg.ExtraCAPEM,
		FCMLinger: time.Millisecond, Proxy: proxy.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	apnsCreds := e.apnsCreds(t, teamID, keyID, bundleID)
	fcmCreds := e.fcmCreds(t)
	ctx := context.Background()
	if err := gw.Check(ctx, apnsKey, sandbox, apnsCreds); err != nil {
		t.Fatalf("APNs check through the proxy: %v", err)
	}
	if err := gw.Check(ctx, fcmKey, 0, fcmCreds); err != nil {
		t.Fatalf("FCM check through the proxy: %v", err)
	}
	apnsSender := openSender(t, gw, apnsKey, sandbox, apnsCreds)
	fcmSender := openSender(t, gw, fcmKey, 0, fcmCreds)
	for name, a := range map[string]delivery.Attempt{
		"APNs": apnsSender.Send(ctx, []delivery.Push{apnsPush(strings.Repeat("ab", 32))})[0],
		"FCM":  fcmSender.Send(ctx, []delivery.Push{fcmPush("fcm-token-1")})[0],
	} {
		if a.Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
			t.Errorf("%s push through the proxy: %v %s", name, a.Reason, a.Detail)
		}
	}
	if n := len(e.apns.Received()); n != 2 { // the check's push and the real one
		t.Errorf("APNs emulator received %d pushes, want 2", n)
	}
	want := []string{hostPort(e.apns.URL()), hostPort(e.fcm.URL())}
	slices.Sort(want)
	if got := proxy.tunnels(); !slices.Equal(got, want) {
		t.Errorf("proxy tunnelled to %v, want %v (the APNs host, and the FCM host for the token exchange and sends)", got, want)
	}
}

func TestProxyURLIsChecked(t *testing.T) {
	for _, raw := range []string{"ftp://proxy:21", "proxy:3128", "http://"} {
		if _, err := New(Config{Proxy: raw}); err == nil {
			t.Errorf("proxy %q accepted", raw)
		}
	}
	_, err := New(Config{Proxy: "ftp://user:s3cret@proxy:21"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("bad proxy URL with a password: got %v, want an error that does not show the password", err)
	}
	for _, raw := range []string{"http://proxy.internal:3128", "socks5://127.0.0.1:1080", "http://user:pw@proxy:3128"} {
		if _, err := New(Config{Proxy: raw}); err != nil {
			t.Errorf("proxy %q: %v", raw, err)
		}
	}
}
