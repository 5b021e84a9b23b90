// Package journeytest runs what a journey needs, over loopback gRPC: the
// APNs and FCM emulators, the real profilesvc (its public server package),
// a fake trackingsvc that records the events it is sent, and deliverysvc
// (server.Start) — in this process, or as a child process a test can kill
// with SIGKILL. Tests of JourneyService and the journey benchmark use it.
package journeytest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/testenv"
	"github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/emulator/apns"
	"github.com/pushmesh/pushmesh/emulator/fcm"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	profileserver "github.com/pushmesh/pushmesh/profilesvc/server"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/proctest"
)

// The apps RegisterApps registers: the shop on iOS and Android, the wallet
// on iOS only.
const (
	ShopApp   = "com.acme.shop"
	WalletApp = "com.acme.wallet"
	// FCMProject is the shop's Firebase project.
	FCMProject = "acme-shop"
	teamID     = "ACMETEAM01"
	keyID      = "ACMEKEY001"
)

// Options configure a Mesh. The zero value is usable.
type Options struct {
	// DataDir holds the services' data; default a new temporary folder,
	// removed by Close.
	DataDir string
	// Logger receives the services' logs; default discard.
	Logger *slog.Logger
	// MaxInFlight and JourneyWindow are passed to deliverysvc (0: its
	// defaults); APNsConnections too.
	MaxInFlight     int
	JourneyWindow   int
	APNsConnections int
	// ChildArgs are the arguments StartDeliveryProcess gives this binary
	// (whose main or TestMain calls RunChildIfAsked); default
	// "-test.run=^$", for test binaries.
	ChildArgs []string
	// ChildEnv is added to the child's environment, e.g.
	// ChildCPUProfileEnv=file.
	ChildEnv []string
	// EmulatorLog bounds the emulators' inspection logs (0: their
	// default, a million deliveries each); their counts stay exact.
	EmulatorLog int
	// CountEventsOnly makes the tracking fake count events without keeping
	// them (NewEventCounter): for benchmarks of large journeys.
	CountEventsOnly bool
	// MeterProvider receives an in-process deliverysvc's metrics; default
	// the global provider.
	MeterProvider metric.MeterProvider
}

// ChildCPUProfileEnv and ChildHeapProfileEnv name files where a child
// deliverysvc writes its CPU profile, and its heap profile when it stops.
const (
	ChildCPUProfileEnv  = "JOURNEYTEST_CPUPROFILE"
	ChildHeapProfileEnv = "JOURNEYTEST_HEAPPROFILE"
)

// Mesh is the emulators, profilesvc, a fake trackingsvc and, once started,
// deliverysvc.
type Mesh struct {
	CA   *tlsca.CA
	APNs *apns.Server
	FCM  *fcm.Server

	ProfileAddr string
	Profiles    profilev1.ProfileServiceClient
	// Events holds what deliverysvc sent trackingsvc.
	Events       *testenv.Events
	TrackingAddr string

	// Config is deliverysvc's configuration; DeliveryDir its data.
	Config      server.Config
	DeliveryDir string
	// DeliveryAddr is deliverysvc's address, the same for every start, so
	// the clients below reconnect to a restarted service by themselves.
	DeliveryAddr string
	Apps         deliveryv1.AppServiceClient
	Journeys     deliveryv1.JourneyServiceClient

	log      *slog.Logger
	opts     Options
	dir      string
	ownDir   bool
	closers  []func() error
	inProc   func() error // stops an in-process deliverysvc
	children []*Process
}

