// Package server wires profilesvc together: it opens the service's store and
// registers its gRPC services. The binary (cmd/profilesvc) and in-process runs
// (pushctl dev, end-to-end tests) both start the service through it.
package server

import (
	"context"
	"flag"
	"log/slog"

	"google.golang.org/grpc"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

// DefaultListen is the service's default gRPC address.
const DefaultListen = "127.0.0.1:7101"

// Config is the service's own configuration, beyond the common flags.
type Config struct {
}

// Spec describes the service to servicekit/service.
func Spec() service.Spec {
	var cfg Config
	return service.Spec{
		Name:          "profilesvc",
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
	db, err := boltdb.Open(dataDir, "profilesvc.db")
	if err != nil {
		return nil, err
	}
	profilev1.RegisterProfileServiceServer(s, profilev1.UnimplementedProfileServiceServer{})
	return db.Close, nil
}
