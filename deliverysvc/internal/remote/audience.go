package remote

import (
	"context"
	"errors"
	"io"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Audience streams journey audiences from profilesvc's QueryAudience
// (journey.Audience).
type Audience struct {
	Client profilev1.ProfileServiceClient
}

// Query calls each for every response batch. profilesvc's verdict on the
// request (a condition that does not compile) comes back as a validation
// error on the journey's field, so the publisher learns what to fix.
func (a *Audience) Query(ctx context.Context, q *profilev1.QueryAudienceRequest, each func(*profilev1.QueryAudienceResponse) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the stream when each gives up early
	stream, err := a.Client.QueryAudience(ctx, q)
	if err != nil {
		return audienceError(err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return audienceError(err)
		}
		if err := each(resp); err != nil {
			return err
		}
	}
}

func audienceError(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return err
	}
	v := &fault.ValidationError{}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, fv := range br.GetFieldViolations() {
				field := fv.GetField()
				switch field {
				case "condition", "require_explicit_consent":
					field = "journey.audience." + field
				case "app_ids", "platforms":
					field = "journey." + field
				}
				v.Add(field, "%s", fv.GetDescription())
			}
		}
	}
	if len(v.Violations) == 0 {
		v.Add("journey.audience.condition", "%s", st.Message())
	}
	return v
}
