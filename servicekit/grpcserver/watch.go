package grpcserver

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// Streams that only watch never end by themselves. GracefulStop waits for
// every open stream, so one such stream left open (a load balancer's or a
// gRPC client's health watch, grpcurl's reflection stream, a dashboard
// watching a journey) made every shutdown wait its whole timeout and then
// stop hard, cutting off the real calls still draining. They are ended when
// the shutdown begins, with Unavailable: the client watches again elsewhere
// or after the restart.

// Full method names of the watch streams of the services every Server
// registers.
const (
	healthWatchMethod    = "/grpc.health.v1.Health/Watch"
	reflectionMethod     = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	reflectionAlphMethod = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
)

// healthWatchGrace bounds how long a health watch stays open once the
// shutdown began: long enough to deliver the NOT_SERVING the health service
// sends it (the stream then ends at once), for a watch of a service the
// server does not know, which gets no NOT_SERVING.
const healthWatchGrace = time.Second

// errShuttingDown ends the watch streams at shutdown.
var errShuttingDown = status.Error(codes.Unavailable, "the server is shutting down: watch again (another instance, or this one once it restarted)")

// drainKey carries, in a stream's context, the server's drain context: it
// is cancelled when the server begins to shut down.
type drainKey struct{}

// EndOnShutdown returns a copy of a stream handler's ctx that is also
// cancelled when the Server serving the call begins to shut down, and its
// cancel function, which the caller must call. Handlers of streams that only
// watch use it and return ShutdownStatus's error; other handlers keep their
// context, so the shutdown drains them.
func EndOnShutdown(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	drain, _ := ctx.Value(drainKey{}).(context.Context)
	if drain == nil {
		return ctx, cancel // not a call of a Server's stream
	}
	stop := context.AfterFunc(drain, cancel)
	return ctx, func() { stop(); cancel() }
}

// ShutdownStatus returns Unavailable, saying the server is shutting down,
// when ctx (from EndOnShutdown) ended because of that; err otherwise.
func ShutdownStatus(ctx context.Context, err error) error {
	drain, _ := ctx.Value(drainKey{}).(context.Context)
	if err != nil && ctx.Err() != nil && drain != nil && drain.Err() != nil {
		return errShuttingDown
	}
	return err
}

// watchStream serves the watch streams of the health and reflection
// services, ending them at shutdown; any other stream is handled as is.
func watchStream(srv any, ss grpc.ServerStream, method string, handler grpc.StreamHandler) (handled bool, err error) {
	ctx := ss.Context()
	switch method {
	case reflectionMethod, reflectionAlphMethod:
		ctx, cancel := EndOnShutdown(ctx)
		defer cancel()
		return true, ShutdownStatus(ctx, handler(srv, &cancellableRecv{ServerStream: ss, ctx: ctx}))
	case healthWatchMethod:
		drain, _ := ctx.Value(drainKey{}).(context.Context)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if drain != nil {
			stop := context.AfterFunc(drain, func() { time.AfterFunc(healthWatchGrace, cancel) })
			defer stop()
		}
		hs := &healthWatch{ServerStream: ss, ctx: ctx, drain: drain, end: cancel}
		return true, ShutdownStatus(ctx, handler(srv, hs))
	}
	return false, nil
}

// healthWatch ends a health watch as soon as it has sent NOT_SERVING after
// the shutdown began.
type healthWatch struct {
	grpc.ServerStream
	ctx   context.Context
	drain context.Context
	end   context.CancelFunc
}

func (s *healthWatch) Context() context.Context { return s.ctx }

func (s *healthWatch) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if r, ok := m.(*healthpb.HealthCheckResponse); ok && r.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING &&
		s.drain != nil && s.drain.Err() != nil {
		s.end()
	}
	return err
}

// cancellableRecv is a stream whose RecvMsg also returns when its context
// ends. The reflection service waits for the next request in RecvMsg, which
// only the client's end of the stream or the stream's own end interrupts.
// The abandoned RecvMsg returns once the handler has returned and gRPC has
// ended the stream; what it reads is dropped. Reflection calls are few: a
// goroutine per request costs nothing that matters.
type cancellableRecv struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *cancellableRecv) Context() context.Context { return s.ctx }

func (s *cancellableRecv) RecvMsg(m any) error {
	done := make(chan error, 1)
	go func() { done <- s.ServerStream.RecvMsg(m) }()
	select {
	case err := <-done:
		return err
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}
