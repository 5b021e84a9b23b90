package cli

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// answeredError is a gRPC status the service itself sent, as opposed to one
// the client made up because it could not reach the service. Both can be
// Unavailable: deliverysvc answers Unavailable when profilesvc or a gateway
// is down, and then saying "cannot reach deliverysvc" would send the user to
// the wrong service.
type answeredError struct{ err error }

func (e *answeredError) Error() string              { return e.err.Error() }
func (e *answeredError) Unwrap() error              { return e.err }
func (e *answeredError) GRPCStatus() *status.Status { return status.Convert(e.err) }

// markAnswered wraps err, a status, as answered when the call reached the
// service (it had a transport stream, so a peer). io.EOF and other
// non-status errors pass unchanged.
func markAnswered(err error, reached bool) error {
	if err == nil || !reached {
		return err
	}
	if _, ok := status.FromError(err); !ok {
		return err
	}
	return &answeredError{err: err}
}

// answeredByServer reports whether err is a status the service sent.
func answeredByServer(err error) bool {
	for err != nil {
		if _, ok := err.(*answeredError); ok {
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func answeredUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var p peer.Peer
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
	return markAnswered(err, p.Addr != nil)
}

func answeredStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &answeredClientStream{ClientStream: cs}, nil
}

// answeredClientStream marks the stream's failures as answered once it had
// a transport stream: its context then carries the peer.
type answeredClientStream struct{ grpc.ClientStream }

func (s *answeredClientStream) reached() bool {
	_, ok := peer.FromContext(s.ClientStream.Context())
	return ok
}

func (s *answeredClientStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	return markAnswered(err, err != nil && s.reached())
}

func (s *answeredClientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	return markAnswered(err, err != nil && s.reached())
}

func (s *answeredClientStream) CloseSend() error {
	err := s.ClientStream.CloseSend()
	return markAnswered(err, err != nil && s.reached())
}
