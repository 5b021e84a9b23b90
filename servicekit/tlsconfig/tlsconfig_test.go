package tlsconfig

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig/tlstest"
)

func TestServerCheckNamesTheFlag(t *testing.T) {
	tests := []struct {
		name string
		s    Server
		want string // "" for no error
	}{
		{"plaintext", Server{}, ""},
		{"tls", Server{CertFile: "c", KeyFile: "k"}, ""},
		{"mtls", Server{CertFile: "c", KeyFile: "k", ClientCAFile: "ca"}, ""},
		{"cert without key", Server{CertFile: "c"}, "--tls-cert is set but --tls-key is not"},
		{"key without cert", Server{KeyFile: "k"}, "--tls-key is set but --tls-cert is not"},
		{"client ca alone", Server{ClientCAFile: "ca"}, "--tls-client-ca needs --tls-cert and --tls-key"},
		{"other prefix", Server{CertFile: "c", FlagPrefix: "--admin-tls"}, "--admin-tls-cert is set but --admin-tls-key is not"},
	}
	for _, tt := range tests {
		err := tt.s.Check()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestClientCheckNamesTheFlag(t *testing.T) {
	tests := []struct {
		name string
		c    Client
		want string
	}{
		{"plaintext", Client{}, ""},
		{"tls", Client{CAFile: "ca"}, ""},
		{"mtls", Client{CAFile: "ca", CertFile: "c", KeyFile: "k", ServerName: "profilesvc"}, ""},
		{"cert without key", Client{CAFile: "ca", CertFile: "c", FlagPrefix: "--peer-tls"}, "--peer-tls-cert is set but --peer-tls-key is not"},
		{"key without cert", Client{CAFile: "ca", KeyFile: "k", FlagPrefix: "--peer-tls"}, "--peer-tls-key is set but --peer-tls-cert is not"},
		{"pair without ca", Client{CertFile: "c", KeyFile: "k"}, "--tls-cert needs --tls-ca"},
		{"server name without ca", Client{ServerName: "x"}, "--tls-server-name needs --tls-ca"},
	}
	for _, tt := range tests {
		err := tt.c.Check()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestZeroValuesArePlaintext(t *testing.T) {
	if cfg, err := NewServer(Server{}, nil); cfg != nil || err != nil {
		t.Errorf("NewServer(zero): got %v, %v, want nil, nil", cfg, err)
	}
	if cfg, err := NewClient(Client{}, nil); cfg != nil || err != nil {
		t.Errorf("NewClient(zero): got %v, %v, want nil, nil", cfg, err)
	}
}

func TestBadFilesAreErrorsNamingTheFlag(t *testing.T) {
	a := tlstest.New(t, "a")
	b := tlstest.New(t, "b")
	notPEM := writeTemp(t, "not a certificate")
	tests := []struct {
		name string
		new  func() error
		want string
	}{
		{"key of another certificate", func() error {
			_, err := NewServer(Server{CertFile: a.Server.CertFile, KeyFile: b.Server.KeyFile}, quiet)
			return err
		}, "--tls-cert/--tls-key"},
		{"missing cert file", func() error {
			_, err := NewServer(Server{CertFile: a.Server.CertFile + ".nope", KeyFile: a.Server.KeyFile}, quiet)
			return err
		}, "--tls-cert/--tls-key"},
		{"client ca not PEM", func() error {
			_, err := NewServer(Server{CertFile: a.Server.CertFile, KeyFile: a.Server.KeyFile, ClientCAFile: notPEM}, quiet)
			return err
		}, "--tls-client-ca"},
		{"peer ca missing", func() error {
			_, err := NewClient(Client{CAFile: a.CA.CertFile + ".nope", FlagPrefix: "--peer-tls"}, quiet)
			return err
		}, "--peer-tls-ca"},
		{"peer key of another certificate", func() error {
			_, err := NewClient(Client{CAFile: a.CA.CertFile, CertFile: a.Client.CertFile, KeyFile: b.Client.KeyFile, FlagPrefix: "--peer-tls"}, quiet)
			return err
		}, "--peer-tls-cert/--peer-tls-key"},
	}
	for _, tt := range tests {
		if err := tt.new(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error naming %s", tt.name, err, tt.want)
		}
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.pem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// handshake runs one TLS handshake over loopback between the two
// configurations and returns the server's and the client's errors.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(time.Minute))
		tc := tls.Server(conn, server)
		err = tc.Handshake()
		if err == nil {
			// TLS 1.3 clients learn of a refused certificate on their
			// first read: answer one byte so that they can tell.
			_, err = tc.Write([]byte{1})
		}
		done <- err
	}()
	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	if client.ServerName == "" {
		client = client.Clone()
		client.ServerName = "127.0.0.1" // what grpc takes from the dialed address
	}
	tc := tls.Client(conn, client)
	clientErr = tc.Handshake()
	if clientErr == nil {
		_, clientErr = tc.Read(make([]byte, 1))
	}
	tc.Close()
	return <-done, clientErr
}

func TestMutualTLSHandshakes(t *testing.T) {
	good := tlstest.New(t, "mesh")
	other := tlstest.New(t, "other")
	server, err := NewServer(Server{CertFile: good.Server.CertFile, KeyFile: good.Server.KeyFile, ClientCAFile: good.CA.CertFile}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if server.MinVersion != tls.VersionTLS12 || server.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("server config: got MinVersion %x ClientAuth %v, want TLS 1.2 and RequireAndVerifyClientCert", server.MinVersion, server.ClientAuth)
	}
	client := func(c Client) *tls.Config {
		t.Helper()
		cfg, err := NewClient(c, quiet)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	tests := []struct {
		name   string
		client *tls.Config
		ok     bool
	}{
		{"certificate from the CA", client(Client{CAFile: good.CA.CertFile, CertFile: good.Client.CertFile, KeyFile: good.Client.KeyFile}), true},
		{"no certificate", client(Client{CAFile: good.CA.CertFile}), false},
		{"certificate from another CA", client(Client{CAFile: good.CA.CertFile, CertFile: other.Client.CertFile, KeyFile: other.Client.KeyFile}), false},
		{"TLS 1.1", func() *tls.Config {
			c := client(Client{CAFile: good.CA.CertFile, CertFile: good.Client.CertFile, KeyFile: good.Client.KeyFile})
			c.MinVersion, c.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
			return c
		}(), false},
	}
	for _, tt := range tests {
		serverErr, clientErr := handshake(t, server, tt.client)
		t.Logf("%s: server %v; client %v", tt.name, serverErr, clientErr)
		if tt.ok && (serverErr != nil || clientErr != nil) {
			t.Errorf("%s: got server %v, client %v, want a handshake", tt.name, serverErr, clientErr)
		}
		if !tt.ok && (serverErr == nil || clientErr == nil) {
			t.Errorf("%s: got server %v, client %v, want both to fail", tt.name, serverErr, clientErr)
		}
	}

	// The client refuses a server whose certificate its CA did not sign,
	// and one whose certificate does not name the address (unless told
	// which name to expect).
	otherServer, err := NewServer(Server{CertFile: other.Server.CertFile, KeyFile: other.Server.KeyFile}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, clientErr := handshake(t, otherServer, client(Client{CAFile: good.CA.CertFile})); clientErr == nil {
		t.Error("server certificate from another CA: got a handshake, want the client to refuse it")
	}
	if _, clientErr := handshake(t, WithoutClientCerts(server), client(Client{CAFile: good.CA.CertFile, ServerName: "profilesvc.internal"})); clientErr == nil {
		t.Error("server name the certificate lacks: got a handshake, want the client to refuse it")
	}
	if _, clientErr := handshake(t, WithoutClientCerts(server), client(Client{CAFile: good.CA.CertFile, ServerName: "localhost"})); clientErr != nil {
		t.Errorf("--tls-server-name localhost: got %v, want a handshake", clientErr)
	}
}

func TestWithoutClientCertsServesTheSameCertificateToAnyone(t *testing.T) {
	f := tlstest.New(t, "mesh")
	mtls, err := NewServer(Server{CertFile: f.Server.CertFile, KeyFile: f.Server.KeyFile, ClientCAFile: f.CA.CertFile}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	open := WithoutClientCerts(mtls)
	if mtls.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Error("WithoutClientCerts changed the configuration it was given")
	}
	client, err := NewClient(Client{CAFile: f.CA.CertFile}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if serverErr, clientErr := handshake(t, open, client); serverErr != nil || clientErr != nil {
		t.Errorf("client without a certificate: got server %v, client %v, want a handshake", serverErr, clientErr)
	}
	if WithoutClientCerts(nil) != nil {
		t.Error("WithoutClientCerts(nil): want nil")
	}
}

var quiet = slog.New(slog.DiscardHandler)

// clock is a hand-moved clock for keyPair.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestKeyPairReloadsOnChangeKeepsLastGoodAndLogsOnce(t *testing.T) {
	ca := tlstest.NewCA(t, "mesh")
	first := ca.Server(t, "first")
	second := ca.Server(t, "second")
	third := ca.Server(t, "third")
	var logs logtest.Buffer
	k, err := newKeyPair(first.CertFile, first.KeyFile, "--tls-cert/--tls-key", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Now()}
	k.now, k.checked = c.now, c.t
	serving := func() string { return k.get().Leaf.Subject.CommonName }

	tlstest.Replace(t, first, second)
	if got := serving(); got != "first" {
		t.Errorf("within the check interval: got %q, want first (files looked at no more than once per interval)", got)
	}
	c.t = c.t.Add(CheckInterval)
	if got := serving(); got != "second" {
		t.Errorf("after the interval: got %q, want second", got)
	}

	// A half-done rotation: the new certificate, the old key.
	broken := tlstest.Pair{CertFile: first.CertFile, KeyFile: first.KeyFile}
	tlstest.Replace(t, broken, tlstest.Pair{CertFile: third.CertFile, KeyFile: second.KeyFile})
	for range 3 {
		c.t = c.t.Add(CheckInterval)
		if got := serving(); got != "second" {
			t.Errorf("broken pair on disk: got %q, want second kept", got)
		}
	}
	if n := strings.Count(logs.String(), "cannot reload"); n != 1 {
		t.Errorf("broken pair seen 3 times: got %d warnings, want 1:\n%s", n, logs.String())
	}

	tlstest.Replace(t, first, third) // the rotation completes
	c.t = c.t.Add(CheckInterval)
	if got := serving(); got != "third" {
		t.Errorf("rotation completed: got %q, want third", got)
	}
	if !strings.Contains(logs.String(), "TLS certificate reloaded") {
		t.Errorf("logs: want a reload line, got:\n%s", logs.String())
	}

	// Files gone: the pair in memory is kept.
	if err := os.Remove(first.KeyFile); err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(CheckInterval)
	if got := serving(); got != "third" {
		t.Errorf("key file removed: got %q, want third kept", got)
	}
	if !errors.Is(func() error { _, err := k.stat(); return err }(), os.ErrNotExist) {
		t.Error("stat of a removed key file: want ErrNotExist")
	}
}
