package grpcapi

import (
	"errors"
	"io"
	"mime"
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// MaxHTTPBody bounds one POST /v1/events body: a full TrackRequest of 1000
// events fits, a runaway client does not.
const MaxHTTPBody = 4 << 20

// EventsPath is the HTTP endpoint for mobile SDKs.
const EventsPath = "/v1/events"

var httpTracer = otel.Tracer("github.com/pushmesh/pushmesh/trackingsvc/internal/grpcapi")

// HTTPHandler serves `POST /v1/events` for mobile SDKs: a TrackRequest in its
// protobuf JSON mapping in, a TrackResponse out, with the same rules as the
// Track RPC. The tenant comes from the x-pushmesh-tenant header. Errors
// answer the HTTP status matching the gRPC code (as google.api's HTTP
// mapping does) with a google.rpc.Status JSON body: code, message and
// details (e.g. the BadRequest naming the field).
func (s *Server) HTTPHandler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != EventsPath {
		writeStatus(w, status.Newf(codes.NotFound, "no such endpoint %q; events go to POST %s", r.URL.Path, EventsPath))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, status.Newf(codes.Unimplemented, "method %s not allowed; use POST", r.Method).Proto())
		return
	}
	// Continue the SDK's trace if it sent a traceparent header.
	ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := httpTracer.Start(ctx, "POST "+EventsPath, trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()

	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); r.Header.Get("Content-Type") != "" && (err != nil || mt != "application/json") {
		writeJSON(w, http.StatusUnsupportedMediaType, status.Newf(codes.InvalidArgument, "content type %q: want application/json", r.Header.Get("Content-Type")).Proto())
		return
	}
	if id := r.Header.Get(tenant.MetadataKey); id != "" {
		if err := tenant.Validate(id); err != nil {
			writeStatus(w, status.New(codes.InvalidArgument, err.Error()))
			return
		}
		ctx = tenant.With(ctx, id)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxHTTPBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeJSON(w, http.StatusRequestEntityTooLarge, status.Newf(codes.InvalidArgument, "request body over %d bytes: send fewer events per request", MaxHTTPBody).Proto())
		return
	case err != nil:
		writeStatus(w, status.Newf(codes.InvalidArgument, "read request body: %v", err))
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
		http.Error(w, `{"code":13,"message":"encode response"}`, http.StatusInternalServerError)
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
		return 499 // the client closed the request, as nginx and google.api say
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
