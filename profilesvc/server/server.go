// Package server wires profilesvc together: it opens the service's store and
// registers its gRPC services. The binary (cmd/profilesvc) and in-process runs
// (pushctl dev, end-to-end tests) both start the service through it.
package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"

	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/profilesvc/internal/grpcapi"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

// DefaultListen is the service's default gRPC address.
const DefaultListen = "127.0.0.1:7101"

// DBFile is the name of the service's bbolt file inside its data dir.
const DBFile = "profilesvc.db"

// initialMmapSize maps 4 GiB ahead (1 GiB on 32-bit platforms): a CRM
// import grows the file by hundreds of MiB, and every remap on the way stalls
// the import's writer (see boltdb.Options).
const initialMmapSize = 1 << (28 + strconv.IntSize/16)

// Config is the service's own configuration, beyond the common flags. The
// zero value uses the defaults.
type Config struct {
	// ImportBatchRows is how many CRM rows go into one write transaction.
	ImportBatchRows int
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

func (c *Config) register(fs *flag.FlagSet) {
	fs.IntVar(&c.ImportBatchRows, "import-batch-rows", store.DefaultImportBatchRows,
		"CRM import rows per write transaction: bigger is faster, smaller holds the writer lock for less time")
}

// Start opens the store in dataDir and registers the service's APIs on s.
// The returned stop closes what Start opened.
func Start(ctx context.Context, s *grpc.Server, dataDir string, cfg Config, log *slog.Logger) (stop func() error, err error) {
	if cfg.ImportBatchRows < 0 {
		return nil, fmt.Errorf("import-batch-rows must not be negative, got %d", cfg.ImportBatchRows)
	}
	if log == nil {
		log = slog.Default()
	}
	db, err := boltdb.OpenWith(dataDir, DBFile, boltdb.Options{
		InitialMmapSize: initialMmapSize,
		HashmapFreelist: true,
		NoFreelistSync:  true,
	})
	if err != nil {
		return nil, err
	}
	st, err := store.Open(db, store.Options{ImportBatchRows: cfg.ImportBatchRows})
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	grpcapi.New(st, log).Register(s)
	return func() error {
		return errors.Join(st.Close(), db.Close())
	}, nil
}
