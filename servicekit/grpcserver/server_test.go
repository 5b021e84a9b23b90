package grpcserver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/logtest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// The health service doubles as the "application" service under test: a
// custom handler registered through a ServiceDesc, so the test needs no
// generated code of its own.
type probeServer interface{ probe() }

type probe struct {
	handle func(ctx context.Context) error
	block  chan struct{}
}

func (probe) probe() {}

const probeService = "pushmesh.test.Probe"

func registerProbe(s *grpc.Server, p *probe) {
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: probeService,
		HandlerType: (*probeServer)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Call",
			Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
				in := new(healthpb.HealthCheckRequest)
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(ctx context.Context, _ any) (any, error) {
					if err := p.handle(ctx); err != nil {
						return nil, err
					}
					return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
				}
				if interceptor == nil {
					return h(ctx, in)
				}
				return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + probeService + "/Call"}, h)
			},
		}},
	}, p)
}

func callProbe(ctx context.Context, conn *grpc.ClientConn) error {
	return conn.Invoke(ctx, "/"+probeService+"/Call", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
}

func TestHealthServingForEveryService(t *testing.T) {
	conn := grpctest.Start(t, func(s *grpc.Server) { registerProbe(s, &probe{handle: func(context.Context) error { return nil }}) })
	hc := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", probeService} {
		resp, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("Check(%q): %v", svc, err)
		}
		if got := resp.GetStatus(); got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q): got %v, want SERVING", svc, got)
		}
	}
}

func TestReflectionListsServices(t *testing.T) {
	conn := grpctest.Start(t, func(s *grpc.Server) { registerProbe(s, &probe{handle: func(context.Context) error { return nil }}) })
	_, resp := listServices(t, context.Background(), conn)
	got := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		got[s.GetName()] = true
	}
	for _, want := range []string{probeService, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !got[want] {
			t.Errorf("reflection: %s missing from %v", want, got)
		}
	}
}

func TestTenantFromMetadata(t *testing.T) {
	seen := make(chan string, 1)
	conn := grpctest.Start(t, func(s *grpc.Server) {
		registerProbe(s, &probe{handle: func(ctx context.Context) error { seen <- tenant.FromContext(ctx); return nil }})
	})
	tests := []struct {
		name     string
		ctx      context.Context
		want     string
		wantCode codes.Code
	}{
		{"no metadata is default", context.Background(), tenant.Default, codes.OK},
		{"forwarded from client context", tenant.With(context.Background(), "acme"), "acme", codes.OK},
		{"explicit metadata", metadata.AppendToOutgoingContext(context.Background(), tenant.MetadataKey, "globex"), "globex", codes.OK},
		{"invalid tenant", metadata.AppendToOutgoingContext(context.Background(), tenant.MetadataKey, "Bad/Tenant"), "", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := callProbe(tt.ctx, conn)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("got code %v (%v), want %v", got, err, tt.wantCode)
			}
			if tt.wantCode != codes.OK {
				if f := badRequestFields(err); len(f) != 1 || f[0] != "metadata."+tenant.MetadataKey {
					t.Errorf("got field violations %v, want the tenant metadata key", f)
				}
				return
			}
			if got := <-seen; got != tt.want {
				t.Errorf("got tenant %q, want %q", got, tt.want)
			}
		})
	}
}

func TestPanicBecomesInternal(t *testing.T) {
	conn := grpctest.Start(t, func(s *grpc.Server) {
		registerProbe(s, &probe{handle: func(context.Context) error { panic("boom") }})
	})
	if got := status.Code(callProbe(context.Background(), conn)); got != codes.Internal {
		t.Errorf("got %v, want Internal", got)
	}
	// The server survived the panic.
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health after panic: %v", err)
	}
}

