package remote

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/grpcclient"
	"github.com/pushmesh/pushmesh/servicekit/grpctest"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

type fakeAudienceServer struct {
	profilev1.UnimplementedProfileServiceServer
	QueryAudienceFunc func(*profilev1.QueryAudienceRequest, profilev1.ProfileService_QueryAudienceServer) error
}

func (f *fakeAudienceServer) QueryAudience(req *profilev1.QueryAudienceRequest, stream profilev1.ProfileService_QueryAudienceServer) error {
	return f.QueryAudienceFunc(req, stream)
}

// serveMembers streams n members in batches of 100, with attributes and a
// token each, as profilesvc does.
func serveMembers(n int) func(*profilev1.QueryAudienceRequest, profilev1.ProfileService_QueryAudienceServer) error {
	return func(req *profilev1.QueryAudienceRequest, stream profilev1.ProfileService_QueryAudienceServer) error {
		attrs, _ := structpb.NewStruct(map[string]any{"firstName": "Ada", "tier": "gold"})
		var batch []*profilev1.AudienceMember
		if req.GetCountOnly() {
			return stream.Send(&profilev1.QueryAudienceResponse{Stats: &profilev1.AudienceStats{Scanned: int64(n), Qualified: int64(n)}})
		}
		for i := range n {
			id := fmt.Sprintf("p%05d", i)
			batch = append(batch, &profilev1.AudienceMember{ProfileId: id, Attributes: attrs,
				Tokens: []*profilev1.PushToken{{Token: fmt.Sprintf("%064x", i), Platform: commonv1.Platform_PLATFORM_APNS, AppId: "com.x"}}})
			if len(batch) == 100 || i == n-1 {
				if err := stream.Send(&profilev1.QueryAudienceResponse{Members: batch, ResumeAfterProfileId: id,
					Stats: &profilev1.AudienceStats{Scanned: int64(i + 1), Qualified: int64(i + 1)}}); err != nil {
					return err
				}
				batch = nil
			}
		}
		return nil
	}
}

func TestAudienceQueryAndCount(t *testing.T) {
	var countOnly atomic.Bool
	fake := &fakeAudienceServer{QueryAudienceFunc: func(req *profilev1.QueryAudienceRequest, stream profilev1.ProfileService_QueryAudienceServer) error {
		countOnly.Store(req.GetCountOnly())
		return serveMembers(250)(req, stream)
	}}
	conn := grpctest.Start(t, func(s *grpc.Server) { profilev1.RegisterProfileServiceServer(s, fake) })
	a := &Audience{Client: profilev1.NewProfileServiceClient(conn)}
	ctx := tenant.With(context.Background(), "acme")

	var members int
	var last string
	err := a.Query(ctx, &profilev1.QueryAudienceRequest{}, func(resp *profilev1.QueryAudienceResponse) error {
		for _, m := range resp.GetMembers() {
			members++
			if m.GetAttributes().GetFields()["firstName"].GetStringValue() != "Ada" || len(m.GetTokens()) != 1 {
				t.Fatalf("member %s lost its attributes or token: %v", m.GetProfileId(), m)
			}
			last = m.GetProfileId()
		}
		return nil
	})
	if err != nil || members != 250 || last != "p00249" {
		t.Errorf("Query: got %d members up to %q (%v), want 250 up to p00249", members, last, err)
	}

	// Count asks for a count-only stream (the fake then sends no members)
	// without changing the caller's request.
	req := &profilev1.QueryAudienceRequest{Condition: "true"}
	n, err := a.Count(ctx, req)
	if err != nil || n != 250 {
		t.Errorf("Count: got %d, %v; want 250", n, err)
	}
	if !countOnly.Load() || req.GetCountOnly() {
		t.Errorf("Count: profilesvc got count_only=%v, caller's request changed: %v; want true and false", countOnly.Load(), req.GetCountOnly())
	}

	// Each stops the stream early with its error.
	stop := errors.New("enough")
	if err := a.Query(ctx, &profilev1.QueryAudienceRequest{}, func(*profilev1.QueryAudienceResponse) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Query with each failing: got %v, want its error", err)
	}
}

// profilesvc's verdict on a condition comes back on the journey's field, so
// a publisher learns what to fix; other failures pass through.
func TestAudienceErrors(t *testing.T) {
	fake := &fakeAudienceServer{}
	conn := grpctest.Start(t, func(s *grpc.Server) { profilev1.RegisterProfileServiceServer(s, fake) })
	a := &Audience{Client: profilev1.NewProfileServiceClient(conn)}
	ctx := context.Background()
	fake.QueryAudienceFunc = func(*profilev1.QueryAudienceRequest, profilev1.ProfileService_QueryAudienceServer) error {
		st, _ := status.New(codes.InvalidArgument, "bad condition").WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "condition", Description: "ERROR: <input>:1:15: Syntax error"},
			{Field: "platforms[0]", Description: "unknown platform"},
		}})
		return st.Err()
	}
	for name, call := range map[string]func() error{
		"query": func() error {
			return a.Query(ctx, &profilev1.QueryAudienceRequest{}, func(*profilev1.QueryAudienceResponse) error { return nil })
		},
		"count": func() error { _, err := a.Count(ctx, &profilev1.QueryAudienceRequest{}); return err },
	} {
		var ve *fault.ValidationError
		if err := call(); !errors.As(err, &ve) || len(ve.Violations) != 2 ||
			ve.Violations[0].Field != "journey.audience.condition" || ve.Violations[1].Field != "journey.audience.platforms[0]" {
			t.Errorf("%s: got %v, want violations on journey.audience.condition and journey.audience.platforms[0]", name, err)
		}
	}
	fake.QueryAudienceFunc = func(*profilev1.QueryAudienceRequest, profilev1.ProfileService_QueryAudienceServer) error {
		return status.Error(codes.Unavailable, "restarting")
	}
	err := a.Query(ctx, &profilev1.QueryAudienceRequest{}, func(*profilev1.QueryAudienceResponse) error { return nil })
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "profilesvc") || !strings.Contains(err.Error(), "restarting") {
		t.Errorf("unavailable: got %v, want Unavailable naming profilesvc, with its message", err)
	}
}

// profilesvc out of reach is Unavailable naming profilesvc and its address,
// so that deliverysvc's caller is not told deliverysvc is unreachable.
func TestAudienceProfilesvcDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	conn, err := grpcclient.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	a := &Audience{Client: profilev1.NewProfileServiceClient(conn), Addr: addr}
	_, err = a.Count(context.Background(), &profilev1.QueryAudienceRequest{})
	want := "cannot reach profilesvc at " + addr + " (deliverysvc --profile-addr)"
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), want) {
		t.Errorf("got %v, want Unavailable with %q", err, want)
	}
}
