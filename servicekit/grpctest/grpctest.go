// Package grpctest serves services in-process over real loopback gRPC, with
// the same server bootstrap as production, for tests.
package grpctest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

// Start serves the services that register adds on 127.0.0.1 and returns a
// client connection to them. Both are closed by t.Cleanup.
func Start(t testing.TB, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	srv, err := grpcserver.New(grpcserver.Config{
		Name:            t.Name(),
		Listen:          "127.0.0.1:0",
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		ShutdownTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatalf("grpctest: %v", err)
	}
	register(srv.GRPC())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()

	conn, err := grpcclient.Dial(srv.Addr().String())
	if err != nil {
		cancel()
		t.Fatalf("grpctest: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("grpctest: serve: %v", err)
		}
	})
	return conn
}

// DialTLS connects to addr the way pushmesh clients do, with the TLS
// configuration tlsconfig builds from c (plaintext for the zero value). The
// connection is closed by t.Cleanup.
func DialTLS(t testing.TB, addr string, c tlsconfig.Client) *grpc.ClientConn {
	t.Helper()
	cfg, err := tlsconfig.NewClient(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpcclient.Dial(addr, grpcclient.TransportCredentials(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
