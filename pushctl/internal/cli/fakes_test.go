package cli

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// Hand-written fakes of the generated servers: each RPC calls its function
// field; an unset field answers Unimplemented.

var errUnset = status.Error(codes.Unimplemented, "fake: not set by this test")

type fakeProfiles struct {
	profilev1.UnimplementedProfileServiceServer
	upsert     func(context.Context, *profilev1.UpsertProfileRequest) (*profilev1.UpsertProfileResponse, error)
	get        func(context.Context, *profilev1.GetProfileRequest) (*profilev1.GetProfileResponse, error)
	del        func(context.Context, *profilev1.DeleteProfileRequest) (*profilev1.DeleteProfileResponse, error)
	register   func(context.Context, *profilev1.RegisterPushTokenRequest) (*profilev1.RegisterPushTokenResponse, error)
	unregister func(context.Context, *profilev1.UnregisterPushTokenRequest) (*profilev1.UnregisterPushTokenResponse, error)
	list       func(context.Context, *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error)
	importRows func(grpc.ClientStreamingServer[profilev1.ImportTokensRequest, profilev1.ImportTokensResponse]) error
}

func (f *fakeProfiles) UpsertProfile(ctx context.Context, r *profilev1.UpsertProfileRequest) (*profilev1.UpsertProfileResponse, error) {
	if f.upsert == nil {
		return nil, errUnset
	}
	return f.upsert(ctx, r)
}

func (f *fakeProfiles) GetProfile(ctx context.Context, r *profilev1.GetProfileRequest) (*profilev1.GetProfileResponse, error) {
	if f.get == nil {
		return nil, errUnset
	}
	return f.get(ctx, r)
}

func (f *fakeProfiles) DeleteProfile(ctx context.Context, r *profilev1.DeleteProfileRequest) (*profilev1.DeleteProfileResponse, error) {
	if f.del == nil {
		return nil, errUnset
	}
	return f.del(ctx, r)
}

func (f *fakeProfiles) RegisterPushToken(ctx context.Context, r *profilev1.RegisterPushTokenRequest) (*profilev1.RegisterPushTokenResponse, error) {
	if f.register == nil {
		return nil, errUnset
	}
	return f.register(ctx, r)
}

func (f *fakeProfiles) UnregisterPushToken(ctx context.Context, r *profilev1.UnregisterPushTokenRequest) (*profilev1.UnregisterPushTokenResponse, error) {
	if f.unregister == nil {
		return nil, errUnset
	}
	return f.unregister(ctx, r)
}

func (f *fakeProfiles) ListPushTokens(ctx context.Context, r *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
	if f.list == nil {
		return nil, errUnset
	}
	return f.list(ctx, r)
}

func (f *fakeProfiles) ImportTokens(s grpc.ClientStreamingServer[profilev1.ImportTokensRequest, profilev1.ImportTokensResponse]) error {
	if f.importRows == nil {
		return errUnset
	}
	return f.importRows(s)
}

type fakeApps struct {
	deliveryv1.UnimplementedAppServiceServer
	register func(context.Context, *deliveryv1.RegisterAppRequest) (*deliveryv1.RegisterAppResponse, error)
	get      func(context.Context, *deliveryv1.GetAppRequest) (*deliveryv1.GetAppResponse, error)
	list     func(context.Context, *deliveryv1.ListAppsRequest) (*deliveryv1.ListAppsResponse, error)
	update   func(context.Context, *deliveryv1.UpdateAppCredentialsRequest) (*deliveryv1.UpdateAppCredentialsResponse, error)
	del      func(context.Context, *deliveryv1.DeleteAppRequest) (*deliveryv1.DeleteAppResponse, error)
	validate func(context.Context, *deliveryv1.ValidateAppRequest) (*deliveryv1.ValidateAppResponse, error)
}

func (f *fakeApps) RegisterApp(ctx context.Context, r *deliveryv1.RegisterAppRequest) (*deliveryv1.RegisterAppResponse, error) {
	if f.register == nil {
		return nil, errUnset
	}
	return f.register(ctx, r)
}

func (f *fakeApps) GetApp(ctx context.Context, r *deliveryv1.GetAppRequest) (*deliveryv1.GetAppResponse, error) {
	if f.get == nil {
		return nil, errUnset
	}
	return f.get(ctx, r)
}

func (f *fakeApps) ListApps(ctx context.Context, r *deliveryv1.ListAppsRequest) (*deliveryv1.ListAppsResponse, error) {
	if f.list == nil {
		return nil, errUnset
	}
	return f.list(ctx, r)
}

func (f *fakeApps) UpdateAppCredentials(ctx context.Context, r *deliveryv1.UpdateAppCredentialsRequest) (*deliveryv1.UpdateAppCredentialsResponse, error) {
	if f.update == nil {
		return nil, errUnset
	}
	return f.update(ctx, r)
}