func TestGracefulShutdownDrainsThenStops(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	srv, err := grpcserver.New(grpcserver.Config{
		Name: "drain", Listen: "127.0.0.1:0",
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		ShutdownTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	registerProbe(srv.GRPC(), &probe{handle: func(ctx context.Context) error {
		started <- struct{}{}
		<-release
		return nil
	}})
	cancel, served, conn := serveAndDial(t, srv)

	// A health watch opened before the shutdown sees the flip to
	// NOT_SERVING: new calls are refused once GracefulStop begins.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	watch, err := healthpb.NewHealthClient(conn).Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: got %v, %v, want SERVING first", resp, err)
	}

	inflight := make(chan error, 1)
	go func() { inflight <- callProbe(context.Background(), conn) }()
	<-started
	cancel() // shutdown begins while the call is in flight

	resp, err := watch.Recv()
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch during shutdown: got %v, %v, want NOT_SERVING", resp, err)
	}
	stopWatch() // let the drain finish
	close(release)
	if err := <-inflight; err != nil {
		t.Errorf("in-flight call: got %v, want it to finish during the drain", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: got %v, want nil", err)
	}
}

func TestShutdownTimeoutStopsHard(t *testing.T) {
	srv, err := grpcserver.New(grpcserver.Config{
		Name: "hard", Listen: "127.0.0.1:0",
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		ShutdownTimeout: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	registerProbe(srv.GRPC(), &probe{handle: func(ctx context.Context) error {
		started <- struct{}{}
		<-ctx.Done() // never finishes on its own
		return ctx.Err()
	}})
	cancel, served, conn := serveAndDial(t, srv)
	inflight := make(chan error, 1)
	go func() { inflight <- callProbe(context.Background(), conn) }()
	<-started
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the shutdown timeout")
	}
	if err := <-inflight; status.Code(err) == codes.OK {
		t.Errorf("in-flight call: got OK, want it cut off by the hard stop")
	}
}

// A handler that never returns, not even once its context is cancelled (a
// write stuck on a dead disk), must not hold the shutdown: Serve returns
// ShutdownTimeout + AbandonAfter after its context ends, and says so.
func TestShutdownAbandonsStuckHandlers(t *testing.T) {
	var logs logtest.Buffer
	const timeout, abandonAfter = 200 * time.Millisecond, 300 * time.Millisecond
	srv, err := grpcserver.New(grpcserver.Config{
		Name: "stuck", Listen: "127.0.0.1:0",
		Logger:          slog.New(slog.NewTextHandler(&logs, nil)),
		ShutdownTimeout: timeout,
		AbandonAfter:    abandonAfter,
	})
	if err != nil {
		t.Fatal(err)
	}
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) }) // let the abandoned handlers end with the test
	started := make(chan struct{}, 2)
	registerProbe(srv.GRPC(), &probe{handle: func(ctx context.Context) error {
		started <- struct{}{}
		<-stuck // ignores ctx: only the test's end releases it
		return nil
	}})
	cancel, served, conn := serveAndDial(t, srv)
	inflight := make(chan error, 2)
	for range 2 {
		go func() { inflight <- callProbe(context.Background(), conn) }()
		<-started
	}

	begin := time.Now()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(timeout + abandonAfter + 5*time.Second):
		t.Fatalf("Serve still blocked %v after the shutdown began (timeout %v, abandon after %v)", time.Since(begin), timeout, abandonAfter)
	}
	if took := time.Since(begin); took < timeout+abandonAfter {
		t.Errorf("Serve returned after %v, before the timeout and the abandon wait (%v)", took, timeout+abandonAfter)
	}
	for range 2 {
		if err := <-inflight; status.Code(err) != codes.Unavailable {
			t.Errorf("in-flight call: got %v, want Unavailable from the hard stop", err)
		}
	}
	if !strings.Contains(logs.String(), "abandoning them") || !strings.Contains(logs.String(), "handlers=2") {
		t.Errorf("logs: want the 2 abandoned handlers reported, got:\n%s", logs.String())
	}
	// The listener is closed: nobody can connect to an abandoned server.
	if c, err := net.DialTimeout("tcp", srv.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Error("dial after shutdown: got a connection, want the listener closed")
	}
}

var (
	errNotFound = errors.New("not found")
	errExists   = errors.New("already exists")
)

