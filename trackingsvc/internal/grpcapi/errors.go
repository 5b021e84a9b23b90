package grpcapi

import (
	"context"

	"google.golang.org/grpc/codes"

	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
	"github.com/pushmesh/pushmesh/trackingsvc/internal/store"
)

// errorCodes maps trackingsvc's domain errors to gRPC codes: the one place.
var errorCodes = []grpcserver.ErrorCode{
	{Err: store.ErrBadPageToken, Code: codes.InvalidArgument},
	// A metrics query whose answer would be too large (names start_time).
	{Err: store.ErrTooManyBuckets, Code: codes.InvalidArgument},
	// A concurrent batch with some of the same ids failed: retry at once.
	{Err: store.ErrEarlierBatchFailed, Code: codes.Aborted},
}

func (s *Server) status(ctx context.Context, err error) error {
	return grpcserver.Status(ctx, s.Log, err, errorCodes...)
}
