// Package server wires deliverysvc together: it opens the service's store and
// registers its gRPC services. The binary (cmd/deliverysvc) and in-process runs
// (pushctl dev, end-to-end tests) both start the service through it.
package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/buckets"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/dedupe"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/gateway"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/grpcapi"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/journey"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/outbox"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/remote"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/secret"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/config"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/service"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

// DefaultListen is the service's default gRPC address.
const DefaultListen = "127.0.0.1:7102"

// CredentialsKeyEnv holds the credentials key (base64 of 32 bytes) when no
// key file is given. It is read from the environment only, never from a flag,
// so the key does not show in process listings.
const CredentialsKeyEnv = "DELIVERYSVC_CREDENTIALS_KEY"

// DevKeyFile is the key file --dev-insecure-generate-key writes in the data
// dir.
const DevKeyFile = "credentials.key"

// Config is the service's own configuration, beyond the common flags.
type Config struct {
	// ProfileAddr and TrackingAddr are the gRPC addresses of profilesvc
	// and trackingsvc.
	ProfileAddr  string
	TrackingAddr string
	// PeerTLS are the --peer-tls-* files deliverysvc dials profilesvc and
	// trackingsvc with: TLS when its CA is set, mutual TLS with a client
	// certificate; plaintext when empty.
	PeerTLS tlsconfig.Client

	// APNsURL replaces Apple's hosts (sandbox and production), e.g. the
	// emulator's https://127.0.0.1:PORT; with APNsSandboxURL, production's.
	APNsURL string
	// APNsSandboxURL replaces Apple's sandbox host.
	APNsSandboxURL string
	// FCMEndpoint replaces FCM's endpoint, e.g. https://127.0.0.1:PORT/v1.
	FCMEndpoint string
	// GatewayCAFile is a PEM file of extra CAs to trust for the gateways.
	GatewayCAFile string
	// GatewayCAPEM is the same as PEM bytes, for in-process runs.
	GatewayCAPEM []byte
	// GatewayProxy is the http:// or socks5:// proxy the gateway
	// connections go through; empty: HTTPS_PROXY/NO_PROXY.
	GatewayProxy string

	// CredentialsKeyFile holds the base64 AES-256 key sealing credentials.
	CredentialsKeyFile string
	// CredentialsKey is the base64 key itself (from DELIVERYSVC_CREDENTIALS_KEY
	// for the binary); used when CredentialsKeyFile is empty.
	CredentialsKey string
	// DevInsecureGenerateKey, with neither of the above, uses (and creates
	// on first start) DevKeyFile in the data dir. For development only.
	DevInsecureGenerateKey bool

	// APNsConnections is the number of HTTP/2 connections per APNs app.
	APNsConnections int
	// MaxInFlight bounds the tokens being sent at once across all streams.
	MaxInFlight int
	// MaxInFlightPerStream bounds what one Send stream holds of it (0:
	// half of MaxInFlight), so a client that stops reading its results
	// cannot hold the whole pipeline.
	MaxInFlightPerStream int
	// SendStallTimeout ends a Send stream whose client has not taken a
	// response for this long (0: grpcapi.DefaultStallTimeout).
	SendStallTimeout time.Duration
	// JourneyWindow bounds each journey's messages after its last
	// checkpoint: what a crash can make it send again (0: journey.DefaultMaxWindow).
	JourneyWindow int
	// StopTimeout bounds how long stopping waits for running journeys to
	// checkpoint and record the outcomes of their in-flight messages
	// before it closes the outboxes anyway (0: DefaultStopTimeout). On a
	// healthy disk they are done long before; on a failing one their
	// outcome writes retry until the outboxes close. After the outboxes
	// close it waits at most as long again (and no more than
	// journeyAbandonWait) before it abandons the journeys left, with a log.
	StopTimeout time.Duration
	// ForwardTimeout bounds one batch forwarded to trackingsvc or
	// profilesvc (0: outbox.DefaultDeliverTimeout); a peer that does not
	// answer in time is logged and retried with backoff.
	ForwardTimeout time.Duration
	// MaxSendStreams bounds the Send streams open at once (0:
	// grpcapi.DefaultMaxSendStreams, negative: no bound), MaxWatchStreams
	// the WatchJourney streams (0: grpcapi.DefaultMaxWatchStreams). A
	// stream over its bound is refused with ResourceExhausted.
	MaxSendStreams  int
	MaxWatchStreams int

	// MeterProvider makes the service's metrics (see README "Metrics");
	// nil: the global one, which telemetry.Setup sets up for the binary.
	// In-process runs and tests give their own.
	MeterProvider metric.MeterProvider
}

