package tlsca

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestLeafVerifiesForLoopbackAndExtraHosts(t *testing.T) {
	ca, err := New("pushmesh.local", "10.1.2.3")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	leaf := ca.ServerTLSConfig().Certificates[0].Leaf
	for _, host := range []string{"127.0.0.1", "::1", "localhost", "pushmesh.local", "10.1.2.3"} {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: ca.Pool()})
		if err != nil {
			t.Errorf("verify for %s: got %v, want nil", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "example.com", Roots: ca.Pool()}); err == nil {
		t.Error("verify for example.com: got nil, want an error")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: x509.NewCertPool()}); err == nil {
		t.Error("verify without the CA: got nil, want an error")
	}
}

func TestTLSConfigs(t *testing.T) {
	ca, err := New()
	if err != nil {
		t.Fatal(err)
	}
	srv := ca.ServerTLSConfig()
	if !slices.Equal(srv.NextProtos, []string{"h2", "http/1.1"}) {
		t.Errorf("got NextProtos %v, want [h2 http/1.1]", srv.NextProtos)
	}
	// Callers may modify what they get: each call returns a fresh config.
	srv.NextProtos = nil
	if got := ca.ServerTLSConfig().NextProtos; len(got) != 2 {
		t.Errorf("after modifying a returned config got NextProtos %v, want it untouched", got)
	}
	if a, b := ca.ClientTLSConfig(), ca.ClientTLSConfig(); a == b || a.RootCAs != ca.Pool() {
		t.Error("ClientTLSConfig: want a fresh config trusting Pool() on each call")
	}
}

func TestWriteCertFile(t *testing.T) {
	ca, err := New()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sub", "ca.pem")
	if err := ca.WriteCertFile(path); err != nil {
		t.Fatalf("WriteCertFile: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("got %q, want a PEM certificate", b)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !cert.IsCA || !cert.Equal(ca.Certificate()) {
		t.Errorf("got certificate %v (err %v), want the CA certificate", cert.Subject, err)
	}
	if string(b) != string(ca.CertPEM()) {
		t.Error("file content differs from CertPEM()")
	}
}
