package cli

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	trackingv1 "github.com/pushmesh/pushmesh/gen/pushmesh/tracking/v1"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/tlsconfig"
)

// Env is what a command runs with: its output streams, the global flags and
// lazily dialed connections to the services.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	Global Globals
	// Terminal is true when stderr is a terminal: progress is drawn as a bar.
	Terminal bool
	// Now is the clock.
	Now func() time.Time

	cmd   *Command
	conns map[service]*grpc.ClientConn
	// tlsConfig is what the connections dial with, read from the --tls-*
	// files on the first dial (nil: plaintext).
	tlsConfig *tls.Config
	tlsRead   bool
}

// service names a pushmesh service, for dialing and for error messages.
type service int

const (
	profileSvc service = iota
	deliverySvc
	trackingSvc
)

func (s service) String() string {
	return [...]string{"profilesvc", "deliverysvc", "trackingsvc"}[s]
}

func (e *Env) addr(s service) string {
	switch s {
	case profileSvc:
		return e.Global.ProfileAddr
	case deliverySvc:
		return e.Global.DeliveryAddr
	default:
		return e.Global.TrackingAddr
	}
}

// conn dials a service once; the connection is made on the first call.
func (e *Env) conn(s service) (*grpc.ClientConn, error) {
	if c, ok := e.conns[s]; ok {
		return c, nil
	}
	if !e.tlsRead {
		// pushctl keeps no log: a certificate changing on disk during a
		// command is not worth a line.
		cfg, err := tlsconfig.NewClient(e.Global.tlsFiles(), slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, usagef(nil, "%v", err)
		}
		e.tlsConfig, e.tlsRead = cfg, true
	}
	c, err := grpcclient.Dial(e.addr(s), grpcclient.TransportCredentials(e.tlsConfig),
		grpc.WithChainUnaryInterceptor(answeredUnary), grpc.WithChainStreamInterceptor(answeredStream))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s, err)
	}
	if e.conns == nil {
		e.conns = map[service]*grpc.ClientConn{}
	}
	e.conns[s] = c
	return c, nil
}

func (e *Env) close() {
	for _, c := range e.conns {
		c.Close()
	}
}

// Profiles is the ProfileService client.
func (e *Env) Profiles() (profilev1.ProfileServiceClient, error) {
	c, err := e.conn(profileSvc)
	if err != nil {
		return nil, err
	}
	return profilev1.NewProfileServiceClient(c), nil
}

// Apps is the AppService client.
func (e *Env) Apps() (deliveryv1.AppServiceClient, error) {
	c, err := e.conn(deliverySvc)
	if err != nil {
		return nil, err
	}
	return deliveryv1.NewAppServiceClient(c), nil
}

// Journeys is the JourneyService client.
func (e *Env) Journeys() (deliveryv1.JourneyServiceClient, error) {
	c, err := e.conn(deliverySvc)
	if err != nil {
		return nil, err
	}
	return deliveryv1.NewJourneyServiceClient(c), nil
}

// Tracking is the TrackingService client.
func (e *Env) Tracking() (trackingv1.TrackingServiceClient, error) {
	c, err := e.conn(trackingSvc)
	if err != nil {
		return nil, err
	}
	return trackingv1.NewTrackingServiceClient(c), nil
}

// unary calls one RPC of svc under the --timeout deadline and attaches the
// service to a failure, so the error message can say which one to check.
func unary[Req, Resp any](ctx context.Context, e *Env, svc service, method func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	if e.Global.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.Global.Timeout)
		defer cancel()
	}
	resp, err := method(ctx, req)
	if err != nil {
		var zero Resp
		return zero, e.rpcError(svc, err)
	}
	return resp, nil
}

// rpcError wraps a failed call with the service it went to.
func (e *Env) rpcError(svc service, err error) error {
	return &rpcError{service: svc.String(), addr: e.addr(svc), timeout: e.Global.Timeout, tls: e.Global.tlsFiles().Enabled(), err: err}
}

var (
	jsonDoc  = protojson.MarshalOptions{Multiline: true, Indent: "  "}
	jsonLine = protojson.MarshalOptions{}
)

// printJSON writes one protojson document (the --json output of a command).
func (e *Env) printJSON(m proto.Message) error {
	b, err := jsonDoc.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %T: %w", m, err)
	}
	_, err = fmt.Fprintf(e.Stdout, "%s\n", b)
	return err
}

// printJSONLine writes one message as a single line (streams, JSON lines).
func (e *Env) printJSONLine(m proto.Message) error {
	b, err := jsonLine.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %T: %w", m, err)
	}
	_, err = fmt.Fprintf(e.Stdout, "%s\n", b)
	return err
}

// print writes text output.
func (e *Env) print(s string) {
	io.WriteString(e.Stdout, s)
}

// printf writes formatted text output.
func (e *Env) printf(format string, args ...any) {
	fmt.Fprintf(e.Stdout, format, args...)
}
