// Package grpcserver is the one gRPC server bootstrap of every pushmesh
// service: health and reflection registered, OpenTelemetry stats handler,
// tenant scoping, panic recovery, per-connection resource limits (concurrent
// streams, keepalive), and a bounded shutdown that flips health to
// NOT_SERVING, drains calls until a deadline, then stops hard and, if some
// handlers still do not return, abandons them.
package grpcserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

// DefaultShutdownTimeout bounds how long Serve waits for in-flight calls
// after its context ends before it stops the server hard.
const DefaultShutdownTimeout = 10 * time.Second

// DefaultAbandonAfter bounds how long Shutdown waits, after the hard stop has
// closed every connection and cancelled every call's context, for handlers
// to return. A handler still running then (stuck in a syscall on a dead
// disk, or ignoring its context) is abandoned so that the process can exit.
const DefaultAbandonAfter = 2 * time.Second

// Per-connection limits and keepalive defaults. Every pushmesh client dials
// through servicekit/grpcclient, whose keepalive pings (every
// grpcclient.KeepaliveTime, with or without calls) stay well above
// DefaultKeepaliveMinTime: a client pinging more often than MinTime is sent
// GOAWAY ENHANCE_YOUR_CALM and disconnected.
const (
	// DefaultMaxConcurrentStreams bounds the calls (unary or streaming) one
	// client connection may have open at once; the client's further calls
	// wait for a free slot. pushmesh's own clients need a handful per
	// connection (deliverybench 4 Send streams, one audience stream per
	// running journey, trackingsvc Ingest streams).
	DefaultMaxConcurrentStreams = 1000
	// DefaultMaxConnectionIdle closes (GOAWAY) a connection that has had no
	// call for this long; the client reconnects on its next call.
	DefaultMaxConnectionIdle = 15 * time.Minute
	// DefaultKeepaliveTime is how long a connection may be silent before
	// the server pings it, and DefaultKeepaliveTimeout how long the server
	// then waits for the ack before closing it: a vanished client's
	// connection and its streams are released within their sum.
	DefaultKeepaliveTime    = time.Minute
	DefaultKeepaliveTimeout = 20 * time.Second
	// DefaultKeepaliveMinTime is the shortest interval between client pings
	// the server tolerates (with or without calls in flight).
	DefaultKeepaliveMinTime = 10 * time.Second
)

// Config configures a Server.
type Config struct {
	// Name of the service, used in logs.
	Name string
	// Listen is the host:port to listen on; "127.0.0.1:0" picks a free port.
	Listen string
	// Logger receives the server's logs; slog.Default() when nil.
	Logger *slog.Logger
	// ShutdownTimeout bounds graceful shutdown; DefaultShutdownTimeout when 0.
	ShutdownTimeout time.Duration
	// AbandonAfter bounds the wait for handlers after the hard stop;
	// DefaultAbandonAfter when 0. Shutdown takes at most ShutdownTimeout +
	// AbandonAfter.
	AbandonAfter time.Duration

	// MaxConcurrentStreams bounds the open calls per client connection;
	// DefaultMaxConcurrentStreams when 0.
	MaxConcurrentStreams uint32
	// MaxConnectionIdle closes connections without calls for this long;
	// DefaultMaxConnectionIdle when 0, never when negative.
	MaxConnectionIdle time.Duration
	// KeepaliveTime and KeepaliveTimeout: ping a silent connection after
	// KeepaliveTime, close it if the ack takes longer than KeepaliveTimeout;
	// DefaultKeepaliveTime and DefaultKeepaliveTimeout when 0.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// KeepaliveMinTime is the shortest client ping interval tolerated;
	// DefaultKeepaliveMinTime when 0. It must not exceed the keepalive time
	// of the clients (grpcclient.KeepaliveTime).
	KeepaliveMinTime time.Duration

	// TLS, when set, makes the listener serve TLS with it (built by
	// servicekit/tlsconfig: TLS 1.2 or later, client certificates required
	// when it has client CAs); nil serves plaintext.
	TLS *tls.Config

	// ServerOptions are appended to the server's own options, so they
	// override the limits above.
	ServerOptions []grpc.ServerOption
}

// withDefaults fills the zero fields of cfg with the defaults.
func (cfg Config) withDefaults() Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.AbandonAfter <= 0 {
		cfg.AbandonAfter = DefaultAbandonAfter
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.MaxConnectionIdle == 0 {
		cfg.MaxConnectionIdle = DefaultMaxConnectionIdle
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = DefaultKeepaliveTime
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if cfg.KeepaliveMinTime <= 0 {
		cfg.KeepaliveMinTime = DefaultKeepaliveMinTime
	}
	return cfg
}

// limitOptions are the per-connection limits and keepalive of cfg.
func (cfg Config) limitOptions() []grpc.ServerOption {
	params := keepalive.ServerParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout}
	if cfg.MaxConnectionIdle > 0 {
		params.MaxConnectionIdle = cfg.MaxConnectionIdle
	}
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.KeepaliveParams(params),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.KeepaliveMinTime,
			PermitWithoutStream: true, // grpcclient pings idle connections too
		}),
	}
}

