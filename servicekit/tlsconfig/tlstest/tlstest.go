// Package tlstest writes throw-away certificate authorities and
// certificates as PEM files in a test's temporary directory, for tests that
// run pushmesh over real TLS on loopback: a CA, server certificates for
// 127.0.0.1, ::1 and localhost, and client certificates.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority whose certificate is written to CertFile.
type CA struct {
	// CertFile is the CA certificate, PEM.
	CertFile string
	Cert     *x509.Certificate

	name string
	key  *ecdsa.PrivateKey
	dir  string
}

// Pair is a certificate and its key, written to CertFile and KeyFile.
type Pair struct {
	CertFile, KeyFile string
	Cert              *x509.Certificate
}

// Files is a CA with one server and one client certificate it signed.
type Files struct {
	CA     *CA
	Server Pair
	Client Pair
}

// New writes a CA named name, a server certificate for 127.0.0.1, ::1 and
// localhost, and a client certificate, in a fresh t.TempDir().
func New(t testing.TB, name string) Files {
	t.Helper()
	ca := NewCA(t, name)
	return Files{CA: ca, Server: ca.Server(t, name+"-server"), Client: ca.Client(t, name+"-client")}
}

// NewCA writes a CA certificate named name in a fresh t.TempDir().
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name + " CA", Organization: []string{"pushmesh tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("tlstest: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	dir := t.TempDir()
	ca := &CA{CertFile: filepath.Join(dir, name+"-ca.pem"), Cert: cert, name: name, key: key, dir: dir}
	writeFile(t, ca.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return ca
}

// Pool is a certificate pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Server writes a server certificate named name, valid for 127.0.0.1, ::1
// and localhost, and its key, in the CA's directory.
func (ca *CA) Server(t testing.TB, name string) Pair {
	t.Helper()
	return ca.issue(t, name, x509.ExtKeyUsageServerAuth)
}

// Client writes a client certificate named name and its key in the CA's
// directory.
func (ca *CA) Client(t testing.TB, name string) Pair {
	t.Helper()
	return ca.issue(t, name, x509.ExtKeyUsageClientAuth)
}

func (ca *CA) issue(t testing.TB, name string, usage x509.ExtKeyUsage) Pair {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"pushmesh tests"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("tlstest: certificate %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	p := Pair{CertFile: filepath.Join(ca.dir, name+".pem"), KeyFile: filepath.Join(ca.dir, name+"-key.pem"), Cert: cert}
	writeFile(t, p.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, p.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return p
}

// TLSCertificate loads the pair, for a Go client or server built by hand.
func (p Pair) TLSCertificate(t testing.TB) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
	if err != nil {
		t.Fatalf("tlstest: %v", err)
	}
	return c
}

// Replace rotates dst in place, as cert-manager or a Vault agent does:
// src's certificate and key are written over dst's files (same paths), and
// both files' modification times are moved at least a second past their
// old ones, so that the change shows even on file systems with coarse
// timestamps. It returns dst's paths with src's certificate.
func Replace(t testing.TB, dst, src Pair) Pair {
	t.Helper()
	for _, f := range []struct{ from, to string }{{src.CertFile, dst.CertFile}, {src.KeyFile, dst.KeyFile}} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatalf("tlstest: %v", err)
		}
		old, err := os.Stat(f.to)
		if err != nil {
			t.Fatalf("tlstest: %v", err)
		}
		writeFile(t, f.to, b)
		mod := time.Now()
		if later := old.ModTime().Add(time.Second); mod.Before(later) {
			mod = later
		}
		if err := os.Chtimes(f.to, mod, mod); err != nil {
			t.Fatalf("tlstest: %v", err)
		}
	}
	return Pair{CertFile: dst.CertFile, KeyFile: dst.KeyFile, Cert: src.Cert}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("tlstest: key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatalf("tlstest: serial: %v", err)
	}
	return n
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatalf("tlstest: %v", err)
	}
}