// DefaultStopTimeout is Config.StopTimeout's default.
const DefaultStopTimeout = 10 * time.Second

// journeyAbandonWait bounds the wait for journeys after the outboxes are
// closed: their outcome writes then give up at once, so what is left is
// their last checkpoint.
const journeyAbandonWait = 5 * time.Second

// DefaultGCPercent is the GOGC deliverysvc runs with unless the environment
// sets GOGC. Every push allocates short-lived garbage (HTTP/2 frames, JSON,
// protobuf) while the live heap stays small, so the default of 100 collects
// very often; 400 trades some tens of megabytes for much less GC CPU.
const DefaultGCPercent = 400

// DefaultMemoryLimit is the soft memory limit (GOMEMLIMIT) deliverysvc runs
// with unless the environment sets GOMEMLIMIT. With DefaultGCPercent alone
// the heap may reach five times the live data; the limit makes the collector
// work harder before the process passes it, so a busy deliverysvc stays
// within a predictable budget while a quiet one keeps the cheap GC pace.
const DefaultMemoryLimit = 160 << 20

// TuneRuntime applies DefaultGCPercent and DefaultMemoryLimit unless GOGC
// and GOMEMLIMIT are set. The binary calls it first thing; in-process runs
// may leave the runtime alone.
func TuneRuntime() {
	service.TuneRuntime(DefaultGCPercent, DefaultMemoryLimit)
}

// Spec describes the service to servicekit/service.
func Spec() service.Spec {
	var cfg Config
	return service.Spec{
		Name:          "deliverysvc",
		DefaultListen: DefaultListen,
		Flags:         cfg.register,
		Start: func(ctx context.Context, s *grpc.Server, common config.Common, log *slog.Logger) (func() error, error) {
			if cfg.CredentialsKey == "" {
				cfg.CredentialsKey = os.Getenv(CredentialsKeyEnv)
			}
			return Start(ctx, s, common.DataDir, cfg, log)
		},
	}
}

