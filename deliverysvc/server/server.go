// Package server wires deliverysvc together: it opens the service's store and
// registers its gRPC services. The binary (cmd/deliverysvc) and in-process runs
// (pushctl dev, end-to-end tests) both start the service through it.
package server

import (
	"context"
	"flag"
	"log/slog"

	"google.golang.org/grpc"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

// DefaultListen is the service's default gRPC address.
const DefaultListen = "127.0.0.1:7102"

// Config is the service's own configuration, beyond the common flags.
type Config struct {
}

// Spec describes the service to servicekit/service.
func Spec() service.Spec {
	var cfg Config
	return service.Spec{
		Name:          "deliverysvc",
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
	db, err := boltdb.Open(dataDir, "deliverysvc.db")
	if err != nil {
		return nil, err
	}
	deliveryv1.RegisterAppServiceServer(s, deliveryv1.UnimplementedAppServiceServer{})
	deliveryv1.RegisterDeliveryServiceServer(s, deliveryv1.UnimplementedDeliveryServiceServer{})
	deliveryv1.RegisterJourneyServiceServer(s, deliveryv1.UnimplementedJourneyServiceServer{})
	return db.Close, nil
}
