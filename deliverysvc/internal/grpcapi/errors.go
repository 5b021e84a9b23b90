// Package grpcapi is deliverysvc's gRPC adapter: it converts between the
// protobuf API and the domain packages (apps, delivery, journey) and maps domain
// errors to gRPC statuses in one place (Status).
package grpcapi

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/journey"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// errorCodes maps deliverysvc's sentinels to gRPC codes.
var errorCodes = []grpcserver.ErrorCode{
	{Err: apps.ErrNotFound, Code: codes.NotFound},
	{Err: apps.ErrAlreadyExists, Code: codes.AlreadyExists},
	{Err: creds.ErrRejected, Code: codes.FailedPrecondition},
	{Err: creds.ErrUnavailable, Code: codes.Unavailable},
	{Err: delivery.ErrSessionClosed, Code: codes.FailedPrecondition},
	{Err: journey.ErrNotFound, Code: codes.NotFound},
	{Err: journey.ErrFinished, Code: codes.FailedPrecondition},
	{Err: journey.ErrAppUnavailable, Code: codes.FailedPrecondition},
	{Err: journey.ErrBadPageToken, Code: codes.InvalidArgument},
	{Err: errShuttingDown, Code: codes.Unavailable},
}

// Status converts a domain error into the gRPC status the client sees. It
// is the one place deliverysvc maps errors. Rejected credentials also carry
// a PreconditionFailure naming the gateway's reason.
func Status(ctx context.Context, log *slog.Logger, err error) error {
	out := grpcserver.Status(ctx, log, err, errorCodes...)
	var rej *creds.RejectedError
	if errors.As(err, &rej) {
		st := status.Convert(out)
		if d, derr := st.WithDetails(&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{{
			Type:        rej.Reason.String(),
			Subject:     "credentials",
			Description: rej.Detail,
		}}}); derr == nil {
			return d.Err()
		}
	}
	return out
}
