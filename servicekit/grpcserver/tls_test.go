package grpcserver_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
)

// callTimeout bounds each call of these tests: generous, for a loaded
// 2-core machine. The refusals below must come as Unavailable well before
// it, not as DeadlineExceeded.
const callTimeout = time.Minute

// serveTLS serves the probe (recording each caller's client certificate
// name in callers) with the server configuration tlsconfig builds from s,
// and returns the address and the server's logs.
func serveTLS(t *testing.T, s tlsconfig.Server, callers *sync.Map) (string, *logtest.Buffer) {
	t.Helper()
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	cfg, err := tlsconfig.NewServer(s, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, grpcserver.Config{Logger: log, TLS: cfg}, func(s *grpc.Server) {
		registerProbe(s, &probe{handle: func(ctx context.Context) error {
			if p, ok := peer.FromContext(ctx); ok && callers != nil {
				if info, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(info.State.PeerCertificates) > 0 {
					callers.Store(info.State.PeerCertificates[0].Subject.CommonName, true)
				}
			}
			return nil
		}})
	})
	return srv.Addr().String(), logs
}

func TestTLSServesHealthAndReflection(t *testing.T) {
	f := tlstest.New(t, "mesh")
	for _, tc := range []struct {
		name   string
		server tlsconfig.Server
		client tlsconfig.Client
	}{
		{"TLS", tlsconfig.Server{CertFile: f.Server.CertFile, KeyFile: f.Server.KeyFile},
			tlsconfig.Client{CAFile: f.CA.CertFile}},
		{"mutual TLS", tlsconfig.Server{CertFile: f.Server.CertFile, KeyFile: f.Server.KeyFile, ClientCAFile: f.CA.CertFile},
			tlsconfig.Client{CAFile: f.CA.CertFile, CertFile: f.Client.CertFile, KeyFile: f.Client.KeyFile}},
		{"server name given", tlsconfig.Server{CertFile: f.Server.CertFile, KeyFile: f.Server.KeyFile},
			tlsconfig.Client{CAFile: f.CA.CertFile, ServerName: "localhost"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, logs := serveTLS(t, tc.server, nil)
			conn := grpctest.DialTLS(t, addr, tc.client)
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			var p peer.Peer
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health: got %v, %v, want SERVING", resp, err)
			}
			info, ok := p.AuthInfo.(credentials.TLSInfo)
			if !ok || info.State.Version < tls.VersionTLS12 {
				t.Errorf("peer auth info: got %#v, want TLS 1.2 or later", p.AuthInfo)
			}
			refl, resp2 := listServices(t, ctx, conn)
			_ = refl.CloseSend()
			if len(resp2.GetListServicesResponse().GetService()) == 0 {
				t.Errorf("reflection over TLS: got no services")
			}
			want := `tls=on`
			if tc.server.Mutual() {
				want = `tls=mutual`
			}
			if !strings.Contains(logs.String(), want) {
				t.Errorf("logs: want the serving line to say %s, got:\n%s", want, logs.String())
			}
		})
	}
}

