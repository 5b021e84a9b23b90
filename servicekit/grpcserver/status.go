package grpcserver

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// ErrorCode maps one domain sentinel error to a gRPC code.
type ErrorCode struct {
	Err  error
	Code codes.Code
}

// Status converts a domain error into a gRPC status error. Each service calls
// it from exactly one place with its own table of sentinels:
//
//   - a *fault.ValidationError → InvalidArgument with a BadRequest listing
//     every field violation;
//   - an error matching a sentinel in table → that code; if the error names a
//     field (fault.OnField), a BadRequest with that field is attached;
//   - a *fault.RetryAfterError → ResourceExhausted (unless the table says
//     otherwise) with RetryInfo;
//   - context cancellation and deadlines → Canceled / DeadlineExceeded;
//   - an error that already is a status passes through;
//   - anything else → Internal, logged, with a generic message so internals
//     do not leak to callers.
func Status(ctx context.Context, logger *slog.Logger, err error, table ...ErrorCode) error {
	if err == nil {
		return nil
	}
	var ve *fault.ValidationError
	if errors.As(err, &ve) {
		st := status.New(codes.InvalidArgument, err.Error())
		br := &errdetails.BadRequest{}
		for _, v := range ve.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Description})
		}
		return withDetails(st, br)
	}
	for _, m := range table {
		if errors.Is(err, m.Err) {
			return domainStatus(err, m.Code)
		}
	}
	var ra *fault.RetryAfterError
	if errors.As(err, &ra) {
		return domainStatus(err, codes.ResourceExhausted)
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	if logger != nil {
		logger.ErrorContext(ctx, "internal error", "err", err)
	}
	return status.Error(codes.Internal, "internal error; see the service log")
}

func domainStatus(err error, code codes.Code) error {
	st := status.New(code, err.Error())
	var details []protoadapt.MessageV1
	if field, ok := fault.FieldOf(err); ok {
		details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: err.Error()}}})
	}
	var ra *fault.RetryAfterError
	if errors.As(err, &ra) {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(ra.After)})
	}
	return withDetails(st, details...)
}

func withDetails(st *status.Status, details ...protoadapt.MessageV1) error {
	if len(details) == 0 {
		return st.Err()
	}
	withD, err := st.WithDetails(details...)
	if err != nil {
		return st.Err()
	}
	return withD.Err()
}
