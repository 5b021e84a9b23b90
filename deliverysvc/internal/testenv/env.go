package testenv

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// Options configure an Env. The zero value is usable.
type Options struct {
	// DataDir is deliverysvc's data dir; default a new temporary dir,
	// removed by Close.
	DataDir string
	// MaxInFlight is passed to deliverysvc (0: its default).
	MaxInFlight int
	// MaxInFlightPerStream and SendStallTimeout are passed to deliverysvc
	// (0: its defaults).
	MaxInFlightPerStream int
	SendStallTimeout     time.Duration
	// APNsConnections is passed to deliverysvc (0: its default).
	APNsConnections int
	// FCMQuotaPerMinute is the FCM emulator's quota (0: FCM's default).
	FCMQuotaPerMinute int
	// Logger receives deliverysvc's logs; default discard.
	Logger *slog.Logger
	// MeterProvider receives deliverysvc's metrics (e.g. a
	// metrictest.New one); default the global provider.
	MeterProvider metric.MeterProvider
}

// Env is deliverysvc with its gateways and neighbours, all in-process.
type Env struct {
	CA   *tlsca.CA
	APNs *apns.Server
	FCM  *fcm.Server

	Profiles *FakeProfiles
	Feedback *Feedback
	Tracking *FakeTracking
	Events   *Events

	// Config is deliverysvc's configuration (addresses, emulators, key).
	Config  server.Config
	DataDir string
	Log     *slog.Logger

	// Conn reaches deliverysvc; Apps and Delivery are its clients.
	Conn     *grpc.ClientConn
	Apps     deliveryv1.AppServiceClient
	Delivery deliveryv1.DeliveryServiceClient

	ownDir   bool
	closers  []func() error
	svcMu    sync.Mutex
	svcClose func() error
}

// New starts the emulators, the fakes and deliverysvc.
func New(opts Options) (_ *Env, err error) {
	e := &Env{Log: opts.Logger}
	if e.Log == nil {
		e.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.CA, err = tlsca.New(); err != nil {
		return nil, err
	}
	if e.APNs, err = apns.Start(apns.Options{CA: e.CA}); err != nil {
		return nil, err
	}
	e.closers = append(e.closers, e.APNs.Close)
	if e.FCM, err = fcm.Start(fcm.Options{CA: e.CA, QuotaPerMinute: opts.FCMQuotaPerMinute}); err != nil {
		return nil, err
	}
	e.closers = append(e.closers, e.FCM.Close)

	e.Feedback = NewFeedback()
	e.Profiles = &FakeProfiles{ReportTokenFeedbackFunc: e.Feedback.Report}
	e.Events = NewEvents()
	e.Tracking = &FakeTracking{IngestFunc: e.Events.Ingest}
	profileAddr, err := e.serve("profilesvc-fake", func(s *grpc.Server) { profilev1.RegisterProfileServiceServer(s, e.Profiles) })
	if err != nil {
		return nil, err
	}
	trackingAddr, err := e.serve("trackingsvc-fake", func(s *grpc.Server) { trackingv1.RegisterTrackingServiceServer(s, e.Tracking) })
	if err != nil {
		return nil, err
	}

	e.DataDir = opts.DataDir
	if e.DataDir == "" {
		if e.DataDir, err = os.MkdirTemp("", "deliverysvc-test-"); err != nil {
			return nil, err
		}
		e.ownDir = true
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	e.Config = server.Config{
		ProfileAddr:     profileAddr,
		TrackingAddr:    trackingAddr,
		APNsURL:         e.APNs.URL(),
		FCMEndpoint:     e.FCM.URL() + "/v1",
		GatewayCAPEM:    e.CA.CertPEM(),
		CredentialsKey:  base64.StdEncoding.EncodeToString(key),
		APNsConnections: opts.APNsConnections,
		MaxInFlight:     opts.MaxInFlight,

		MaxInFlightPerStream: opts.MaxInFlightPerStream,
		SendStallTimeout:     opts.SendStallTimeout,
		MeterProvider:        opts.MeterProvider,
	}
	if err := e.StartService(); err != nil {
		return nil, err
	}
	return e, nil
}

// Start is New for tests: it fails t on error and closes with t.Cleanup.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	e, err := New(opts)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(e.Close)
	return e
}

// serve runs a gRPC server with the production bootstrap and returns its
// address.
func (e *Env) serve(name string, register func(*grpc.Server)) (string, error) {
	srv, err := grpcserver.New(grpcserver.Config{Name: name, Listen: "127.0.0.1:0", Logger: e.Log, ShutdownTimeout: 2 * time.Second})
	if err != nil {
		return "", err
	}
	register(srv.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	e.closers = append(e.closers, func() error { cancel(); return <-done })
	return srv.Addr().String(), nil
}

// StartService starts deliverysvc (again, after StopService) on the same
// data dir and configuration, and points Conn, Apps and Delivery at it.
func (e *Env) StartService() error {
	e.svcMu.Lock()
	defer e.svcMu.Unlock()
	if e.svcClose != nil {
		return errors.New("testenv: deliverysvc is already running")
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: "deliverysvc", Listen: "127.0.0.1:0", Logger: e.Log, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop, err := server.Start(ctx, srv.GRPC(), e.DataDir, e.Config, e.Log)
	if err != nil {
		cancel()
		return fmt.Errorf("deliverysvc: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	conn, err := grpcclient.Dial(srv.Addr().String())
	if err != nil {
		cancel()
		<-done
		return errors.Join(err, stop())
	}
	e.Conn = conn
	e.Apps = deliveryv1.NewAppServiceClient(conn)
	e.Delivery = deliveryv1.NewDeliveryServiceClient(conn)
	e.svcClose = func() error {
		conn.Close()
		cancel()
		serveErr := <-done
		return errors.Join(serveErr, stop())
	}
	return nil
}

// StopService stops deliverysvc gracefully, as a restart would.
func (e *Env) StopService() error {
	e.svcMu.Lock()
	defer e.svcMu.Unlock()
	if e.svcClose == nil {
		return nil
	}
	err := e.svcClose()
	e.svcClose = nil
	return err
}

// Close stops everything and removes a temporary data dir.
func (e *Env) Close() {
	_ = e.StopService()
	for i := len(e.closers) - 1; i >= 0; i-- {
		_ = e.closers[i]()
	}
	if e.ownDir {
		os.RemoveAll(e.DataDir)
	}
}
