package grpcapi_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/grpcapi"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
	"github.com/pushmesh/pushmesh/servicekit/boltdb"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
)

// env is one profilesvc served over real loopback gRPC on a real bbolt file.
type env struct {
	client profilev1.ProfileServiceClient
	db     *bolt.DB
}

func newEnv(t testing.TB, opts store.Options) *env {
	t.Helper()
	return newEnvLogging(t, opts, io.Discard)
}

// newEnvLogging is newEnv with the service's log written to logs.
func newEnvLogging(t testing.TB, opts store.Options, logs io.Writer) *env {
	t.Helper()
	return newEnvMetered(t, opts, logs, nil)
}

// newEnvMetered is newEnvLogging with the service's metrics going to mp
// (nil: the global provider).
func newEnvMetered(t testing.TB, opts store.Options, logs io.Writer, mp metric.MeterProvider) *env {
	t.Helper()
	db, err := boltdb.Open(t.TempDir(), "profilesvc.db")
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Registered before grpctest.Start, so it runs after the server stopped.
	t.Cleanup(func() {
		st.Close()
		db.Close()
	})
	conn := grpctest.Start(t, func(s *grpc.Server) {
		grpcapi.New(st, slog.New(slog.NewTextHandler(logs, nil)), mp).Register(s)
	})
	return &env{client: profilev1.NewProfileServiceClient(conn), db: db}
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func withTenant(ctx context.Context, tenant string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-pushmesh-tenant", tenant)
}

// base is a fixed point in the recent past that source times count from.
var base = time.Now().Add(-10 * 24 * time.Hour).Truncate(time.Second)

func at(sec int) *timestamppb.Timestamp {
	return timestamppb.New(base.Add(time.Duration(sec) * time.Second))
}

func byCustomer(id string) *profilev1.ProfileRef {
	return &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_Identity{Identity: &profilev1.Identity{Namespace: "customer_id", Value: id}}}
}

func byID(id string) *profilev1.ProfileRef {
	return &profilev1.ProfileRef{Ref: &profilev1.ProfileRef_ProfileId{ProfileId: id}}
}

const (
	apns = commonv1.Platform_PLATFORM_APNS
	fcm  = commonv1.Platform_PLATFORM_FCM
)

// wantStatus fails unless err is a status with code and, when field is not
// empty, a BadRequest violation naming field.
func wantStatus(t testing.TB, err error, code codes.Code, field string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("got error %v, want status %s", err, code)
	}
	if st.Code() != code {
		t.Fatalf("got code %s (%s), want %s", st.Code(), st.Message(), code)
	}
	if field == "" {
		return
	}
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, fv := range br.GetFieldViolations() {
				if fv.GetField() == field {
					return
				}
				fields = append(fields, fv.GetField())
			}
		}
	}
	t.Fatalf("got violations on %q (%s), want one on %q", fields, st.Message(), field)
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

func testingProcs() int { return runtime.GOMAXPROCS(0) }
