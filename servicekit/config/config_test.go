package config

import (
	"flag"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

func TestApplyEnvFlagBeatsEnvBeatsDefault(t *testing.T) {
	env := map[string]string{
		"PROFILESVC_LISTEN":           "0.0.0.0:9000",
		"PROFILESVC_DATA_DIR":         "/from/env",
		"PROFILESVC_SHUTDOWN_TIMEOUT": "3s",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var c Common
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Register(fs, "127.0.0.1:7001", "data")
	if err := fs.Parse([]string{"--data-dir", "/from/flag"}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyEnv(fs, "profilesvc", lookup); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "0.0.0.0:9000" {
		t.Errorf("listen: got %q, want the environment's", c.Listen)
	}
	if c.DataDir != "/from/flag" {
		t.Errorf("data-dir: got %q, want the flag's", c.DataDir)
	}
	if c.ShutdownTimeout != 3*time.Second {
		t.Errorf("shutdown-timeout: got %v, want 3s", c.ShutdownTimeout)
	}
	if c.LogLevel != "info" {
		t.Errorf("log-level: got %q, want the default", c.LogLevel)
	}
}

func TestApplyEnvRejectsBadValue(t *testing.T) {
	var c Common
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Register(fs, ":0", "data")
	_ = fs.Parse(nil)
	err := ApplyEnv(fs, "x", func(k string) (string, bool) { return "soon", k == "X_SHUTDOWN_TIMEOUT" })
	if err == nil {
		t.Fatal("got nil, want an error naming X_SHUTDOWN_TIMEOUT")
	}
}

func TestLoggerRejectsUnknownLevel(t *testing.T) {
	c := Common{LogLevel: "loud", LogFormat: "text"}
	if _, err := c.Logger(nil); err == nil {
		t.Error("got nil, want an error")
	}
}

func TestServerConfigFromFlags(t *testing.T) {
	var c Common
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Register(fs, "127.0.0.1:7001", "data")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	def := c.Server("svc", nil)
	if def.MaxConcurrentStreams != 1000 || def.MaxConnectionIdle != 15*time.Minute || def.KeepaliveMinTime != 10*time.Second ||
		def.KeepaliveTime != time.Minute || def.KeepaliveTimeout != 20*time.Second || def.ShutdownTimeout != 10*time.Second {
		t.Errorf("defaults: got %+v", def)
	}
	env := map[string]string{
		"SVC_GRPC_MAX_CONCURRENT_STREAMS": "64",
		"SVC_GRPC_MAX_CONNECTION_IDLE":    "0",
		"SVC_GRPC_KEEPALIVE_MIN_TIME":     "5s",
	}
	if err := ApplyEnv(fs, "svc", func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	got := c.Server("svc", nil)
	if got.MaxConcurrentStreams != 64 || got.KeepaliveMinTime != 5*time.Second {
		t.Errorf("from the environment: got %+v", got)
	}
	if got.MaxConnectionIdle >= 0 {
		t.Errorf("--grpc-max-connection-idle 0: got MaxConnectionIdle %v, want negative (never)", got.MaxConnectionIdle)
	}
}

func TestTLSFlagsFromTheEnvironment(t *testing.T) {
	var c Common
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Register(fs, "127.0.0.1:7001", "data")
	if err := fs.Parse([]string{"--tls-key", "/flag/key.pem"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"TRACKINGSVC_TLS_CERT":      "/env/cert.pem",
		"TRACKINGSVC_TLS_KEY":       "/env/key.pem",
		"TRACKINGSVC_TLS_CLIENT_CA": "/env/ca.pem",
	}
	if err := ApplyEnv(fs, "trackingsvc", func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	want := tlsconfig.Server{CertFile: "/env/cert.pem", KeyFile: "/flag/key.pem", ClientCAFile: "/env/ca.pem"}
	if c.TLS != want {
		t.Errorf("got %+v, want %+v (the flag wins over the environment)", c.TLS, want)
	}
}
