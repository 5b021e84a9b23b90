// Package config reads a service's configuration from flags, with
// environment variables as fallbacks, and builds its logger. A flag given on
// the command line wins; otherwise PREFIX_FLAG_NAME from the environment
// (upper case, '-' becomes '_'); otherwise the flag's default.
package config

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
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
}

// Register adds the common flags to fs with the service's defaults.
func (c *Common) Register(fs *flag.FlagSet, defaultListen, defaultDataDir string) {
	fs.StringVar(&c.Listen, "listen", defaultListen, "gRPC listen address (host:port)")
	fs.StringVar(&c.DataDir, "data-dir", defaultDataDir, "directory holding the service's bbolt file (created if missing)")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long to drain in-flight calls on shutdown")
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