func (f *fakeApps) DeleteApp(ctx context.Context, r *deliveryv1.DeleteAppRequest) (*deliveryv1.DeleteAppResponse, error) {
	if f.del == nil {
		return nil, errUnset
	}
	return f.del(ctx, r)
}

func (f *fakeApps) ValidateApp(ctx context.Context, r *deliveryv1.ValidateAppRequest) (*deliveryv1.ValidateAppResponse, error) {
	if f.validate == nil {
		return nil, errUnset
	}
	return f.validate(ctx, r)
}

type fakeJourneys struct {
	deliveryv1.UnimplementedJourneyServiceServer
	publish func(context.Context, *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error)
	get     func(context.Context, *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error)
	list    func(context.Context, *deliveryv1.ListJourneysRequest) (*deliveryv1.ListJourneysResponse, error)
	watch   func(*deliveryv1.WatchJourneyRequest, grpc.ServerStreamingServer[deliveryv1.WatchJourneyResponse]) error
	cancel  func(context.Context, *deliveryv1.CancelJourneyRequest) (*deliveryv1.CancelJourneyResponse, error)
}

func (f *fakeJourneys) PublishJourney(ctx context.Context, r *deliveryv1.PublishJourneyRequest) (*deliveryv1.PublishJourneyResponse, error) {
	if f.publish == nil {
		return nil, errUnset
	}
	return f.publish(ctx, r)
}

func (f *fakeJourneys) GetJourney(ctx context.Context, r *deliveryv1.GetJourneyRequest) (*deliveryv1.GetJourneyResponse, error) {
	if f.get == nil {
		return nil, errUnset
	}
	return f.get(ctx, r)
}

func (f *fakeJourneys) ListJourneys(ctx context.Context, r *deliveryv1.ListJourneysRequest) (*deliveryv1.ListJourneysResponse, error) {
	if f.list == nil {
		return nil, errUnset
	}
	return f.list(ctx, r)
}

func (f *fakeJourneys) WatchJourney(r *deliveryv1.WatchJourneyRequest, s grpc.ServerStreamingServer[deliveryv1.WatchJourneyResponse]) error {
	if f.watch == nil {
		return errUnset
	}
	return f.watch(r, s)
}

func (f *fakeJourneys) CancelJourney(ctx context.Context, r *deliveryv1.CancelJourneyRequest) (*deliveryv1.CancelJourneyResponse, error) {
	if f.cancel == nil {
		return nil, errUnset
	}
	return f.cancel(ctx, r)
}

type fakeTracking struct {
	trackingv1.UnimplementedTrackingServiceServer
	metrics func(context.Context, *trackingv1.GetMetricsRequest) (*trackingv1.GetMetricsResponse, error)
}

func (f *fakeTracking) GetMetrics(ctx context.Context, r *trackingv1.GetMetricsRequest) (*trackingv1.GetMetricsResponse, error) {
	if f.metrics == nil {
		return nil, errUnset
	}
	return f.metrics(ctx, r)
}

// harness serves all four fakes on one loopback gRPC server (the production
// server bootstrap, through grpctest) and runs pushctl against it.
type harness struct {
	profiles *fakeProfiles
	apps     *fakeApps
	journeys *fakeJourneys
	tracking *fakeTracking
	addr     string
	env      map[string]string
	now      time.Time

	mu      sync.Mutex
	tenants []string // tenant of every call, as the server saw it
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{
		profiles: &fakeProfiles{},
		apps:     &fakeApps{},
		journeys: &fakeJourneys{},
		tracking: &fakeTracking{},
		env:      map[string]string{},
		now:      time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC),
	}
	conn := grpctest.Start(t, func(s *grpc.Server) {
		profilev1.RegisterProfileServiceServer(s, h.profiles)
		deliveryv1.RegisterAppServiceServer(s, h.apps)
		deliveryv1.RegisterJourneyServiceServer(s, h.journeys)
		trackingv1.RegisterTrackingServiceServer(s, h.tracking)
	})
	h.addr = conn.Target()
	return h
}

// sawTenant records the tenant of a call; fakes call it to check forwarding.
func (h *harness) sawTenant(ctx context.Context) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tenants = append(h.tenants, tenant.FromContext(ctx))
}

type result struct {
	stdout, stderr string
	code           int
	err            error
}

// run runs pushctl with args against the fakes (addresses prepended).
func (h *harness) run(t *testing.T, args ...string) result {
	t.Helper()
	all := append([]string{"--profile-addr", h.addr, "--delivery-addr", h.addr, "--tracking-addr", h.addr}, args...)
	return runCLI(t, h.env, h.now, all...)
}

func runCLI(t *testing.T, env map[string]string, now time.Time, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), args, options{
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string { return env[k] },
		now:    func() time.Time { return now },
	})
	code := Report(err, &stderr)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code, err: err}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
