package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	protov2 "google.golang.org/protobuf/proto"

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

// Count is the number of qualified profiles of q (excluded ones included).
// profilesvc has no count-only query, so it streams the audience; the
// members are skipped on the wire without being decoded, which makes a
// count far cheaper for deliverysvc than the run's own stream.
func (a *Audience) Count(ctx context.Context, q *profilev1.QueryAudienceRequest) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := a.Client.QueryAudience(ctx, q, grpc.ForceCodecV2(statsOnlyCodec{}))
	if err != nil {
		return 0, audienceError(err)
	}
	var n int64
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return 0, audienceError(err)
		}
		n = resp.GetStats().GetQualified()
	}
}

// statsOnlyCodec is the proto codec, except that a QueryAudienceResponse
// is decoded without its members: only the stats and the resume point.
type statsOnlyCodec struct{}

var protoCodec = encoding.GetCodecV2(proto.Name)

func (statsOnlyCodec) Name() string { return proto.Name }

func (statsOnlyCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }

func (statsOnlyCodec) Unmarshal(data mem.BufferSlice, v any) error {
	resp, ok := v.(*profilev1.QueryAudienceResponse)
	if !ok {
		return protoCodec.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	resp.Reset()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("audience response: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 2 && typ == protowire.BytesType: // stats
			raw, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("audience stats: %w", protowire.ParseError(n))
			}
			resp.Stats = &profilev1.AudienceStats{}
			if err := protov2.Unmarshal(raw, resp.Stats); err != nil {
				return err
			}
			b = b[n:]
		case num == 3 && typ == protowire.BytesType: // resume_after_profile_id
			raw, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("audience resume point: %w", protowire.ParseError(n))
			}
			resp.ResumeAfterProfileId = string(raw)
			b = b[n:]
		default: // members, and anything newer
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("audience response: %w", protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	return nil
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

func audienceError(err error) error {
	st, ok := status.FromError(err)
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