func (c *Config) register(fs *flag.FlagSet) {
	fs.StringVar(&c.ProfileAddr, "profile-addr", "127.0.0.1:7101", "profilesvc gRPC address (token resolution and dead-token feedback)")
	fs.StringVar(&c.TrackingAddr, "tracking-addr", "127.0.0.1:7103", "trackingsvc gRPC address (send outcomes)")
	c.PeerTLS.FlagPrefix = "--peer-tls"
	fs.StringVar(&c.PeerTLS.CAFile, "peer-tls-ca", "", "PEM CA bundle that signed profilesvc's and trackingsvc's certificates: when set, deliverysvc dials them over TLS (empty: plaintext)")
	fs.StringVar(&c.PeerTLS.CertFile, "peer-tls-cert", "", "PEM client certificate deliverysvc presents to profilesvc and trackingsvc (mutual TLS); needs --peer-tls-key and --peer-tls-ca; re-read when the file changes")
	fs.StringVar(&c.PeerTLS.KeyFile, "peer-tls-key", "", "PEM private key of --peer-tls-cert")
	fs.StringVar(&c.PeerTLS.ServerName, "peer-tls-server-name", "", "name to verify in profilesvc's and trackingsvc's certificates instead of the host of --profile-addr and --tracking-addr (e.g. when those are IP addresses the certificates do not list)")
	fs.StringVar(&c.APNsURL, "apns-url", "", "APNs base URL replacing Apple's sandbox and production hosts (e.g. an emulator's https://127.0.0.1:PORT); with --apns-sandbox-url, the production host only")
	fs.StringVar(&c.APNsSandboxURL, "apns-sandbox-url", "", "APNs base URL replacing Apple's sandbox host")
	fs.StringVar(&c.FCMEndpoint, "fcm-endpoint", "", "FCM endpoint replacing Google's (e.g. an emulator's https://127.0.0.1:PORT/v1)")
	fs.StringVar(&c.GatewayCAFile, "gateway-ca-file", "", "PEM file of extra CA certificates to trust for the gateways (e.g. the emulators' CA)")
	fs.StringVar(&c.GatewayProxy, "gateway-proxy", "", "http:// (CONNECT) or socks5:// proxy for every connection to APNs and FCM, the OAuth2 token exchange included (default: the one HTTPS_PROXY and NO_PROXY name, if any)")
	fs.StringVar(&c.CredentialsKeyFile, "credentials-key-file", "", "file holding the base64 AES-256 key that encrypts app credentials at rest (or set "+CredentialsKeyEnv+")")
	fs.BoolVar(&c.DevInsecureGenerateKey, "dev-insecure-generate-key", false, "development only: without a key, use (and create on first start) "+DevKeyFile+" in the data dir")
	fs.IntVar(&c.APNsConnections, "apns-connections", 4, "HTTP/2 connections per APNs app")
	fs.IntVar(&c.MaxInFlight, "max-in-flight", delivery.DefaultMaxInFlight, "tokens being sent at once, across all Send streams")
	fs.IntVar(&c.MaxInFlightPerStream, "max-in-flight-per-stream", 0, "tokens one Send stream may have in flight, its unread results included (0: half of --max-in-flight)")
	fs.DurationVar(&c.SendStallTimeout, "send-stall-timeout", grpcapi.DefaultStallTimeout, "end a Send stream whose client has not read a response for this long, giving back what its results hold")
	fs.IntVar(&c.JourneyWindow, "journey-window", journey.DefaultMaxWindow, "messages per journey sent but not yet checkpointed: the most a crash can make a journey send again")
	fs.IntVar(&c.MaxSendStreams, "max-send-streams", grpcapi.DefaultMaxSendStreams, "Send streams open at once; more are refused with RESOURCE_EXHAUSTED (-1: no bound)")
	fs.IntVar(&c.MaxWatchStreams, "max-watch-streams", grpcapi.DefaultMaxWatchStreams, "WatchJourney streams open at once; more are refused with RESOURCE_EXHAUSTED (-1: no bound)")
	fs.DurationVar(&c.StopTimeout, "stop-timeout", DefaultStopTimeout, "on stop, how long to wait for running journeys to checkpoint and record their in-flight outcomes before closing the outboxes anyway")
	fs.DurationVar(&c.ForwardTimeout, "forward-timeout", outbox.DefaultDeliverTimeout, "deadline of one batch of outcomes or token feedback forwarded to trackingsvc or profilesvc; a peer not answering in time is retried with backoff")
}

