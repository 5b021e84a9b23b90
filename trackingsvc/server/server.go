// Package server wires trackingsvc together: it opens the service's store and
// registers its gRPC services. The binary (cmd/trackingsvc) and in-process runs
// (pushctl dev, end-to-end tests) both start the service through it.
package server

import (
	"context"
	"flag"
	"log/slog"

	"google.golang.org/grpc"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

// DefaultListen is the service's default gRPC address.
const DefaultListen = "127.0.0.1:7103"

// Config is the service's own configuration, beyond the common flags.
type Config struct {
}

// Spec describes the service to servicekit/service.
func Spec() service.Spec {
	var cfg Config
	return service.Spec{
		Name:          "trackingsvc",
		DefaultListen: DefaultListen,
		Flags:         cfg.register,
		Start: func(ctx context.Context, s *grpc.Server, common config.Common, log *slog.Logger) (func() error, error) {
			return Start(ctx, s, common.DataDir, cfg, log)
		},
	}
}

func (c *Config) register(fs *flag.FlagSet) {}

// Start opens the store in dataDir and registers the service's APIs on s.
// The returned stop closes what Start opened.
func Start(ctx context.Context, s *grpc.Server, dataDir string, cfg Config, log *slog.Logger) (stop func() error, err error) {
	db, err := boltdb.Open(dataDir, "trackingsvc.db")
	if err != nil {
		return nil, err
	}
	trackingv1.RegisterTrackingServiceServer(s, trackingv1.UnimplementedTrackingServiceServer{})
	return db.Close, nil
}
