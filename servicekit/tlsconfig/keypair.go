package tlsconfig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CheckInterval is how often, at most, a handshake looks at the certificate
// and key files for a change: a stat of two files, so a busy listener does
// not pay it per handshake, and a rotated certificate is served within about
// this long.
const CheckInterval = time.Second

// keyPair is a certificate and its key read from two files and read again
// when either file's modification time or size changes. A pair that fails
// to load (a half-written rotation, a key that does not match the
// certificate yet) is logged once and the last good pair kept, so that
// handshakes go on; the next change of the files is tried again.
type keyPair struct {
	certFile, keyFile string
	flags             string // e.g. "--tls-cert/--tls-key", for logs
	log               *slog.Logger
	now               func() time.Time
	interval          time.Duration

	mu      sync.Mutex
	cert    *tls.Certificate
	loaded  fileStamps // the files cert was read from
	checked time.Time  // the last look at the files
	logged  string     // the last failure logged, so each is logged once
}

// fileStamps identify a version of the two files.
type fileStamps struct {
	certMod, keyMod   int64 // modification times, in nanoseconds
	certSize, keySize int64
}

// newKeyPair loads the pair, or fails with an error naming flags.
func newKeyPair(certFile, keyFile, flags string, log *slog.Logger) (*keyPair, error) {
	if log == nil {
		log = slog.Default()
	}
	k := &keyPair{certFile: certFile, keyFile: keyFile, flags: flags, log: log, now: time.Now, interval: CheckInterval}
	stamps, err := k.stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flags, err)
	}
	cert, err := k.load()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flags, err)
	}
	k.cert, k.loaded, k.checked = cert, stamps, k.now()
	k.logLoaded("TLS certificate loaded", cert)
	return k, nil
}

// get returns the pair to present, first reading the files again if they
// changed and the last look is over interval old.
func (k *keyPair) get() *tls.Certificate {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	if now.Sub(k.checked) < k.interval {
		return k.cert
	}
	k.checked = now
	stamps, err := k.stat()
	if err == nil && stamps == k.loaded {
		return k.cert
	}
	var cert *tls.Certificate
	if err == nil {
		cert, err = k.load()
	}
	if err != nil {
		if msg := err.Error(); msg != k.logged {
			k.logged = msg
			k.log.Warn("cannot reload the TLS certificate; still serving the one loaded before",
				"flags", k.flags, "err", err, "serving_not_after", k.cert.Leaf.NotAfter)
		}
		return k.cert
	}
	k.cert, k.loaded, k.logged = cert, stamps, ""
	k.logLoaded("TLS certificate reloaded", cert)
	return k.cert
}

func (k *keyPair) stat() (fileStamps, error) {
	c, err := os.Stat(k.certFile)
	if err != nil {
		return fileStamps{}, err
	}
	kf, err := os.Stat(k.keyFile)
	if err != nil {
		return fileStamps{}, err
	}
	return fileStamps{
		certMod: c.ModTime().UnixNano(), keyMod: kf.ModTime().UnixNano(),
		certSize: c.Size(), keySize: kf.Size(),
	}, nil
}

// load reads and parses the pair; tls.LoadX509KeyPair also checks that the
// key matches the certificate and (since Go 1.23) fills Leaf.
func (k *keyPair) load() (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(k.certFile, k.keyFile)
	if err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", k.certFile, k.keyFile, err)
	}
	if cert.Leaf == nil { // GODEBUG=x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse %s: %w", k.certFile, err)
		}
	}
	return &cert, nil
}

// logLoaded logs the certificate now served; an expired one as a warning,
// since every peer verifying it will refuse the handshake.
func (k *keyPair) logLoaded(msg string, cert *tls.Certificate) {
	level := slog.LevelInfo
	if k.now().After(cert.Leaf.NotAfter) {
		level = slog.LevelWarn
		msg += " (expired: peers will refuse it)"
	}
	k.log.Log(context.Background(), level, msg, "flags", k.flags, "file", k.certFile,
		"subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
}