func TestStatusMapping(t *testing.T) {
	table := []grpcserver.ErrorCode{{Err: errNotFound, Code: codes.NotFound}, {Err: errExists, Code: codes.AlreadyExists}}
	v := &fault.ValidationError{}
	v.Add("token", "must be hex")
	v.Add("app_id", "required")
	tests := []struct {
		name       string
		err        error
		wantCode   codes.Code
		wantFields []string
		wantRetry  time.Duration
	}{
		{"validation", fmt.Errorf("register: %w", v), codes.InvalidArgument, []string{"token", "app_id"}, 0},
		{"sentinel with field", fault.OnField(errNotFound, "profile.profile_id", "profile %q not found", "p1"), codes.NotFound, []string{"profile.profile_id"}, 0},
		{"bare sentinel", fmt.Errorf("x: %w", errExists), codes.AlreadyExists, nil, 0},
		{"retry after", &fault.RetryAfterError{Err: errors.New("rate limited"), After: 3 * time.Second}, codes.ResourceExhausted, nil, 3 * time.Second},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), codes.Canceled, nil, 0},
		{"status passes through", status.Error(codes.Unauthenticated, "who are you"), codes.Unauthenticated, nil, 0},
		{"unknown is internal", errors.New("disk on fire"), codes.Internal, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := grpcserver.Status(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), tt.err, table...)
			// Round-trip through a real connection so the details survive the wire.
			conn := grpctest.Start(t, func(s *grpc.Server) {
				registerProbe(s, &probe{handle: func(context.Context) error { return err }})
			})
			got := callProbe(context.Background(), conn)
			if c := status.Code(got); c != tt.wantCode {
				t.Fatalf("got code %v, want %v", c, tt.wantCode)
			}
			if f := badRequestFields(got); fmt.Sprint(f) != fmt.Sprint(tt.wantFields) {
				t.Errorf("got fields %v, want %v", f, tt.wantFields)
			}
			if tt.wantRetry > 0 {
				var delay time.Duration
				for _, d := range status.Convert(got).Details() {
					if ri, ok := d.(*errdetails.RetryInfo); ok {
						delay = ri.GetRetryDelay().AsDuration()
					}
				}
				if delay != tt.wantRetry {
					t.Errorf("got retry delay %v, want %v", delay, tt.wantRetry)
				}
			}
			if tt.wantCode == codes.Internal && status.Convert(got).Message() == tt.err.Error() {
				t.Errorf("internal error text leaked to the caller: %q", status.Convert(got).Message())
			}
		})
	}
}

func badRequestFields(err error) []string {
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// serveAndDial serves srv until cancel and returns a connection to it
// (closed with the test) and the channel Serve's result arrives on.
func serveAndDial(t *testing.T, srv *grpcserver.Server) (cancel context.CancelFunc, served <-chan error, conn *grpc.ClientConn) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	conn, err := grpcclient.Dial(srv.Addr().String())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return cancel, done, conn
}

// Calls are traced, health checks and reflection are not.
func TestProbesAreNotTraced(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	srv, err := grpcserver.New(grpcserver.Config{Name: "test", Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	registerProbe(srv.GRPC(), &probe{handle: func(context.Context) error { return nil }})
	cancel, served, conn := serveAndDial(t, srv)
	ctx := context.Background()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	refl, _ := listServices(t, ctx, conn)
	_ = refl.CloseSend()
	if err := callProbe(ctx, conn); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-served
	var names []string
	for _, s := range rec.Ended() {
		if s.SpanKind() == trace.SpanKindServer {
			names = append(names, s.Name())
		}
	}
	if len(names) != 1 || names[0] != probeService+"/Call" {
		t.Errorf("server spans %v, want only %s/Call", names, probeService)
	}
}

// listServices opens a reflection stream and asks it for the services once;
// the stream stays open.
func listServices(t *testing.T, ctx context.Context, conn *grpc.ClientConn) (reflectionpb.ServerReflection_ServerReflectionInfoClient, *reflectionpb.ServerReflectionResponse) {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return stream, resp
}
