// Package mesh runs the whole of pushmesh in one process: the APNs and FCM
// gateway emulators, profilesvc, trackingsvc and deliverysvc, each on its own
// loopback gRPC server started through its public server package, exactly as
// the binaries start them. `pushctl dev` and the end-to-end tests use it.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	deliveryserver "github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	profileserver "github.com/pushmesh/pushmesh/profilesvc/server"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	trackingserver "github.com/pushmesh/pushmesh/trackingsvc/server"
)

// Options configures a mesh. Every address defaults to 127.0.0.1:0 (a free
// port).
type Options struct {
	// DataDir holds one folder per service.
	DataDir string
	// Listen addresses of the services and emulators.
	ProfileListen, DeliveryListen, TrackingListen string
	APNsListen, FCMListen                         string
	// TrackingHTTPListen is trackingsvc's HTTP/JSON endpoint for mobile
	// SDKs (POST /v1/events); empty leaves it off.
	TrackingHTTPListen string
	// Logger receives the services' logs; discarded when nil.
	Logger *slog.Logger
	// Seed makes the emulators' fault injection reproducible.
	Seed int64
}

// Mesh is a running pushmesh.
type Mesh struct {
	APNs *apns.Server
	FCM  *fcm.Server
	CA   *tlsca.CA

	ProfileAddr, DeliveryAddr, TrackingAddr string
	// TrackingHTTPAddr is trackingsvc's HTTP/JSON endpoint; empty when off.
	TrackingHTTPAddr string

	Profiles profilev1.ProfileServiceClient
	Apps     deliveryv1.AppServiceClient
	Delivery deliveryv1.DeliveryServiceClient
	Journeys deliveryv1.JourneyServiceClient
	Tracking trackingv1.TrackingServiceClient

	closers []func() error // in start order; Close runs them backwards
}

// Start starts the emulators and the three services. Close stops them.
// When one of them cannot start (a busy port, a locked data file) Start
// stops those already started and returns the error, which names the
// component and, for a busy port, the address.
func Start(ctx context.Context, opts Options) (*Mesh, error) {
	m := &Mesh{}
	if err := m.start(ctx, opts); err != nil {
		if cerr := m.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("stopping what had started: %w", cerr))
		}
		return nil, err
	}
	return m, nil
}

// start starts everything in order, registering each closer as soon as its
// component runs, so that Close undoes a partial start.
func (m *Mesh) start(ctx context.Context, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var err error
	if m.CA, err = tlsca.New(); err != nil {
		return err
	}
	if m.APNs, err = apns.Start(apns.Options{Addr: opts.APNsListen, CA: m.CA, Seed: opts.Seed, Logger: log}); err != nil {
		return fmt.Errorf("apns emulator: %w", err)
	}
	m.closers = append(m.closers, m.APNs.Close)
	if m.FCM, err = fcm.Start(fcm.Options{Addr: opts.FCMListen, CA: m.CA, Seed: opts.Seed, Logger: log}); err != nil {
		return fmt.Errorf("fcm emulator: %w", err)
	}
	m.closers = append(m.closers, m.FCM.Close)

	// profilesvc and trackingsvc first: deliverysvc talks to both.
	profile, err := m.serve(ctx, "profilesvc", opts.ProfileListen, log, func(ctx context.Context, s *grpc.Server, log *slog.Logger) (func() error, error) {
		return profileserver.Start(ctx, s, filepath.Join(opts.DataDir, "profilesvc"), profileserver.Config{}, log)
	})
	if err != nil {
		return err
	}
	m.ProfileAddr = profile
	tracking, err := m.serve(ctx, "trackingsvc", opts.TrackingListen, log, func(ctx context.Context, s *grpc.Server, log *slog.Logger) (func() error, error) {
		var cfg trackingserver.Config
		if opts.TrackingHTTPListen != "" {
			lis, err := net.Listen("tcp", opts.TrackingHTTPListen)
			if err != nil {
				return nil, fmt.Errorf("http listen on %q: %w", opts.TrackingHTTPListen, err)
			}
			cfg.HTTPListener = lis
			m.TrackingHTTPAddr = lis.Addr().String()
		}
		stop, err := trackingserver.Start(ctx, s, filepath.Join(opts.DataDir, "trackingsvc"), cfg, log)
		if err != nil && cfg.HTTPListener != nil {
			cfg.HTTPListener.Close()
		}
		return stop, err
	})
	if err != nil {
		return err
	}
	m.TrackingAddr = tracking
	delivery, err := m.serve(ctx, "deliverysvc", opts.DeliveryListen, log, func(ctx context.Context, s *grpc.Server, log *slog.Logger) (func() error, error) {
		return deliveryserver.Start(ctx, s, filepath.Join(opts.DataDir, "deliverysvc"), deliveryserver.Config{
			ProfileAddr:            m.ProfileAddr,
			TrackingAddr:           m.TrackingAddr,
			APNsURL:                m.APNs.URL(),
			FCMEndpoint:            m.FCM.URL() + "/v1",
			GatewayCAPEM:           m.CA.CertPEM(),
			DevInsecureGenerateKey: true,
			APNsConnections:        4,
			MaxInFlight:            10_000,
		}, log)
	})
	if err != nil {
		return err
	}
	m.DeliveryAddr = delivery

	for _, c := range []struct {
		addr string
		set  func(*grpc.ClientConn)
	}{
		{m.ProfileAddr, func(c *grpc.ClientConn) { m.Profiles = profilev1.NewProfileServiceClient(c) }},
		{m.DeliveryAddr, func(c *grpc.ClientConn) {
			m.Apps = deliveryv1.NewAppServiceClient(c)
			m.Delivery = deliveryv1.NewDeliveryServiceClient(c)
			m.Journeys = deliveryv1.NewJourneyServiceClient(c)
		}},
		{m.TrackingAddr, func(c *grpc.ClientConn) { m.Tracking = trackingv1.NewTrackingServiceClient(c) }},
	} {
		conn, err := grpcclient.Dial(c.addr)
		if err != nil {
			return err
		}
		m.closers = append(m.closers, conn.Close)
		c.set(conn)
	}
	return nil
}

type startFunc func(ctx context.Context, s *grpc.Server, log *slog.Logger) (func() error, error)

// serve starts one service on its own gRPC server and registers its
// shutdown: graceful stop of the server, then the service's own stop.
func (m *Mesh) serve(ctx context.Context, name, listen string, log *slog.Logger, start startFunc) (string, error) {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	// grpcserver names the service in its own logs; the service's get it here.
	srv, err := grpcserver.New(grpcserver.Config{Name: name, Listen: listen, Logger: log, ShutdownTimeout: 5 * time.Second})
	log = log.With("service", name)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	svcCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop, err := start(svcCtx, srv.GRPC(), log)
	if err != nil {
		cancel()
		srv.Shutdown()
		return "", fmt.Errorf("start %s: %w", name, err)
	}
	serveCtx, stopServing := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx) }()
	m.closers = append(m.closers, func() error {
		stopServing()
		serveErr := <-served
		cancel()
		var stopErr error
		if stop != nil {
			stopErr = stop()
		}
		if err := errors.Join(serveErr, stopErr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
	return srv.Addr().String(), nil
}

// Close stops everything, in the reverse order of Start.
func (m *Mesh) Close() error {
	var errs []error
	for i := len(m.closers) - 1; i >= 0; i-- {
		errs = append(errs, m.closers[i]())
	}
	m.closers = nil
	return errors.Join(errs...)
}
