// Package config reads a service's configuration from flags, with
// environment variables as fallbacks, and builds its logger. A flag given on
// the command line wins; otherwise PREFIX_FLAG_NAME from the environment
// (upper case, '-' becomes '_'); otherwise the flag's default.
package config

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

// ApplyEnv sets every flag of fs that was not given on the command line from
// the environment variable prefix + "_" + NAME, read through lookup
// (os.LookupEnv in production). Call it after fs.Parse.
func ApplyEnv(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		name := EnvName(prefix, f.Name)
		if v, ok := lookup(name); ok {
			if setErr := fs.Set(f.Name, v); setErr != nil {
				err = fmt.Errorf("environment %s=%q: %w", name, v, setErr)
			}
		}
	})
	return err
}

// EnvName is the environment variable that backs flag name.
func EnvName(prefix, name string) string {
	return strings.ToUpper(prefix + "_" + strings.ReplaceAll(name, "-", "_"))
}

// Common holds the flags every service has.
type Common struct {
	Listen          string
	DataDir         string
	LogLevel        string
	LogFormat       string
	ShutdownTimeout time.Duration
	// GRPC holds the per-connection limits of the gRPC server.
	GRPC GRPCLimits
	// TLS holds the --tls-cert, --tls-key and --tls-client-ca files of the
	// gRPC listener; none serves plaintext.
	TLS tlsconfig.Server
	// ServerTLS is built from TLS by service.Run before it starts the
	// service (nil: plaintext), so that a service serving more than gRPC
	// (trackingsvc's HTTP endpoint) presents the same, reloaded,
	// certificate.
	ServerTLS *tls.Config
}

// GRPCLimits are the gRPC server's per-connection limits and keepalive
// (grpcserver.Config's fields of the same names).
type GRPCLimits struct {
	MaxConcurrentStreams uint
	// MaxConnectionIdle 0 keeps idle connections open forever.
	MaxConnectionIdle time.Duration
	KeepaliveTime     time.Duration
	KeepaliveTimeout  time.Duration
	KeepaliveMinTime  time.Duration
}

// Register adds the common flags to fs with the service's defaults.
func (c *Common) Register(fs *flag.FlagSet, defaultListen, defaultDataDir string) {
	fs.StringVar(&c.Listen, "listen", defaultListen, "gRPC listen address (host:port)")
	fs.StringVar(&c.DataDir, "data-dir", defaultDataDir, "directory holding the service's bbolt file (created if missing)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", grpcserver.DefaultShutdownTimeout,
		fmt.Sprintf("how long to drain in-flight calls on shutdown before stopping hard; handlers still running %v after that are abandoned", grpcserver.DefaultAbandonAfter))
	fs.UintVar(&c.GRPC.MaxConcurrentStreams, "grpc-max-concurrent-streams", grpcserver.DefaultMaxConcurrentStreams,
		"calls (unary or streaming) one client connection may have open at once; more wait for a free slot")
	fs.DurationVar(&c.GRPC.MaxConnectionIdle, "grpc-max-connection-idle", grpcserver.DefaultMaxConnectionIdle,
		"close a client connection without calls for this long (0: never); the client reconnects on its next call")
	fs.DurationVar(&c.GRPC.KeepaliveTime, "grpc-keepalive-time", grpcserver.DefaultKeepaliveTime,
		"ping a client connection silent for this long")
	fs.DurationVar(&c.GRPC.KeepaliveTimeout, "grpc-keepalive-timeout", grpcserver.DefaultKeepaliveTimeout,
		"close a client connection whose ping ack takes longer than this")
	fs.DurationVar(&c.GRPC.KeepaliveMinTime, "grpc-keepalive-min-time", grpcserver.DefaultKeepaliveMinTime,
		"disconnect (GOAWAY ENHANCE_YOUR_CALM) clients pinging more often than this; pushmesh clients ping every 30s")
	fs.StringVar(&c.TLS.CertFile, "tls-cert", "",
		"PEM certificate (chain, leaf first) the gRPC listener serves TLS 1.2+ with; needs --tls-key; re-read when the file changes (empty: plaintext)")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&c.TLS.ClientCAFile, "tls-client-ca", "",
		"PEM CA bundle: gRPC clients must present a certificate signed by it (mutual TLS); needs --tls-cert")
}

// Server is the gRPC server configuration of c for the service name, logging
// to log.
func (c *Common) Server(name string, log *slog.Logger) grpcserver.Config {
	idle := c.GRPC.MaxConnectionIdle
	if idle == 0 {
		idle = -1 // the flag's 0 is "never"; grpcserver.Config's 0 is the default
	}
	streams := uint32(math.MaxUint32)
	if c.GRPC.MaxConcurrentStreams < math.MaxUint32 {
		streams = uint32(c.GRPC.MaxConcurrentStreams)
	}
	return grpcserver.Config{
		Name:                 name,
		Listen:               c.Listen,
		Logger:               log,
		ShutdownTimeout:      c.ShutdownTimeout,
		MaxConcurrentStreams: streams,
		MaxConnectionIdle:    idle,
		KeepaliveTime:        c.GRPC.KeepaliveTime,
		KeepaliveTimeout:     c.GRPC.KeepaliveTimeout,
		KeepaliveMinTime:     c.GRPC.KeepaliveMinTime,
		TLS:                  c.ServerTLS,
	}
}

// Logger builds the service's structured logger writing to w.
func (c *Common) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", c.LogLevel, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
	}
}
