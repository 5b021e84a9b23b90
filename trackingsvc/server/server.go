// Package server wires trackingsvc together: it opens the service's store and
// registers its gRPC services. The binary (cmd/trackingsvc) and in-process runs
// (pushctl dev, end-to-end tests) both start the service through it.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/service"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/events"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/grpcapi"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
)

// DefaultListen is the service's default gRPC address.
const DefaultListen = "127.0.0.1:7103"

// Config is the service's own configuration, beyond the common flags.
type Config struct {
	// HTTPListen is the address of the HTTP/JSON endpoint for mobile SDKs
	// (POST /v1/events); empty disables it.
	HTTPListen string
	// HTTPListener, when set, serves the HTTP/JSON endpoint instead of
	// HTTPListen (a caller that needs the address of a :0 port listens
	// itself); the service closes it when it stops.
	HTTPListener net.Listener
	// HTTPTLS, when set, makes the HTTP endpoint serve HTTPS with its
	// certificate: the binary passes the gRPC listener's (--tls-cert,
	// --tls-key). Client certificates are never asked for there, even
	// when the gRPC listener requires them (--tls-client-ca): mobile SDKs
	// have none.
	HTTPTLS *tls.Config
	// Retention is how long events are kept after they were received
	// (aggregates stay forever); events with an event time older than this
	// are rejected, and event ids are remembered that long after the event
	// time (on disk past the dedupe window), so a copy of an accepted event
	// is never counted again. Default 30 days.
	Retention time.Duration
	// DedupeWindow is how long an event id is held in memory after its
	// event was received: the same id within the window is a duplicate
	// whatever its event time. After it, the id is looked up on disk, and
	// only for copies whose event time is older than the window (late
	// events; a retry carries the original time). Memory grows with the
	// ids in the window (about 13 bytes each). Default 7 days.
	DedupeWindow time.Duration
	// SweepInterval is how often expired events are removed. Default 1 h.
	SweepInterval time.Duration
	// Now is the clock; time.Now when nil (tests inject their own).
	Now func() time.Time
	// MeterProvider makes the service's metrics (see README "Metrics");
	// nil: the global one, which telemetry.Setup sets up for the binary.
	MeterProvider metric.MeterProvider
}

// Defaults.
const (
	DefaultHTTPListen    = "127.0.0.1:7180"
	DefaultRetention     = store.DefaultRetention
	DefaultDedupeWindow  = store.DefaultDedupeWindow
	DefaultSweepInterval = time.Hour
)

// Spec describes the service to servicekit/service.
func Spec() service.Spec {
	var cfg Config
	return service.Spec{
		Name:          "trackingsvc",
		DefaultListen: DefaultListen,
		Flags:         cfg.register,
		Start: func(ctx context.Context, s *grpc.Server, common config.Common, log *slog.Logger) (func() error, error) {
			cfg.HTTPTLS = common.ServerTLS
			return Start(ctx, s, common.DataDir, cfg, log)
		},
	}
}

func (c *Config) register(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPListen, "http-listen", DefaultHTTPListen, "HTTP/JSON endpoint for mobile SDKs (POST /v1/events); empty disables it. HTTPS with --tls-cert, never asking for client certificates")
	fs.DurationVar(&c.Retention, "retention", DefaultRetention, "how long events are kept after they were received; events with an older event time are refused, and event ids are remembered (on disk past --dedupe-window) that long after the event time; aggregates stay")
	fs.DurationVar(&c.DedupeWindow, "dedupe-window", DefaultDedupeWindow, "how long event ids are held in memory after they were received (about 13 bytes per id); later, copies of events older than the window are still caught from disk, until --retention")
	fs.DurationVar(&c.SweepInterval, "sweep-interval", DefaultSweepInterval, "how often expired events are removed")
}

// Start opens the store in dataDir and registers the service's APIs on s.
// The returned stop closes what Start opened.
func Start(ctx context.Context, s *grpc.Server, dataDir string, cfg Config, log *slog.Logger) (stop func() error, err error) {
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.DedupeWindow <= 0 {
		cfg.DedupeWindow = DefaultDedupeWindow
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	mx, err := events.NewMetrics(cfg.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	db, err := boltdb.Open(dataDir, "trackingsvc.db")
	if err != nil {
		return nil, err
	}
	st, err := store.Open(db, store.Options{DedupeWindow: cfg.DedupeWindow, Retention: cfg.Retention, Now: cfg.Now})
	if err != nil {
		db.Close()
		return nil, err
	}
	log.Info("store open", "remembered_event_ids", st.RememberedIDs(), "dedupe_window", cfg.DedupeWindow, "retention", cfg.Retention)
	api := &grpcapi.Server{
		Ingester: &events.Ingester{Store: st, Retention: cfg.Retention, Now: cfg.Now, Metrics: mx},
		Store:    st,
		Log:      log,
	}
	trackingv1.RegisterTrackingServiceServer(s, api)

	var httpSrv *http.Server
	httpDone := make(chan error, 1)
	if lis := cfg.HTTPListener; lis != nil || cfg.HTTPListen != "" {
		if lis == nil {
			if lis, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
				db.Close()
				return nil, fmt.Errorf("http listen on %q: %w", cfg.HTTPListen, err)
			}
		}
		httpSrv = &http.Server{
			Handler:           api.HTTPHandler(),
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          stdlog.New(&httpErrorLog{log: log, refusals: tlsconfig.NewRefusalLog(log)}, "", 0),
			TLSConfig:         tlsconfig.WithoutClientCerts(cfg.HTTPTLS),
		}
		if httpSrv.TLSConfig != nil {
			log.Info("http endpoint", "addr", lis.Addr().String(), "path", "POST /v1/events", "scheme", "https")
			// The certificate comes from TLSConfig (reloaded as the gRPC
			// listener's), so no files are named here.
			go func() { httpDone <- httpSrv.ServeTLS(lis, "", "") }()
		} else {
			log.Info("http endpoint", "addr", lis.Addr().String(), "path", "POST /v1/events", "scheme", "http")
			go func() { httpDone <- httpSrv.Serve(lis) }()
		}
	}

	sweepCtx, stopSweep := context.WithCancel(ctx)
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		sweepLoop(sweepCtx, st, cfg.SweepInterval, log)
	}()

	return func() error {
		stopSweep()
		<-swept
		var errs []error
		if httpSrv != nil {
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			errs = append(errs, httpSrv.Shutdown(shutdownCtx))
			if err := <-httpDone; !errors.Is(err, http.ErrServerClosed) {
				errs = append(errs, err)
			}
		}
		errs = append(errs, db.Close())
		return errors.Join(errs...)
	}, nil
}

// httpErrorLog writes the HTTP server's error lines as warnings, and the
// TLS handshakes it refuses within tlsconfig.RefusalLog's bound: the SDK
// endpoint faces the internet, where scanners, TCP health checks and
// phones losing their network mid-handshake would write a line each.
type httpErrorLog struct {
	log      *slog.Logger
	refusals *tlsconfig.RefusalLog
}

func (w *httpErrorLog) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		w.refusals.Warn(msg)
	} else {
		w.log.Warn(msg)
	}
	return len(p), nil
}

// sweepLoop removes expired events at start and then every interval until
// ctx ends.
func sweepLoop(ctx context.Context, st *store.Store, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := st.Sweep(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("retention sweep", "err", err)
		case n > 0:
			log.Info("retention sweep", "removed_events", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
