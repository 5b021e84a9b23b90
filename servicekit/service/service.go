// Package service runs a pushmesh service binary: flags with environment
// fallbacks, structured logs, telemetry, the gRPC server, graceful shutdown.
// Each cmd/<svc>/main.go only describes its service in a Spec.
package service

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/telemetry"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

// Spec describes one service.
type Spec struct {
	// Name of the service and its binary, e.g. "profilesvc". Its upper-cased
	// form prefixes the environment variables backing its flags.
	Name string
	// DefaultListen is the default --listen address.
	DefaultListen string
	// Flags registers the service's own flags, beyond the common ones.
	Flags func(fs *flag.FlagSet)
	// Start opens the service's stores and registers its gRPC services on s.
	// ctx lives as long as the service serves. The returned stop runs after
	// the server has stopped, to close stores and flush work.
	Start func(ctx context.Context, s *grpc.Server, common config.Common, log *slog.Logger) (stop func() error, err error)
}

// Run parses args, starts the service and serves until ctx ends, then shuts
// down gracefully and flushes telemetry. Logs go to stderr. --help prints
// the flags to stderr and returns nil; a bad flag or an argument that is not
// a flag is a one-line error pointing at --help.
func Run(ctx context.Context, spec Spec, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(spec.Name, flag.ContinueOnError)
	var common config.Common
	common.Register(fs, spec.DefaultListen, spec.Name+"-data")
	if spec.Flags != nil {
		spec.Flags(fs)
	}
	// The flag package would print the whole usage after every mistake; the
	// caller prints the error once, and the usage only on request.
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintf(stderr, "Usage of %s:\n", spec.Name)
			fs.PrintDefaults()
			return nil
		}
		return fmt.Errorf("%w (see %s --help)", err, spec.Name)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: %s takes only flags (see %s --help)", fs.Arg(0), spec.Name, spec.Name)
	}
	if err := config.ApplyEnv(fs, spec.Name, os.LookupEnv); err != nil {
		return err
	}
	log, err := common.Logger(stderr)
	if err != nil {
		return err
	}
	// Certificates are read before anything listens: a missing key or a
	// pair that does not match stops the start with the flag's name.
	if common.ServerTLS, err = tlsconfig.NewServer(common.TLS, log.With("service", spec.Name)); err != nil {
		return fmt.Errorf("%w (these flags can also come from %s)", err, config.EnvName(spec.Name, "tls_*"))
	}

	shutdownTelemetry, err := telemetry.Setup(ctx, spec.Name)
	if err != nil {
		return err
	}
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := shutdownTelemetry(flushCtx); err != nil {
			log.Warn("flushing telemetry", "err", err)
		}
	}()

	srv, err := grpcserver.New(common.Server(spec.Name, log))
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("%w: is another %s running? --listen (or %s) chooses another address",
				err, spec.Name, config.EnvName(spec.Name, "listen"))
		}
		return err
	}
	stop, err := spec.Start(ctx, srv.GRPC(), common, log)
	if err != nil {
		return fmt.Errorf("start %s: %w", spec.Name, err)
	}
	stopLogging := context.AfterFunc(ctx, func() {
		if se, ok := signalled(ctx); ok {
			log.Info("shutdown requested; a second SIGINT or SIGTERM exits at once", "signal", se.Signal.String())
		}
	})
	defer stopLogging()
	serveErr := srv.Serve(ctx)
	var stopErr error
	if stop != nil {
		stopErr = stop()
	}
	log.Info("stopped")
	return errors.Join(serveErr, stopErr)
}
