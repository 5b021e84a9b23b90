// Package tlsca creates a throw-away certificate authority and a loopback
// server certificate, so that the gateway emulators can speak real TLS (and so
// HTTP/2) to clients that verify certificates normally: no client ever needs
// InsecureSkipVerify.
//
// The CA lives in memory. Go callers hand Pool() or ClientTLSConfig() to their
// clients; other callers write the CA certificate with WriteCertFile and point
// their client (curl --cacert, SSL_CERT_FILE, …) at it.
package tlsca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/net/http2"
)

// CA is an in-memory certificate authority plus one leaf certificate that
// covers 127.0.0.1, ::1, localhost and any extra hosts given to New. It is safe
// for concurrent use: it never changes after New returns.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	pool    *x509.CertPool
	leaf    tls.Certificate
}

// New generates a CA (ECDSA P-256, valid for one year, backdated one hour to
// tolerate clock skew) and a server certificate signed by it. The server
// certificate is valid for 127.0.0.1, ::1 and localhost, plus extraHosts
// (IP addresses or DNS names).
func New(extraHosts ...string) (*CA, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tlsca: generate CA key: %w", err)
	}
	notBefore := time.Now().Add(-time.Hour)
	notAfter := notBefore.Add(366 * 24 * time.Hour)

	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "pushmesh emulator CA", Organization: []string{"pushmesh"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("tlsca: create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("tlsca: parse CA certificate: %w", err)
	}

	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tlsca: generate server key: %w", err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "pushmesh emulator", Organization: []string{"pushmesh"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
	}
	for _, h := range extraHosts {
		if ip := net.ParseIP(h); ip != nil {
			leafTmpl.IPAddresses = append(leafTmpl.IPAddresses, ip)
		} else if h != "" {
			leafTmpl.DNSNames = append(leafTmpl.DNSNames, h)
		}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("tlsca: create server certificate: %w", err)
	}
	leafCert, err := x509.ParseCertificate(leafDER)
	if err != nil {
		return nil, fmt.Errorf("tlsca: parse server certificate: %w", err)
	}

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &CA{
		cert:    caCert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pool:    pool,
		// The chain carries the CA too, which costs a few hundred bytes per
		// handshake and spares clients that only know the CA file any
		// intermediate lookups.
		leaf: tls.Certificate{
			Certificate: [][]byte{leafDER, caDER},
			PrivateKey:  leafKey,
			Leaf:        leafCert,
		},
	}, nil
}

func randomSerial() *big.Int {
	// 128 random bits; rand.Int only fails if the system RNG is broken, in
	// which case key generation above has already failed.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic("tlsca: system random number generator failed: " + err.Error())
	}
	return n
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the CA certificate, PEM encoded. The caller may keep the
// slice but must not modify it.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// Pool returns a certificate pool holding only the CA certificate. The caller
// must not modify it.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// WriteCertFile writes the CA certificate as PEM to path (mode 0644, parent
// directories created as needed), through a temporary file and a rename so a
// reader never sees half a file.
func (ca *CA) WriteCertFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("tlsca: create directory for %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tlsca-*.pem")
	if err != nil {
		return fmt.Errorf("tlsca: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(ca.certPEM); err != nil {
		tmp.Close()
		return fmt.Errorf("tlsca: write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("tlsca: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("tlsca: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("tlsca: write %s: %w", path, err)
	}
	return nil
}

// ServerTLSConfig returns a fresh TLS configuration for a server presenting
// the leaf certificate. It offers HTTP/2 first ("h2") and HTTP/1.1 second, so
// curl and browsers can reach the admin endpoints too.
func (ca *CA) ServerTLSConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{ca.leaf},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
}

// ClientTLSConfig returns a fresh TLS configuration that trusts only this CA.
func (ca *CA) ClientTLSConfig() *tls.Config {
	return &tls.Config{
		RootCAs:    ca.pool,
		MinVersion: tls.VersionTLS12,
	}
}

// HTTP2Client returns an HTTP client that speaks HTTP/2 only (like apns2's own
// client) and trusts only this CA. Assign it to apns2.Client.HTTPClient.
func (ca *CA) HTTP2Client() *http.Client {
	return &http.Client{
		Transport: &http2.Transport{
			TLSClientConfig: ca.ClientTLSConfig(),
			// apns2 pings idle connections after 15 s; keep the same so a
			// dropped connection is noticed the same way.
			ReadIdleTimeout: 15 * time.Second,
		},
		Timeout: 60 * time.Second,
	}
}

// HTTPClient returns an HTTP client whose transport trusts only this CA and
// negotiates HTTP/2 when the server offers it (as Google's client libraries
// do). Wrap its Transport with oauth2 for FCM.
func (ca *CA) HTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:     ca.ClientTLSConfig(),
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 100,
			IdleConnTimeout:     90 * time.Second,
		},
		Timeout: 60 * time.Second,
	}
}
