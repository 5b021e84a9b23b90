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

// DefaultGCPercent is the GOGC profilesvc runs with unless the environment
// sets GOGC. A registration allocates about 100 KiB of short-lived garbage
// (mostly bbolt materializing the pages it touches) while the live heap of a
// registration-only service is a few MiB, so with the default of 100 the
// collector ran about 55 times a second at 2,000 registrations/s. Each cycle
// stops the world twice and makes the group committer, the biggest
// allocator, pay mark assists while it holds bbolt's writer lock, which
// every queued registration waits for. 400 runs it about five times less
// often.
const DefaultGCPercent = 400

// DefaultMemoryLimit is the soft memory limit (GOMEMLIMIT) profilesvc runs
// with unless the environment sets GOMEMLIMIT. A CRM import keeps up to
// about 700 MiB live (batches of 100,000 rows and their read-ahead): the
// limit caps where DefaultGCPercent alone would let the heap grow (five times
// the live data), and at 1.5 GiB the import still collects no more often
// than with GOGC=100. Raise it with -import-batch-rows. Rows carrying many
// attributes take up to a hundred times the memory: their batches end at
// -import-batch-bytes (64 MiB of rows) first.
const DefaultMemoryLimit = 1536 << 20

// TuneRuntime applies DefaultGCPercent and DefaultMemoryLimit unless GOGC
// and GOMEMLIMIT are set. The binary calls it first thing; in-process runs
// (pushctl dev, tests) may leave the runtime alone.
func TuneRuntime() {
	service.TuneRuntime(DefaultGCPercent, DefaultMemoryLimit)
}

// Config is the service's own configuration, beyond the common flags. The
// zero value uses the defaults.
type Config struct {
	// ImportBatchRows is how many CRM rows go into one write transaction.
	ImportBatchRows int
	// ImportBatchBytes ends an import batch early when its rows take this
	// much memory (rows with many attributes).
	ImportBatchBytes int
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
	fs.IntVar(&c.ImportBatchBytes, "import-batch-bytes", store.DefaultImportBatchBytes,
		"memory of the rows of one CRM import batch (estimated): a batch of rows with many attributes ends when it reaches this, before -import-batch-rows")
}

// Start opens the store in dataDir and registers the service's APIs on s.
// The returned stop closes what Start opened.
func Start(ctx context.Context, s *grpc.Server, dataDir string, cfg Config, log *slog.Logger) (stop func() error, err error) {
	if cfg.ImportBatchRows < 0 {
		return nil, fmt.Errorf("import-batch-rows must not be negative, got %d", cfg.ImportBatchRows)
	}
	if cfg.ImportBatchBytes < 0 {
		return nil, fmt.Errorf("import-batch-bytes must not be negative, got %d", cfg.ImportBatchBytes)
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
	st, err := store.Open(db, store.Options{ImportBatchRows: cfg.ImportBatchRows, ImportBatchBytes: cfg.ImportBatchBytes})
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	grpcapi.New(st, log, nil).Register(s)
	return func() error {
		return errors.Join(st.Close(), db.Close())
	}, nil
}
