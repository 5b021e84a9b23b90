package cli

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
)

// serveJourneysTLS serves a JourneyService fake answering ListJourneys over
// mutual TLS with f's server certificate and CA, and returns its address.
func serveJourneysTLS(t *testing.T, f tlstest.Files) string {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	cfg, err := tlsconfig.NewServer(tlsconfig.Server{CertFile: f.Server.CertFile, KeyFile: f.Server.KeyFile, ClientCAFile: f.CA.CertFile}, log)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: "deliverysvc", Listen: "127.0.0.1:0", Logger: log, ShutdownTimeout: time.Second, TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	deliveryv1.RegisterJourneyServiceServer(srv.GRPC(), &fakeJourneys{list: func(context.Context, *deliveryv1.ListJourneysRequest) (*deliveryv1.ListJourneysResponse, error) {
		return &deliveryv1.ListJourneysResponse{}, nil
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv.Addr().String()
}

func TestTLSFlagsReachAMutualTLSService(t *testing.T) {
	f := tlstest.New(t, "mesh")
	other := tlstest.New(t, "other")
	addr := serveJourneysTLS(t, f)
	mtls := []string{"--tls-ca", f.CA.CertFile, "--tls-cert", f.Client.CertFile, "--tls-key", f.Client.KeyFile}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string // in stderr
	}{
		{"flags", nil, mtls, ExitOK, ""},
		{"environment", map[string]string{"PUSHCTL_TLS_CA": f.CA.CertFile, "PUSHCTL_TLS_CERT": f.Client.CertFile, "PUSHCTL_TLS_KEY": f.Client.KeyFile}, nil, ExitOK, ""},
		{"server name", nil, append(mtls, "--tls-server-name", "localhost"), ExitOK, ""},
		{"plaintext", nil, nil, ExitUnavailable,
			"pushctl: cannot reach deliverysvc at " + addr + ": it may serve TLS: give --tls-ca (and --tls-cert, --tls-key if it requires client certificates)"},
		{"no client certificate", nil, []string{"--tls-ca", f.CA.CertFile}, ExitUnavailable,
			"it requires a client certificate (mutual TLS): give --tls-cert and --tls-key"},
		{"client certificate from another CA", nil, []string{"--tls-ca", f.CA.CertFile, "--tls-cert", other.Client.CertFile, "--tls-key", other.Client.KeyFile}, ExitUnavailable,
			"it refuses the client certificate of --tls-cert"},
		{"CA that did not sign the server's certificate", nil, []string{"--tls-ca", other.CA.CertFile, "--tls-cert", f.Client.CertFile, "--tls-key", f.Client.KeyFile}, ExitUnavailable,
			"its certificate is not signed by a CA of --tls-ca"},
		{"name the certificate lacks", nil, append(mtls, "--tls-server-name", "deliverysvc.example"), ExitUnavailable,
			"its certificate does not name the host of the address"},
		{"cert without key", nil, []string{"--tls-ca", f.CA.CertFile, "--tls-cert", f.Client.CertFile}, ExitUsage,
			"pushctl: --tls-cert is set but --tls-key is not"},
		{"key without CA", map[string]string{"PUSHCTL_TLS_CERT": f.Client.CertFile, "PUSHCTL_TLS_KEY": f.Client.KeyFile}, nil, ExitUsage,
			"pushctl: --tls-cert needs --tls-ca"},
		{"missing CA file", nil, []string{"--tls-ca", f.CA.CertFile + ".missing"}, ExitUsage,
			"pushctl: --tls-ca: open " + f.CA.CertFile + ".missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--delivery-addr", addr, "--timeout", "1m"}, tt.args...)
			res := runCLI(t, tt.env, time.Now(), append(args, "journey", "list")...)
			if res.code != tt.code || !strings.Contains(res.stderr, tt.want) {
				t.Errorf("got exit %d, stderr %q; want %d and %q", res.code, res.stderr, tt.code, tt.want)
			}
		})
	}
}

// TLS flags against a plaintext service say so.
func TestTLSFlagsAgainstAPlaintextService(t *testing.T) {
	f := tlstest.New(t, "mesh")
	h := newHarness(t)
	h.journeys.list = func(context.Context, *deliveryv1.ListJourneysRequest) (*deliveryv1.ListJourneysResponse, error) {
		return &deliveryv1.ListJourneysResponse{}, nil
	}
	res := h.run(t, "--tls-ca", f.CA.CertFile, "journey", "list")
	want := "pushctl: cannot reach deliverysvc at " + h.addr + ": it serves plaintext, not TLS: drop --tls-ca, --tls-cert and --tls-key (or unset PUSHCTL_TLS_*)"
	if res.code != ExitUnavailable || !strings.Contains(res.stderr, want) {
		t.Errorf("got exit %d, stderr %q; want %d and %q", res.code, res.stderr, ExitUnavailable, want)
	}
}