// A client the server does not accept fails at once with Unavailable (not
// at its deadline), saying why, and the server logs the refusal.
func TestMutualTLSRefusesClients(t *testing.T) {
	f := tlstest.New(t, "mesh")
	other := tlstest.New(t, "other")
	addr, logs := serveTLS(t, tlsconfig.Server{CertFile: f.Server.CertFile, KeyFile: f.Server.KeyFile, ClientCAFile: f.CA.CertFile}, nil)
	for _, tc := range []struct {
		name       string
		client     tlsconfig.Client
		clientSays string // in the client's error
		serverSays string // in the server's log
	}{
		{"no certificate", tlsconfig.Client{CAFile: f.CA.CertFile}, "the server requires a client certificate (mutual TLS): give --tls-cert and --tls-key", "hung up during the handshake"},
		{"certificate from another CA", tlsconfig.Client{CAFile: f.CA.CertFile, CertFile: other.Client.CertFile, KeyFile: other.Client.KeyFile},
			"the server does not accept the client certificate", "hung up during the handshake"},
		{"plaintext", tlsconfig.Client{}, "server preface", "does not look like a TLS handshake"},
		{"server's certificate from another CA", tlsconfig.Client{CAFile: other.CA.CertFile, CertFile: f.Client.CertFile, KeyFile: f.Client.KeyFile},
			"certificate signed by unknown authority", "bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := grpctest.DialTLS(t, addr, tc.client)
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			t.Logf("client: %v", err)
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), tc.clientSays) {
				t.Errorf("got %v, want Unavailable saying %q", err, tc.clientSays)
			}
			// The server logs after its side of the handshake returns,
			// which may be just after the client has given up.
			deadline := time.Now().Add(callTimeout)
			for !strings.Contains(logs.String(), tc.serverSays) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if !strings.Contains(logs.String(), "refused a TLS handshake") || !strings.Contains(logs.String(), tc.serverSays) {
				t.Errorf("server logs: want a refused handshake saying %q, got:\n%s", tc.serverSays, logs.String())
			}
		})
	}
}

// A TLS client calling a plaintext server fails at once, saying so.
func TestTLSClientToPlaintextServer(t *testing.T) {
	f := tlstest.New(t, "mesh")
	addr, _ := serveTLS(t, tlsconfig.Server{}, nil)
	conn := grpctest.DialTLS(t, addr, tlsconfig.Client{CAFile: f.CA.CertFile})
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "first record does not look like a TLS handshake") {
		t.Errorf("got %v, want Unavailable saying the server does not speak TLS", err)
	}
}

// Certificates rotated in place on disk are used by new handshakes, on both
// sides, without a restart; connections already open keep theirs.
func TestRotatedCertificatesServedWithoutRestart(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	serverPair, clientPair := ca.Server(t, "server-1"), ca.Client(t, "client-1")
	var callers sync.Map
	addr, logs := serveTLS(t, tlsconfig.Server{CertFile: serverPair.CertFile, KeyFile: serverPair.KeyFile, ClientCAFile: ca.CertFile}, &callers)
	clientCfg, err := tlsconfig.NewClient(tlsconfig.Client{CAFile: ca.CertFile, CertFile: clientPair.CertFile, KeyFile: clientPair.KeyFile}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// call makes a new connection (a new handshake) with the one client
	// configuration, calls the probe, and returns the server's certificate
	// name.
	call := func() string {
		t.Helper()
		conn, err := grpcclient.Dial(addr, grpcclient.TransportCredentials(clientCfg))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		var p peer.Peer
		if err := conn.Invoke(ctx, "/"+probeService+"/Call", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}, grpc.Peer(&p)); err != nil {
			t.Fatalf("call: %v", err)
		}
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].Subject.CommonName
	}
	if got := call(); got != "server-1" {
		t.Fatalf("before rotation: server presented %q, want server-1", got)
	}
	if _, ok := callers.Load("client-1"); !ok {
		t.Fatal("before rotation: the server did not see client-1")
	}

	tlstest.Replace(t, serverPair, ca.Server(t, "server-2"))
	tlstest.Replace(t, clientPair, ca.Client(t, "client-2"))
	// The files are looked at no more than once a second: new handshakes
	// pick the new pair up soon after, however long that takes here.
	deadline := time.Now().Add(callTimeout)
	got := call()
	for got != "server-2" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		got = call()
	}
	if got != "server-2" {
		t.Fatalf("after rotation: server presented %q, want server-2", got)
	}
	sawClient2 := func() bool { _, ok := callers.Load("client-2"); return ok }
	for !sawClient2() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		call()
	}
	if !sawClient2() {
		t.Fatal("after rotation: the server never saw client-2")
	}
	if !strings.Contains(logs.String(), "TLS certificate reloaded") {
		t.Errorf("server logs: want the reload logged, got:\n%s", logs.String())
	}
}
