// Package grpcclient dials pushmesh services the one way every service and
// tool should: OpenTelemetry client stats handler (so traces cross services)
// and the caller's tenant forwarded in the request metadata, with keepalive
// pings the pushmesh servers (servicekit/grpcserver) accept.
package grpcclient

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"

	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// Client keepalive: the connection pings the server after KeepaliveTime
// without activity, with or without calls in flight, and is closed (the next
// call reconnects) if the ack takes longer than KeepaliveTimeout. A dead
// server or a silently dropped connection (NAT, load balancer) is noticed
// within their sum instead of at the next call's deadline. KeepaliveTime must
// stay at or above the servers' enforcement minimum,
// grpcserver.DefaultKeepaliveMinTime (10s), with margin: a client pinging
// more often is disconnected with GOAWAY ENHANCE_YOUR_CALM.
const (
	KeepaliveTime    = 30 * time.Second
	KeepaliveTimeout = 20 * time.Second
)

// Dial creates a client connection to target (host:port). It connects
// lazily; extra options are appended (e.g. TransportCredentials for TLS,
// replacing the plaintext default, or other keepalive parameters).
func Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	all := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
		grpc.WithChainUnaryInterceptor(tenantUnary),
		grpc.WithChainStreamInterceptor(tenantStream),
	}
	all = append(all, opts...)
	conn, err := grpc.NewClient(target, all...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	return conn, nil
}

// TransportCredentials is the dial option for a client TLS configuration
// built by servicekit/tlsconfig: TLS with it, or plaintext when it is nil
// (tlsconfig's answer for no flags).
func TransportCredentials(cfg *tls.Config) grpc.DialOption {
	if cfg == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

// withTenant forwards ctx's tenant unless the caller set the metadata itself.
func withTenant(ctx context.Context) context.Context {
	md, _ := metadata.FromOutgoingContext(ctx)
	if len(md.Get(tenant.MetadataKey)) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, tenant.MetadataKey, tenant.FromContext(ctx))
}

func tenantUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(withTenant(ctx), method, req, reply, cc, opts...)
}

func tenantStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(withTenant(ctx), desc, cc, method, opts...)
}
