package grpcapi

import (
	"io"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// maxHTTPBody bounds one POST /v1/events body.
const maxHTTPBody = 1 << 20

// HTTPHandler serves `POST /v1/events` for mobile SDKs: a TrackRequest in its
// protobuf JSON mapping in, a TrackResponse out. The tenant comes from the
// x-pushmesh-tenant header. Errors answer the HTTP status matching the gRPC
// code with a google.rpc.Status JSON body (code, message, details).
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/events", s.postEvents)
	return mux
}

func (s *Server) postEvents(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if id := r.Header.Get(tenant.MetadataKey); id != "" {
		if err := tenant.Validate(id); err != nil {
			writeStatus(w, status.New(codes.InvalidArgument, err.Error()))
			return
		}
		ctx = tenant.With(ctx, id)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxHTTPBody))
	if err != nil {
		writeStatus(w, status.Newf(codes.ResourceExhausted, "request body over %d bytes: split the events", maxHTTPBody))
		return
	}
	var req trackingv1.TrackRequest
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &req); err != nil {
		writeStatus(w, status.Newf(codes.InvalidArgument, "body is not a TrackRequest in protobuf JSON: %v", err))
		return
	}
	resp, err := s.Track(ctx, &req)
	if err != nil {
		writeStatus(w, status.Convert(err))
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func writeStatus(w http.ResponseWriter, st *status.Status) {
	writeJSON(w, httpStatus(st.Code()), st.Proto())
}

func writeJSON(w http.ResponseWriter, code int, m proto.Message) {
	b, err := protojson.Marshal(m)
	if err != nil {
		http.Error(w, "encode response", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// httpStatus maps a gRPC code to HTTP as google.api's HTTP mapping does.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Canceled:
		return 499
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Unimplemented:
		return http.StatusNotImplemented
	default:
		return http.StatusInternalServerError
	}
}
