package service_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/metrictest"
)

type emptyServer struct {
	testgrpc.UnimplementedTestServiceServer
}

func (emptyServer) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, nil
}

// TestRPCMetricsFollowTheGlobalProvider checks what the README promises:
// once telemetry.Setup has installed an SDK meter provider as the global
// one, the servers and clients servicekit builds record otelgrpc's RPC
// metrics with no option of their own. (It sets the global provider; no
// other test of this package reads metrics.)
func TestRPCMetricsFollowTheGlobalProvider(t *testing.T) {
	mp, reader := metrictest.New(t)
	otel.SetMeterProvider(mp)
	conn := grpctest.Start(t, func(s *grpc.Server) { testgrpc.RegisterTestServiceServer(s, emptyServer{}) })
	if _, err := testgrpc.NewTestServiceClient(conn).EmptyCall(context.Background(), &testgrpc.Empty{}); err != nil {
		t.Fatal(err)
	}
	method := attribute.String("rpc.method", "grpc.testing.TestService/EmptyCall")
	// The server records as the call ends, which can be just after the
	// client has its answer.
	reader.WaitCount("rpc.server.call.duration", 1, method)
	reader.WaitCount("rpc.client.call.duration", 1, method)
}