// New starts the emulators, profilesvc and the trackingsvc fake.
// deliverysvc is started by StartDelivery or StartDeliveryProcess.
func New(opts Options) (_ *Mesh, err error) {
	m := &Mesh{log: opts.Logger, opts: opts, dir: opts.DataDir}
	if m.log == nil {
		m.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	if m.dir == "" {
		if m.dir, err = os.MkdirTemp("", "journeytest-"); err != nil {
			return nil, err
		}
		m.ownDir = true
	}
	if m.CA, err = tlsca.New(); err != nil {
		return nil, err
	}
	if m.APNs, err = apns.Start(apns.Options{CA: m.CA, MaxLog: opts.EmulatorLog}); err != nil {
		return nil, err
	}
	m.closers = append(m.closers, m.APNs.Close)
	if m.FCM, err = fcm.Start(fcm.Options{CA: m.CA, MaxLog: opts.EmulatorLog}); err != nil {
		return nil, err
	}
	m.closers = append(m.closers, m.FCM.Close)

	if m.ProfileAddr, err = m.serve("profilesvc", "127.0.0.1:0", func(ctx context.Context, s *grpc.Server) (func() error, error) {
		return profileserver.Start(ctx, s, filepath.Join(m.dir, "profilesvc"), profileserver.Config{}, m.log)
	}); err != nil {
		return nil, err
	}
	m.Events = testenv.NewEvents()
	if opts.CountEventsOnly {
		m.Events = testenv.NewEventCounter()
	}
	tracking := &testenv.FakeTracking{IngestFunc: m.Events.Ingest}
	if m.TrackingAddr, err = m.serve("trackingsvc-fake", "127.0.0.1:0", func(_ context.Context, s *grpc.Server) (func() error, error) {
		trackingv1.RegisterTrackingServiceServer(s, tracking)
		return nil, nil
	}); err != nil {
		return nil, err
	}
	conn, err := grpcclient.Dial(m.ProfileAddr)
	if err != nil {
		return nil, err
	}
	m.closers = append(m.closers, conn.Close)
	m.Profiles = profilev1.NewProfileServiceClient(conn)

	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if m.DeliveryAddr, err = proctest.FreeAddr(); err != nil {
		return nil, err
	}
	m.DeliveryDir = filepath.Join(m.dir, "deliverysvc")
	m.Config = server.Config{
		ProfileAddr:     m.ProfileAddr,
		TrackingAddr:    m.TrackingAddr,
		APNsURL:         m.APNs.URL(),
		FCMEndpoint:     m.FCM.URL() + "/v1",
		GatewayCAPEM:    m.CA.CertPEM(),
		CredentialsKey:  base64.StdEncoding.EncodeToString(key),
		APNsConnections: opts.APNsConnections,
		MaxInFlight:     opts.MaxInFlight,
		JourneyWindow:   opts.JourneyWindow,
		MeterProvider:   opts.MeterProvider,
	}
	dconn, err := grpcclient.Dial(m.DeliveryAddr)
	if err != nil {
		return nil, err
	}
	m.closers = append(m.closers, dconn.Close)
	m.Apps = deliveryv1.NewAppServiceClient(dconn)
	m.Journeys = deliveryv1.NewJourneyServiceClient(dconn)
	return m, nil
}

// TB is the part of testing.TB Start needs.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Start is New for tests: it fails t on error and closes with t.Cleanup.
func Start(t TB, opts Options) *Mesh {
	t.Helper()
	m, err := New(opts)
	if err != nil {
		t.Fatalf("journeytest: %v", err)
	}
	t.Cleanup(m.Close)
	return m
}

// serve runs a gRPC server with the production bootstrap.
func (m *Mesh) serve(name, listen string, start func(context.Context, *grpc.Server) (func() error, error)) (string, error) {
	srv, err := grpcserver.New(grpcserver.Config{Name: name, Listen: listen, Logger: m.log, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop, err := start(ctx, srv.GRPC())
	if err != nil {
		cancel()
		srv.Shutdown()
		return "", fmt.Errorf("%s: %w", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	m.closers = append(m.closers, func() error {
		cancel()
		err := <-done
		if stop != nil {
			err = errors.Join(err, stop())
		}
		return err
	})
	return srv.Addr().String(), nil
}

// StartDelivery starts deliverysvc in this process, on DeliveryAddr.
func (m *Mesh) StartDelivery() error {
	if m.inProc != nil {
		return errors.New("journeytest: deliverysvc is already running")
	}
	srv, err := grpcserver.New(grpcserver.Config{Name: "deliverysvc", Listen: m.DeliveryAddr, Logger: m.log, ShutdownTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop, err := server.Start(ctx, srv.GRPC(), m.DeliveryDir, m.Config, m.log.With("service", "deliverysvc"))
	if err != nil {
		cancel()
		srv.Shutdown()
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	m.inProc = func() error {
		cancel()
		return errors.Join(<-done, stop())
	}
	return m.waitForDelivery()
}

// StopDelivery stops an in-process deliverysvc gracefully.
func (m *Mesh) StopDelivery() error {
	if m.inProc == nil {
		return nil
	}
	err := m.inProc()
	m.inProc = nil
	return err
}

// waitForDelivery waits until deliverysvc answers.
func (m *Mesh) waitForDelivery() error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := m.Apps.ListApps(ctx, &deliveryv1.ListAppsRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("deliverysvc did not answer at %s: %w", m.DeliveryAddr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops everything and removes a temporary data dir.
func (m *Mesh) Close() {
	for _, c := range m.children {
		c.Stop()
	}
	_ = m.StopDelivery()
	for i := len(m.closers) - 1; i >= 0; i-- {
		_ = m.closers[i]()
	}
	m.closers = nil
	if m.ownDir {
		os.RemoveAll(m.dir)
	}
}

// RegisterApps registers ShopApp (APNs and FCM) and WalletApp (APNs) with
// the emulators and deliverysvc, in the tenant of ctx.
func (m *Mesh) RegisterApps(ctx context.Context) error {
	p8, _, err := m.APNs.NewProviderKey(teamID, keyID)
	if err != nil {
		return err
	}
	m.APNs.RegisterTopic(teamID, ShopApp)
	m.APNs.RegisterTopic(teamID, WalletApp)
	sa, _, err := m.FCM.NewServiceAccount(FCMProject)
	if err != nil {
		return err
	}
	for _, req := range []*deliveryv1.RegisterAppRequest{
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: ShopApp}, DisplayName: "Shop (iOS)",
			ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION, Credentials: testenv.APNsCredentials(p8, keyID, teamID), RateLimitPerSecond: 100_000},
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: WalletApp}, DisplayName: "Wallet (iOS)",
			ApnsEnvironment: commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION, Credentials: testenv.APNsCredentials(p8, keyID, teamID), RateLimitPerSecond: 100_000},
		{Key: &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: ShopApp}, DisplayName: "Shop (Android)",
			Credentials: testenv.FCMCredentials(sa), RateLimitPerSecond: 100_000},
	} {
		if _, err := m.Apps.RegisterApp(ctx, req); err != nil {
			return fmt.Errorf("register %v: %w", req.GetKey(), err)
		}
	}
	return nil
}

// Customer upserts the profile of customer_id customer with attrs.
func (m *Mesh) Customer(ctx context.Context, customer string, attrs map[string]any) (profileID string, err error) {
	st, err := structpb.NewStruct(attrs)
	if err != nil {
		return "", err
	}
	resp, err := m.Profiles.UpsertProfile(ctx, &profilev1.UpsertProfileRequest{
		Identities: []*profilev1.Identity{{Namespace: "customer_id", Value: customer}},
		Attributes: st,
	})
	if err != nil {
		return "", fmt.Errorf("upsert %s: %w", customer, err)
	}
	return resp.GetProfile().GetProfileId(), nil
}

// Device registers token (of app, on platform) for customer's profile.
func (m *Mesh) Device(ctx context.Context, customer, token string, platform commonv1.Platform, app string) error {
	sum := sha256.Sum256([]byte(token))
	_, err := m.Profiles.RegisterPushToken(ctx, &profilev1.RegisterPushTokenRequest{
		Profile: &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: customer}}},
		Token:   token, Platform: platform, AppId: app, SourceTime: timestamppb.New(time.Now().Add(-time.Minute)),
		DeviceId: hex.EncodeToString(sum[:8]), Source: "journeytest",
	})
	if err != nil {
		return fmt.Errorf("register a token for %s: %w", customer, err)
	}
	return nil
}

// Import seeds n profiles through profilesvc's ImportTokens: customer
// B-i with one APNs token of the shop, and every fcmEvery-th one also an
// FCM token; each profile has the attributes tier, firstName and locale
// and extraAttributes more that no journey template reads, as a CRM's
// profiles do. It returns the tokens by platform.
func Import(ctx context.Context, m *Mesh, n, fcmEvery, extraAttributes int) (apnsTokens, fcmTokens []string, err error) {
	stream, err := m.Profiles.ImportTokens(ctx)
	if err != nil {
		return nil, nil, err
	}
	fields := map[string]any{"tier": "gold", "firstName": "Ada", "locale": "en-US"}
	for k := range extraAttributes {
		fields[fmt.Sprintf("crm_field_%02d", k)] = fmt.Sprintf("the value of CRM field %d", k)
	}
	attrs, err := structpb.NewStruct(fields)
	if err != nil {
		return nil, nil, err
	}
	at := timestamppb.New(time.Now().Add(-time.Hour))
	var rows []*profilev1.ImportRow
	flush := func() error {
		if len(rows) == 0 {
			return nil
		}
		err := stream.Send(&profilev1.ImportTokensRequest{Rows: rows})
		rows = nil
		return err
	}
	for i := range n {
		customer := fmt.Sprintf("B-%07d", i)
		apnsTokens = append(apnsTokens, APNsToken(i))
		rows = append(rows, &profilev1.ImportRow{Token: APNsToken(i), Platform: commonv1.Platform_PLATFORM_APNS, AppId: ShopApp,
			CustomerId: customer, SourceTime: at, Attributes: attrs})
		if fcmEvery > 0 && i%fcmEvery == 0 {
			fcmTokens = append(fcmTokens, FCMToken(i))
			rows = append(rows, &profilev1.ImportRow{Token: FCMToken(i), Platform: commonv1.Platform_PLATFORM_FCM, AppId: ShopApp,
				CustomerId: customer, SourceTime: at, Attributes: attrs})
		}
		if len(rows) >= 2000 {
			if err := flush(); err != nil {
				return nil, nil, err
			}
		}
	}
	if err := flush(); err != nil {
		return nil, nil, err
	}
	_, err = stream.CloseAndRecv()
	return apnsTokens, fcmTokens, err
}

// APNsToken is the i-th test APNs token (64 hex digits).
func APNsToken(i int) string { return fmt.Sprintf("%064x", 0xe0000000+i) }

// FCMToken is the i-th test FCM registration token.
func FCMToken(i int) string { return fmt.Sprintf("fcm-journeytest-%07d:%0100d", i, i) }

// FCMCollapse is android.collapse_key and android.notification.tag of a
// message the FCM emulator received: the key merges queued copies, the tag
// replaces a notification already shown.
func FCMCollapse(d fcm.Delivery) (collapseKey, tag string) {
	var msg struct {
		Android struct {
			CollapseKey  string `json:"collapse_key"`
			Notification struct {
				Tag string `json:"tag"`
			} `json:"notification"`
		} `json:"android"`
	}
	_ = json.Unmarshal(d.Message, &msg)
	return msg.Android.CollapseKey, msg.Android.Notification.Tag
}

// Child processes.

// Process is deliverysvc running as a child process.
type Process = proctest.Process

// RunChildIfAsked runs deliverysvc and exits when this process was started
// by StartDeliveryProcess; otherwise it returns at once. Call it first in
// TestMain.
func RunChildIfAsked() {
	proctest.RunChildIfAsked(startChild)
}

// startChild starts deliverysvc in the child as its binary does, with the
// CPU and heap profiles ChildCPUProfileEnv and ChildHeapProfileEnv ask for.
func startChild(ctx context.Context, s *grpc.Server, spec proctest.Spec, log *slog.Logger) (func() error, error) {
	var cfg server.Config
	if err := json.Unmarshal(spec.Config, &cfg); err != nil {
		return nil, err
	}
	server.TuneRuntime() // as the deliverysvc binary does
	var profiled func()
	if path := os.Getenv(ChildCPUProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		profiled = func() { pprof.StopCPUProfile(); f.Close() }
	}
	stop, err := server.Start(ctx, s, spec.DataDir, cfg, log)
	if err != nil {
		return nil, err
	}
	return func() error {
		err := stop()
		if profiled != nil {
			profiled()
		}
		if path := os.Getenv(ChildHeapProfileEnv); path != "" {
			if f, err := os.Create(path); err == nil {
				_ = pprof.WriteHeapProfile(f)
				f.Close()
			}
		}
		return err
	}, nil
}

// StartDeliveryProcess starts deliverysvc as a child process (this test
// binary, whose TestMain calls RunChildIfAsked) on DeliveryAddr, and waits
// until it answers.
func (m *Mesh) StartDeliveryProcess() (*Process, error) {
	cfg, err := json.Marshal(m.Config)
	if err != nil {
		return nil, err
	}
	p, err := proctest.Start(proctest.Spec{Name: "deliverysvc", Listen: m.DeliveryAddr, DataDir: m.DeliveryDir, Config: cfg},
		proctest.Options{Args: m.opts.ChildArgs, Env: m.opts.ChildEnv}, func(ctx context.Context) error {
			_, err := m.Apps.ListApps(ctx, &deliveryv1.ListAppsRequest{})
			return err
		})
	if err != nil {
		return nil, err
	}
	m.children = append(m.children, p)
	return p, nil
}
