package remote

import (
	"context"
	"errors"
	"io"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	protov2 "google.golang.org/protobuf/proto"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Audience streams journey audiences from profilesvc's QueryAudience
// (journey.Audience).
type Audience struct {
	Client profilev1.ProfileServiceClient
	// Addr is profilesvc's address (--profile-addr), named in the error when
	// profilesvc cannot be reached.
	Addr string
}

// Query calls each for every response batch. profilesvc's verdict on the
// request (a condition that does not compile) comes back as a validation
// error on the journey's field, so the publisher learns what to fix.
func (a *Audience) Query(ctx context.Context, q *profilev1.QueryAudienceRequest, each func(*profilev1.QueryAudienceResponse) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the stream when each gives up early
	stream, err := a.Client.QueryAudience(ctx, q)
	if err != nil {
		return a.error(err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return a.error(err)
		}
		if err := each(resp); err != nil {
			return err
		}
	}
}

// Count is the number of qualified profiles of q (excluded ones included),
// from a count-only query: profilesvc evaluates the condition but sends no
// members.
func (a *Audience) Count(ctx context.Context, q *profilev1.QueryAudienceRequest) (int64, error) {
	q = protov2.CloneOf(q)
	q.CountOnly = true
	var n int64
	err := a.Query(ctx, q, func(resp *profilev1.QueryAudienceResponse) error {
		n = resp.GetStats().GetQualified()
		return nil
	})
	return n, err
}

// journeyField maps a QueryAudienceRequest field to the Journey field it
// comes from.
func journeyField(f string) string {
	for _, p := range []struct{ prefix, journey string }{
		{"condition", "journey.audience.condition"},
		{"require_explicit_consent", "journey.audience.require_explicit_consent"},
		{"platforms", "journey.audience.platforms"},
		{"app_ids", "journey.app_ids"},
	} {
		if rest, ok := strings.CutPrefix(f, p.prefix); ok && (rest == "" || rest[0] == '[') {
			return p.journey + rest
		}
	}
	return f
}

// error converts a failed query. profilesvc's verdict on the request
// becomes a validation error on the journey's fields. profilesvc out of
// reach stays Unavailable (a retry may pass), but says so: passed through
// as is, gRPC's "connection error … dial tcp 127.0.0.1:7101" would read to
// deliverysvc's caller as its own failure to reach deliverysvc.
func (a *Audience) error(err error) error {
	st, ok := status.FromError(err)
	if ok && st.Code() == codes.Unavailable {
		return status.Errorf(codes.Unavailable, "cannot reach profilesvc at %s (deliverysvc --profile-addr): %s", a.Addr, st.Message())
	}
	if !ok || st.Code() != codes.InvalidArgument {
		return err
	}
	v := &fault.ValidationError{}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, fv := range br.GetFieldViolations() {
				v.Add(journeyField(fv.GetField()), "%s", fv.GetDescription())
			}
		}
	}
	if len(v.Violations) == 0 {
		v.Add("journey.audience.condition", "%s", st.Message())
	}
	return v
}
