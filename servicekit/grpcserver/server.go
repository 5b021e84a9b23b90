// Package grpcserver is the one gRPC server bootstrap of every pushmesh
// service: health and reflection registered, OpenTelemetry stats handler,
// tenant scoping, panic recovery, and a graceful shutdown that flips health
// to NOT_SERVING, drains calls until a deadline and then stops hard.
package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

// DefaultShutdownTimeout bounds how long Serve waits for in-flight calls
// after its context ends before it stops the server hard.
const DefaultShutdownTimeout = 10 * time.Second

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
	// ServerOptions are appended to the server's own options.
	ServerOptions []grpc.ServerOption
}

// Server is a listening gRPC server. Register services on GRPC() before
// calling Serve.
type Server struct {
	cfg    Config
	log    *slog.Logger
	lis    net.Listener
	grpc   *grpc.Server
	health *health.Server
}

// New listens on cfg.Listen and builds the server; it does not serve yet, so
// the caller can register services and read Addr first.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %q: %w", cfg.Listen, err)
	}
	log := cfg.Logger.With("service", cfg.Name)
	opts := []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.ChainUnaryInterceptor(recoverUnary(log), tenantUnary),
		grpc.ChainStreamInterceptor(recoverStream(log), tenantStream),
	}
	opts = append(opts, cfg.ServerOptions...)
	s := &Server{
		cfg:    cfg,
		log:    log,
		lis:    lis,
		grpc:   grpc.NewServer(opts...),
		health: health.NewServer(),
	}
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
// stops hard. It returns nil after a shutdown caused by ctx.
func (s *Server) Serve(ctx context.Context) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range s.grpc.GetServiceInfo() {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	s.log.Info("serving", "addr", s.lis.Addr().String())

	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	s.Shutdown()
	<-errc
	return nil
}

// Shutdown stops the server gracefully within ShutdownTimeout, then hard.
func (s *Server) Shutdown() {
	s.log.Info("shutting down", "timeout", s.cfg.ShutdownTimeout.String())
	s.health.Shutdown() // every service NOT_SERVING, so balancers drain us
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	timer := time.NewTimer(s.cfg.ShutdownTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		s.log.Warn("graceful shutdown timed out; stopping hard")
		s.grpc.Stop()
		<-done
	}
}
