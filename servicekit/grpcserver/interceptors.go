package grpcserver

import (
	"context"
	"log/slog"
	"runtime/debug"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// tenantFromMetadata scopes ctx to the tenant named in the request metadata.
func tenantFromMetadata(ctx context.Context) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(tenant.MetadataKey)
	if len(vals) == 0 {
		return tenant.With(ctx, tenant.Default), nil
	}
	id := vals[0]
	if err := tenant.Validate(id); err != nil {
		st := status.New(codes.InvalidArgument, err.Error())
		if d, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{
			Field: "metadata." + tenant.MetadataKey, Description: err.Error(),
		}}}); derr == nil {
			st = d
		}
		return nil, st.Err()
	}
	return tenant.With(ctx, id), nil
}

func tenantUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := tenantFromMetadata(ctx)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// tenantStream scopes a stream to its tenant and gives it the server's drain
// context (see EndOnShutdown); the health and reflection watch streams end
// when the shutdown begins.
func tenantStream(drain context.Context) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := tenantFromMetadata(ss.Context())
		if err != nil {
			return err
		}
		cs := &contextStream{ServerStream: ss, ctx: context.WithValue(ctx, drainKey{}, drain)}
		if handled, err := watchStream(srv, cs, info.FullMethod, handler); handled {
			return err
		}
		return handler(srv, cs)
	}
}

// contextStream replaces a stream's context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// recoverUnary turns a handler panic into Internal instead of crashing the
// whole service, and logs the stack.
func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				log.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error; see the service log")
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				log.ErrorContext(ss.Context(), "panic in handler", "method", info.FullMethod, "panic", r, "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error; see the service log")
			}
		}()
		return handler(srv, ss)
	}
}
