// Package tlsconfig builds the TLS configurations of pushmesh from PEM files:
// the one a service's listener serves (optionally requiring client
// certificates: mutual TLS), and the one a client (deliverysvc dialing its
// peers, pushctl) dials with. It is the only place that does, so that every
// listener and every connection follows the same rules: TLS 1.2 or later,
// flag combinations checked before anything starts, and certificate and key
// files re-read when they change on disk (cert-manager, Vault agent and the
// kubelet rewrite them in place), without a restart.
//
// CA bundles are read once, at start: changing the trusted roots needs a
// restart.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
)

// MinVersion is the oldest TLS version pushmesh speaks or accepts.
const MinVersion = tls.VersionTLS12

// Server names the PEM files a listener serves with. The zero value serves
// plaintext.
type Server struct {
	// CertFile is the certificate (chain, leaf first) and KeyFile its
	// private key: both or neither.
	CertFile, KeyFile string
	// ClientCAFile is a bundle of CA certificates. When set, every client
	// must present a certificate signed by one of them (mutual TLS).
	ClientCAFile string
	// FlagPrefix is how errors name the fields: "--tls" (the default when
	// empty) names CertFile --tls-cert, KeyFile --tls-key and ClientCAFile
	// --tls-client-ca.
	FlagPrefix string
}

// Enabled reports whether any file is given: the listener then serves TLS
// (or Check fails).
func (s Server) Enabled() bool {
	return s.CertFile != "" || s.KeyFile != "" || s.ClientCAFile != ""
}

func (s Server) flag(suffix string) string {
	p := s.FlagPrefix
	if p == "" {
		p = "--tls"
	}
	return p + "-" + suffix
}

// Check reports a combination of fields that cannot work, naming the flags,
// without reading the files.
func (s Server) Check() error {
	switch {
	case s.CertFile != "" && s.KeyFile == "":
		return fmt.Errorf("%s is set but %s is not: give both, or neither for plaintext", s.flag("cert"), s.flag("key"))
	case s.KeyFile != "" && s.CertFile == "":
		return fmt.Errorf("%s is set but %s is not: give both, or neither for plaintext", s.flag("key"), s.flag("cert"))
	case s.ClientCAFile != "" && s.CertFile == "":
		return fmt.Errorf("%s needs %s and %s: client certificates are only asked for over TLS", s.flag("client-ca"), s.flag("cert"), s.flag("key"))
	}
	return nil
}

// Mutual reports whether clients must present a certificate.
func (s Server) Mutual() bool { return s.ClientCAFile != "" }

