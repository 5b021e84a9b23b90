package service_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
	"github.com/pushmesh/pushmesh/servicekit/service"
	"github.com/pushmesh/pushmesh/servicekit/service/servicetest"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
)

// The TLS flags, here from the environment, make the listener serve mutual
// TLS, and the service's Start sees the configuration (for other endpoints).
func TestRunServesMutualTLSFromTheEnvironment(t *testing.T) {
	f := tlstest.New(t, "mesh")
	t.Setenv("TESTSVC_TLS_CERT", f.Server.CertFile)
	t.Setenv("TESTSVC_TLS_KEY", f.Server.KeyFile)
	t.Setenv("TESTSVC_TLS_CLIENT_CA", f.CA.CertFile)
	addr := proctest.MustFreeAddr(t)
	var serverTLS *tls.Config
	spec := service.Spec{
		Name: "testsvc",
		Start: func(ctx context.Context, s *grpc.Server, common config.Common, log *slog.Logger) (func() error, error) {
			serverTLS = common.ServerTLS
			return nil, nil
		},
	}
	args := []string{"--listen", addr, "--data-dir", t.TempDir()}
	ctx := servicetest.Run(t, spec, args, io.Discard)

	clientTLS, err := tlsconfig.NewClient(tlsconfig.Client{CAFile: f.CA.CertFile, CertFile: f.Client.CertFile, KeyFile: f.Client.KeyFile}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpcclient.Dial(addr, grpcclient.TransportCredentials(clientTLS))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	callCtx, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	// WaitForReady: Run may not be listening yet.
	resp, err := healthpb.NewHealthClient(conn).Check(callCtx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health over mutual TLS: got %v, %v, want SERVING", resp, err)
	}
	if serverTLS == nil || serverTLS.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("Start got ServerTLS %v, want the mutual TLS configuration", serverTLS)
	}
}

// Bad TLS flags stop the start before anything listens, naming the flag.
func TestRunRefusesBadTLSFlags(t *testing.T) {
	a := tlstest.New(t, "a")
	b := tlstest.New(t, "b")
	spec := service.Spec{Name: "testsvc", DefaultListen: "127.0.0.1:0",
		Start: func(context.Context, *grpc.Server, config.Common, *slog.Logger) (func() error, error) {
			t.Error("Start called despite bad TLS flags")
			return nil, nil
		}}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--tls-cert", a.Server.CertFile}, "--tls-cert is set but --tls-key is not"},
		{"key without cert", []string{"--tls-key", a.Server.KeyFile}, "--tls-key is set but --tls-cert is not"},
		{"client CA without cert", []string{"--tls-client-ca", a.CA.CertFile}, "--tls-client-ca needs --tls-cert and --tls-key"},
		{"key of another certificate", []string{"--tls-cert", a.Server.CertFile, "--tls-key", b.Server.KeyFile}, "--tls-cert/--tls-key"},
		{"missing client CA file", []string{"--tls-cert", a.Server.CertFile, "--tls-key", a.Server.KeyFile, "--tls-client-ca", a.CA.CertFile + ".missing"}, "--tls-client-ca"},
	} {
		err := service.Run(context.Background(), spec, append(tc.args, "--data-dir", t.TempDir()), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "TESTSVC_TLS_*") {
			t.Errorf("%s: got %v, want an error naming %s and the environment variables", tc.name, err, tc.want)
		}
	}
}