// credentialsKey finds the key: file, then value, then (development) the
// generated key file in the data dir.
func credentialsKey(dataDir string, cfg Config, log *slog.Logger) ([]byte, error) {
	switch {
	case cfg.CredentialsKeyFile != "":
		if looksLikeAKey(cfg.CredentialsKeyFile) {
			// The key itself was given where its file's path belongs. The
			// errors below quote the path, and this error is printed and
			// logged: never repeat it.
			return nil, errors.New("--credentials-key-file names no file but looks like a key itself: put the key in a file (mode 0600) and give that file's path, or set " +
				CredentialsKeyEnv + "; a key typed on a command line is in shell history and process listings, so prefer a new one for a new data dir")
		}
		key, err := secret.ReadKeyFile(cfg.CredentialsKeyFile)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("--credentials-key-file %s does not exist: restore the key the data was sealed with, or make a new one for a new data dir (`openssl rand -base64 32 > %s`)",
				cfg.CredentialsKeyFile, cfg.CredentialsKeyFile)
		}
		if err != nil {
			return nil, fmt.Errorf("--credentials-key-file: %w", err)
		}
		warnIfKeyFileShared(log, cfg.CredentialsKeyFile)
		return key, nil
	case cfg.CredentialsKey != "":
		key, err := secret.ParseKey([]byte(cfg.CredentialsKey))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", CredentialsKeyEnv, err)
		}
		return key, nil
	case cfg.DevInsecureGenerateKey:
		path := filepath.Join(dataDir, DevKeyFile)
		key, created, err := secret.LoadOrCreateKeyFile(path)
		if err != nil {
			return nil, err
		}
		if created {
			log.Warn("generated a credentials key next to the data it protects: for development only", "file", path)
		}
		return key, nil
	}
	return nil, errors.New("refusing to start without a credentials key: give --credentials-key-file or set " +
		CredentialsKeyEnv + " (base64 of 32 bytes, e.g. `openssl rand -base64 32`), or pass --dev-insecure-generate-key for a development run")
}

// looksLikeAKey reports whether a --credentials-key-file value is a key
// (base64 of 32 bytes) rather than a path. base64's alphabet includes '/',
// so a path can parse too: one that names a file, or a file in a folder
// that exists, is taken for a path.
func looksLikeAKey(path string) bool {
	if _, err := secret.ParseKey([]byte(path)); err != nil {
		return false
	}
	if _, err := os.Stat(path); err == nil {
		return false
	}
	if strings.Contains(path, "/") {
		if _, err := os.Stat(filepath.Dir(path)); err == nil {
			return false
		}
	}
	return true
}

// warnIfKeyFileShared warns when users other than the key file's owner (and
// its group) can read it, or its group can change it: whoever reads it and a
// copy of the data dir can decrypt every app's credentials. Only a warning:
// secrets mounted by orchestrators are often 0644 (Kubernetes' default mode)
// in a folder only the service can reach, and refusing to start would break
// such setups on upgrade. A key readable by its group only (0640: owned by
// root, read through the service's group) is a sound setup and passes.
// Windows reports no Unix permissions, so nothing is checked there.
func warnIfKeyFileShared(log *slog.Logger, path string) {
	if runtime.GOOS == "windows" {
		return
	}
	st, err := os.Stat(path)
	if err != nil {
		return
	}
	if perm := st.Mode().Perm(); perm&0o027 != 0 {
		log.Warn("the credentials key file can be read by other users or changed by its group: anyone who reads it and a copy of the data dir can decrypt every app's credentials; make it mode 0600 (or 0640 for a trusted group)",
			"file", path, "mode", fmt.Sprintf("%04o", perm))
	}
}