// NewServer checks s, reads its files and returns the listener's TLS
// configuration, or nil when s is the zero value (plaintext). The
// certificate is re-read when its files change (see the package comment);
// a pair that fails to load then is logged on log and the last good one
// kept. A pair that fails to load now is an error naming the flags.
func NewServer(s Server, log *slog.Logger) (*tls.Config, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	if !s.Enabled() {
		return nil, nil
	}
	pair, err := newKeyPair(s.CertFile, s.KeyFile, s.flag("cert")+"/"+s.flag("key"), log)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: MinVersion,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return pair.get(), nil
		},
	}
	if s.ClientCAFile != "" {
		pool, err := loadPool(s.ClientCAFile, s.flag("client-ca"))
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// WithoutClientCerts returns a copy of a server configuration that does not
// ask for client certificates, for endpoints whose clients have none
// (trackingsvc's HTTP endpoint for mobile SDKs). It serves the same,
// reloaded, certificate. nil stays nil.
func WithoutClientCerts(cfg *tls.Config) *tls.Config {
	if cfg == nil {
		return nil
	}
	c := cfg.Clone()
	c.ClientAuth = tls.NoClientCert
	c.ClientCAs = nil
	return c
}

// Client names the PEM files a client dials with. The zero value dials
// plaintext.
type Client struct {
	// CAFile is a bundle of the CA certificates trusted to sign the
	// servers' certificates. Setting it turns TLS on. (To trust the
	// system's roots, point it at the system bundle, e.g.
	// /etc/ssl/certs/ca-certificates.crt.)
	CAFile string
	// CertFile and KeyFile are the client certificate for mutual TLS: both
	// or neither.
	CertFile, KeyFile string
	// ServerName, when set, is the name verified in the servers'
	// certificates instead of the host of the dialed address (e.g. when
	// that is an IP address the certificates do not list).
	ServerName string
	// FlagPrefix is how errors name the fields: "--tls" (the default when
	// empty) names CAFile --tls-ca, CertFile --tls-cert, KeyFile --tls-key
	// and ServerName --tls-server-name.
	FlagPrefix string
}

// Enabled reports whether any field is given: connections then use TLS (or
// Check fails).
func (c Client) Enabled() bool {
	return c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.ServerName != ""
}

func (c Client) flag(suffix string) string {
	p := c.FlagPrefix
	if p == "" {
		p = "--tls"
	}
	return p + "-" + suffix
}

// Check reports a combination of fields that cannot work, naming the flags,
// without reading the files.
func (c Client) Check() error {
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		return fmt.Errorf("%s is set but %s is not: give both, or neither", c.flag("cert"), c.flag("key"))
	case c.KeyFile != "" && c.CertFile == "":
		return fmt.Errorf("%s is set but %s is not: give both, or neither", c.flag("key"), c.flag("cert"))
	case c.Enabled() && c.CAFile == "":
		// Without a CA the client would either trust the system roots
		// silently or nothing at all; asking for it keeps the choice
		// explicit.
		return fmt.Errorf("%s needs %s: the CA bundle that signed the servers' certificates", c.setFlag(), c.flag("ca"))
	}
	return nil
}

// setFlag names the first field set, for Check's message.
func (c Client) setFlag() string {
	switch {
	case c.CertFile != "":
		return c.flag("cert")
	case c.KeyFile != "":
		return c.flag("key")
	default:
		return c.flag("server-name")
	}
}

// Mutual reports whether the client presents a certificate.
func (c Client) Mutual() bool { return c.CertFile != "" }

// NewClient checks c, reads its files and returns the client's TLS
// configuration, or nil when c is the zero value (plaintext). The client
// certificate is re-read when its files change, as NewServer's.
func NewClient(c Client, log *slog.Logger) (*tls.Config, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	if !c.Enabled() {
		return nil, nil
	}
	pool, err := loadPool(c.CAFile, c.flag("ca"))
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: MinVersion,
		RootCAs:    pool,
		ServerName: c.ServerName,
	}
	var pair *keyPair
	if c.CertFile != "" {
		if pair, err = newKeyPair(c.CertFile, c.KeyFile, c.flag("cert")+"/"+c.flag("key"), log); err != nil {
			return nil, err
		}
	}
	// Asked for a certificate it lacks (or one the server's CAs did not
	// sign), a client would send what it has and learn of the refusal,
	// under TLS 1.3, only once its handshake is over: as a broken pipe or
	// a reset connection, depending on timing. Pushmesh servers ask for
	// client certificates only when they require them, and name the CAs
	// they accept, so the client can stop at once, saying why.
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if pair == nil {
			return nil, fmt.Errorf("the server requires a client certificate (mutual TLS): give %s and %s", c.flag("cert"), c.flag("key"))
		}
		cert := pair.get()
		if err := cri.SupportsCertificate(cert); err != nil {
			return nil, fmt.Errorf("the server does not accept the client certificate %s (%s, issued by %s): %w",
				c.CertFile, cert.Leaf.Subject, cert.Leaf.Issuer, err)
		}
		return cert, nil
	}
	return cfg, nil
}

// loadPool reads a PEM bundle of CA certificates.
func loadPool(file, flag string) (*x509.CertPool, error) {
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s %s: no PEM certificate in the file", flag, file)
	}
	return pool, nil
}