// Server is a listening gRPC server. Register services on GRPC() before
// calling Serve.
type Server struct {
	cfg    Config
	log    *slog.Logger
	lis    net.Listener
	grpc   *grpc.Server
	health *health.Server
	// running counts the handlers in progress, for the abandon log.
	running atomic.Int64
	// drain is cancelled when the shutdown begins: the watch streams end
	// (EndOnShutdown).
	drain      context.Context
	startDrain context.CancelFunc
}

// New listens on cfg.Listen and builds the server; it does not serve yet, so
// the caller can register services and read Addr first.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %q: %w", cfg.Listen, err)
	}
	log := cfg.Logger.With("service", cfg.Name)
	s := &Server{
		cfg:    cfg,
		log:    log,
		lis:    lis,
		health: health.NewServer(),
	}
	s.drain, s.startDrain = context.WithCancel(context.Background())
	opts := []grpc.ServerOption{
		// Probes are not traced: a load balancer's health check every few
		// seconds, or grpcurl's reflection, would bury the calls in the
		// tracing dashboards.
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithFilter(
			filters.None(filters.HealthCheck(), filters.ServicePrefix("grpc.reflection."))))),
		grpc.ChainUnaryInterceptor(countUnary(&s.running), recoverUnary(log), tenantUnary),
		grpc.ChainStreamInterceptor(countStream(&s.running), recoverStream(log), tenantStream(s.drain)),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(&handshakeLogger{TransportCredentials: credentials.NewTLS(cfg.TLS), log: tlsconfig.NewRefusalLog(log)}))
	}
	opts = append(opts, cfg.limitOptions()...)
	opts = append(opts, cfg.ServerOptions...)
	s.grpc = grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	return s, nil
}

// GRPC returns the underlying server, to register services on.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Health is the health server, for services that report their own state.
func (s *Server) Health() *health.Server { return s.health }

// Serve marks every registered service SERVING and serves until ctx ends or
// the listener fails. On ctx's end it shuts down gracefully: health goes
// NOT_SERVING, in-flight calls get ShutdownTimeout to finish, then the server
// stops hard, and handlers that still have not returned AbandonAfter later
// are abandoned (see Shutdown). It returns nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range s.grpc.GetServiceInfo() {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	s.log.Info("serving", "addr", s.lis.Addr().String(), "tls", tlsMode(s.cfg.TLS))

	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	if s.Shutdown() {
		<-errc // grpc's Serve returns once the server has stopped
	}
	return nil
}

// Shutdown stops the server gracefully within ShutdownTimeout, then hard.
// Streams that only watch (health, reflection, and those whose handlers use
// EndOnShutdown) end at once with Unavailable; a health watch first gets
// NOT_SERVING.
// The hard stop closes every connection, which cancels every call's context;
// handlers still running AbandonAfter later are abandoned (logged) and
// Shutdown returns anyway: it never takes longer than ShutdownTimeout +
// AbandonAfter.
// It reports whether every handler returned.
func (s *Server) Shutdown() bool {
	s.log.Info("shutting down", "timeout", s.cfg.ShutdownTimeout.String())
	s.health.Shutdown() // every service NOT_SERVING, so balancers drain us
	s.startDrain()      // watch streams end: GracefulStop would wait for them
	done := make(chan struct{})
	go func() {
		// GracefulStop returns only once every handler has returned, even
		// after Stop: it may never return if a handler is stuck.
		s.grpc.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
	}
	s.log.Warn("graceful shutdown timed out; stopping hard", "handlers_running", s.running.Load())
	go s.grpc.Stop() // returns once every connection is closed, without waiting for handlers
	abandon := time.NewTimer(s.cfg.AbandonAfter)
	defer abandon.Stop()
	select {
	case <-done:
		return true
	case <-abandon.C:
		s.log.Error("handlers did not return after the hard stop; abandoning them",
			"handlers", s.running.Load(), "waited", s.cfg.AbandonAfter.String())
		return false
	}
}

// countUnary and countStream keep n at the number of handlers running.
func countUnary(n *atomic.Int64) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		n.Add(1)
		defer n.Add(-1)
		return handler(ctx, req)
	}
}

func countStream(n *atomic.Int64) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		n.Add(1)
		defer n.Add(-1)
		return handler(srv, ss)
	}
}