// Start opens the store in dataDir and registers the service's APIs on s.
// Background work (outbox forwarding) runs until the returned stop, which
// closes what Start opened.
func Start(ctx context.Context, s *grpc.Server, dataDir string, cfg Config, log *slog.Logger) (stop func() error, err error) {
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i]())
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			_ = closeAll() // what was opened before the failure
		}
	}()

	// The peers' TLS files first: a bad flag stops the start before
	// anything is opened.
	if cfg.PeerTLS.FlagPrefix == "" {
		cfg.PeerTLS.FlagPrefix = "--peer-tls"
	}
	peerTLS, err := tlsconfig.NewClient(cfg.PeerTLS, log)
	if err != nil {
		return nil, err
	}
	key, err := credentialsKey(dataDir, cfg, log)
	if err != nil {
		return nil, err
	}
	box, err := secret.NewBox(key)
	if err != nil {
		return nil, err
	}
	caPEM := cfg.GatewayCAPEM
	if cfg.GatewayCAFile != "" {
		if caPEM, err = gateway.LoadCAFile(cfg.GatewayCAFile); err != nil {
			return nil, err
		}
	}
	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	mx, err := metrics.New(mp)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	gw, err := gateway.New(gateway.Config{
		APNsURL:         cfg.APNsURL,
		APNsSandboxURL:  cfg.APNsSandboxURL,
		FCMEndpoint:     cfg.FCMEndpoint,
		ExtraCAPEM:      caPEM,
		Proxy:           cfg.GatewayProxy,
		APNsConnections: cfg.APNsConnections,
		Logger:          log,
		Metrics:         mx,
	})
	if err != nil {
		return nil, err
	}

	db, err := boltdb.Open(dataDir, "deliverysvc.db")
	if err != nil {
		return nil, err
	}
	closers = append(closers, db.Close)
	if err := buckets.Create(db); err != nil {
		return nil, err
	}
	store, err := apps.OpenStore(db, box)
	if err != nil {
		return nil, err
	}
	appService := apps.NewService(store, gw, log)
	closers = append(closers, func() error { appService.Close(); return nil })

	log.Info("peer connections", "profilesvc", cfg.ProfileAddr, "trackingsvc", cfg.TrackingAddr, "tls", peerTLSMode(cfg.PeerTLS))
	profileConn, err := grpcclient.Dial(cfg.ProfileAddr, grpcclient.TransportCredentials(peerTLS))
	if err != nil {
		return nil, err
	}
	closers = append(closers, profileConn.Close)
	trackingConn, err := grpcclient.Dial(cfg.TrackingAddr, grpcclient.TransportCredentials(peerTLS))
	if err != nil {
		return nil, err
	}
	closers = append(closers, trackingConn.Close)
	profiles := profilev1.NewProfileServiceClient(profileConn)
	tracking := trackingv1.NewTrackingServiceClient(trackingConn)

	deps, backlogs, closeDeps := dependencies(db, profiles, tracking, cfg.ForwardTimeout, log)
	var closeDepsOnce sync.Once
	var closeDepsErr error
	closeOutboxes := func() error {
		closeDepsOnce.Do(func() { closeDepsErr = closeDeps() })
		return closeDepsErr
	}
	closers = append(closers, closeOutboxes)
	deps.Apps = appService

	pipeline := delivery.New(delivery.Config{MaxInFlight: int64(cfg.MaxInFlight), Logger: log, Metrics: mx}, deps)
	deliveryv1.RegisterAppServiceServer(s, &grpcapi.AppServer{Apps: appService, Log: log})
	perStream := cfg.MaxInFlightPerStream
	if perStream <= 0 {
		total := cfg.MaxInFlight
		if total <= 0 {
			total = delivery.DefaultMaxInFlight
		}
		perStream = max(1, total/2)
	}
	deliveryv1.RegisterDeliveryServiceServer(s, &grpcapi.DeliveryServer{
		Pipeline: pipeline, Log: log, MaxInFlightPerStream: int64(perStream), StallTimeout: cfg.SendStallTimeout,
		MaxStreams: cfg.MaxSendStreams,
	})
	journeys := journey.NewManager(journey.Config{MaxWindow: cfg.JourneyWindow, Logger: log, Metrics: mx}, journey.NewStore(db),
		&remote.Audience{Client: profiles, Addr: cfg.ProfileAddr}, appService, pipeline, deps.Recorder)
	closers = append(closers, func() error {
		return stopJourneys(journeys, func() error {
			err := closeOutboxes()
			pipeline.RecordersClosed() // outcome writes still retrying give up now
			return err
		}, cfg.StopTimeout, log)
	})
	if err := journeys.Resume(); err != nil {
		return nil, fmt.Errorf("resume journeys: %w", err)
	}
	deliveryv1.RegisterJourneyServiceServer(s, &grpcapi.JourneyServer{Journeys: journeys, Log: log, MaxWatches: cfg.MaxWatchStreams})
	// Last, so that its closer runs first: the gauges read the store.
	unobserve, err := mx.Observe(metrics.Sources{
		InFlight:      pipeline.InFlight,
		InFlightLimit: pipeline.MaxInFlight(),
		Outboxes:      backlogs,
		SuspendedApps: store.Suspended,
		Journeys:      journeys.CountByState,
	})
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	closers = append(closers, unobserve)
	return closeAll, nil
}

// peerTLSMode describes the peer connections' TLS for the log.
func peerTLSMode(c tlsconfig.Client) string {
	switch {
	case !c.Enabled():
		return "off"
	case c.Mutual():
		return "mutual"
	default:
		return "on"
	}
}

// stopJourneys stops the journeys in phases, so that a failing disk cannot
// hang the stop: the runners are cancelled (they stop sending, and
// checkpoint) and waited for up to timeout, which on a healthy disk lets
// them record every in-flight outcome; then the outboxes are closed, which
// ends the outcome writes still retrying (ErrRecorderClosed); then the
// runners are waited for once more, briefly, and those still running are
// abandoned with a log. They resume from their last checkpoint on the next
// start.
func stopJourneys(journeys *journey.Manager, closeOutboxes func() error, timeout time.Duration, log *slog.Logger) error {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	left := journeys.Stop(ctx)
	cancel()
	if len(left) == 0 {
		return nil
	}
	log.Warn("journeys still waiting for their outcomes to be recorded; closing the outboxes, which ends the writes still retrying",
		"journeys", refIDs(left), "waited", timeout.String())
	err := closeOutboxes()
	wait := min(timeout, journeyAbandonWait)
	ctx, cancel = context.WithTimeout(context.Background(), wait)
	left = journeys.Stop(ctx)
	cancel()
	if len(left) > 0 {
		log.Error("abandoning journeys that did not stop; they resume from their last checkpoint on the next start",
			"journeys", refIDs(left), "waited", (timeout + wait).String())
		err = errors.Join(err, fmt.Errorf("stop: %d journeys abandoned after %s", len(left), timeout+wait))
	}
	return err
}

func refIDs(refs []journey.Ref) []string {
	ids := make([]string, len(refs))
	for i, r := range refs {
		ids[i] = r.Tenant + "/" + r.ID
	}
	slices.Sort(ids)
	return ids
}

// dependencies builds the pipeline's stores and remote links over db: the
// idempotency store, the tracking and feedback outboxes (forwarding
// started; backlogs reads them by name for the metrics) and the profile
// resolver. Apps is left for the caller. close flushes and stops them.
func dependencies(db *bolt.DB, profiles profilev1.ProfileServiceClient, tracking trackingv1.TrackingServiceClient, forwardTimeout time.Duration, log *slog.Logger) (deps delivery.Deps, backlogs map[string]func() int64, close func() error) {
	trackingBox := outbox.New(db, buckets.TrackingOutbox, remote.Ingest(tracking, log), outbox.Config{Name: "tracking", Logger: log, DeliverTimeout: forwardTimeout})
	feedbackBox := outbox.New(db, buckets.FeedbackOutbox, remote.ReportFeedback(profiles, log), outbox.Config{Name: "feedback", Logger: log, DeliverTimeout: forwardTimeout})
	trackingBox.Start()
	feedbackBox.Start()
	dd := dedupe.Open(db, dedupe.Config{Logger: log})
	deps = delivery.Deps{
		Resolver: &remote.Profiles{Client: profiles},
		Recorder: &remote.Tracking{Outbox: trackingBox},
		Feedback: &remote.Feedback{Outbox: feedbackBox},
		Dedupe:   dd,
	}
	backlogs = map[string]func() int64{"tracking": trackingBox.Backlog, "feedback": feedbackBox.Backlog}
	return deps, backlogs, func() error {
		trackingBox.Close()
		feedbackBox.Close()
		return dd.Close()
	}
}
