// Package grpcapi is profilesvc's gRPC adapter: it validates requests,
// converts them to domain calls on the store, converts the results back, and
// maps domain errors to gRPC status in one place (Server.status).
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/audience"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/grpcserver"
)

// MaxFeedbackItems bounds one ReportTokenFeedback call.
const MaxFeedbackItems = 10_000

// errorTable maps the domain's sentinels to gRPC codes. A profile's cap
// reached is FailedPrecondition (see profile.MaxProfileTokens for why not
// ResourceExhausted).
var errorTable = []grpcserver.ErrorCode{
	{Err: profile.ErrNotFound, Code: codes.NotFound},
	{Err: profile.ErrAlreadyExists, Code: codes.AlreadyExists},
	{Err: profile.ErrLimit, Code: codes.FailedPrecondition},
	{Err: store.ErrClosed, Code: codes.Unavailable},
}

// Server implements profilev1.ProfileServiceServer over a Store.
type Server struct {
	profilev1.UnimplementedProfileServiceServer
	store   *store.Store
	log     *slog.Logger
	metrics *metrics
}

// New returns the service. Its metrics go to mp; nil: the global meter
// provider (which telemetry.Setup sets up for the binary).
func New(st *store.Store, log *slog.Logger, mp metric.MeterProvider) *Server {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m, err := newMetrics(mp)
	if err != nil {
		otel.Handle(err) // the instruments still work; only a bad name or unit errs
	}
	return &Server{store: st, log: log, metrics: m}
}

// Register registers the service on s.
func (s *Server) Register(gs *grpc.Server) {
	profilev1.RegisterProfileServiceServer(gs, s)
}

// status is the one place domain errors become gRPC status. Errors naming
// a field carry a BadRequest with it; a cap reached also carries a
// PreconditionFailure whose type is the cap's name (e.g.
// "MaxProfileTokens") and whose subject is the field.
func (s *Server) status(ctx context.Context, err error) error {
	out := grpcserver.Status(ctx, s.log, err, errorTable...)
	var le *profile.LimitError
	if errors.As(err, &le) {
		st := status.Convert(out)
		if d, derr := st.WithDetails(&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{{
			Type:        le.Limit,
			Subject:     le.Field(),
			Description: le.Reason(),
		}}}); derr == nil {
			return d.Err()
		}
	}
	return out
}

func (s *Server) now() int64 { return s.store.Now().UnixNano() }

// UpsertProfile implements the RPC.
func (s *Server) UpsertProfile(ctx context.Context, req *profilev1.UpsertProfileRequest) (*profilev1.UpsertProfileResponse, error) {
	var v fault.ValidationError
	var r profile.UpsertRequest
	if req.GetProfileId() != "" {
		r.ID = parseID(&v, "profile_id", req.GetProfileId())
	}
	for i, idn := range req.GetIdentities() {
		d := identity(idn)
		profile.ValidateIdentity(&v, fmt.Sprintf("identities[%d]", i), d)
		r.Identities = append(r.Identities, d)
	}
	if n := len(req.GetIdentities()); n > profile.MaxProfileIdentities {
		v.Add("identities", "holds %d identities, more than the %d a profile keeps", n, profile.MaxProfileIdentities)
	}
	r.Attributes, _ = attributes(&v, "attributes", req.GetAttributes())
	r.ReplaceAttributes = req.GetReplaceAttributes()
	if c := req.GetConsent(); c != nil {
		if c.GetState() < 0 || c.GetState() > profilev1.ConsentState_CONSENT_STATE_OPTED_OUT {
			v.Add("consent.state", "unknown consent state %d", c.GetState())
		}
		now := s.now()
		r.Consent = &profile.ConsentUpdate{
			State: profile.Consent(c.GetState()),
			Time:  sourceTime(&v, "consent.update_time", c.GetUpdateTime(), now),
		}
	}
	if err := v.Err(); err != nil {
		return nil, s.status(ctx, err)
	}
	p, created, err := s.store.Upsert(ctx, r)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	out, err := profileProto(p)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &profilev1.UpsertProfileResponse{Profile: out, Created: created}, nil
}

// GetProfile implements the RPC.
func (s *Server) GetProfile(ctx context.Context, req *profilev1.GetProfileRequest) (*profilev1.GetProfileResponse, error) {
	var v fault.ValidationError
	r := ref(&v, "profile", req.GetProfile())
	if err := v.Err(); err != nil {
		return nil, s.status(ctx, err)
	}
	p, err := s.store.Get(ctx, r, "profile")
	if err != nil {
		return nil, s.status(ctx, err)
	}
	out, err := profileProto(p)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &profilev1.GetProfileResponse{Profile: out}, nil
}

// DeleteProfile implements the RPC.
func (s *Server) DeleteProfile(ctx context.Context, req *profilev1.DeleteProfileRequest) (*profilev1.DeleteProfileResponse, error) {
	var v fault.ValidationError
	r := ref(&v, "profile", req.GetProfile())
	if err := v.Err(); err != nil {
		return nil, s.status(ctx, err)
	}
	id, n, err := s.store.Delete(ctx, r, "profile")
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &profilev1.DeleteProfileResponse{ProfileId: id.String(), TokensDeleted: int32(n)}, nil
}

// RegisterPushToken implements the RPC.
func (s *Server) RegisterPushToken(ctx context.Context, req *profilev1.RegisterPushTokenRequest) (*profilev1.RegisterPushTokenResponse, error) {
	var v fault.ValidationError
	r := ref(&v, "profile", req.GetProfile())
	now := s.now()
	reg := profile.Registration{
		Key:      tokenKey(&v, "", req.GetToken(), req.GetPlatform(), req.GetAppId()),
		DeviceID: text(&v, "device_id", req.GetDeviceId(), profile.MaxDeviceIDLen),
		Device:   device(&v, "device", req.GetDevice()),
		Time:     sourceTime(&v, "source_time", req.GetSourceTime(), now),
		Source:   text(&v, "source", req.GetSource(), profile.MaxSourceLen),
	}
	reg.Env = environment(&v, "apns_environment", reg.Key.Platform, req.GetApnsEnvironment())
	if reg.Source == "" {
		reg.Source = "register"
	}
	if err := v.Err(); err != nil {
		return nil, s.status(ctx, err)
	}
	res, err := s.store.Register(ctx, r, "profile", reg)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	s.metrics.tokenRegistered(ctx, reg.Key.Platform, res.RegisterResult)
	return &profilev1.RegisterPushTokenResponse{
		Token:          tokenProto(&res.Token, false),
		Outcome:        profilev1.RegistrationOutcome(res.Outcome),
		ReplacedTokens: res.Replaced,
	}, nil
}

// UnregisterPushToken implements the RPC.
func (s *Server) UnregisterPushToken(ctx context.Context, req *profilev1.UnregisterPushTokenRequest) (*profilev1.UnregisterPushTokenResponse, error) {
	var v fault.ValidationError
	k := tokenKey(&v, "", req.GetToken(), req.GetPlatform(), req.GetAppId())
	reason := profile.ReasonUninstalled
	switch rs := req.GetReason(); rs {
	case profilev1.InactiveReason_INACTIVE_REASON_UNSPECIFIED:
	case profilev1.InactiveReason_INACTIVE_REASON_UNINSTALLED, profilev1.InactiveReason_INACTIVE_REASON_STALE,
		profilev1.InactiveReason_INACTIVE_REASON_UNREGISTERED, profilev1.InactiveReason_INACTIVE_REASON_BAD_TOKEN:
		reason = profile.InactiveReason(rs)
	case profilev1.InactiveReason_INACTIVE_REASON_REPLACED:
		v.Add("reason", "REPLACED is decided by token rotation (a newer token for the same app and device), not set by callers")
	default:
		v.Add("reason", "unknown inactive reason %d", rs)
	}
	if err := v.Err(); err != nil {
		return nil, s.status(ctx, err)
	}
	t, deactivated, err := s.store.Unregister(ctx, k, reason)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	if deactivated {
		s.metrics.tokensDeactivated(ctx, k.Platform, reason, 1)
	}
	return &profilev1.UnregisterPushTokenResponse{Token: tokenProto(&t, false)}, nil
}

// ListPushTokens implements the RPC.
func (s *Server) ListPushTokens(ctx context.Context, req *profilev1.ListPushTokensRequest) (*profilev1.ListPushTokensResponse, error) {
	var v fault.ValidationError
	r := ref(&v, "profile", req.GetProfile())
	apps := make(map[string]bool, len(req.GetAppIds()))
	for i, a := range req.GetAppIds() {
		if err := profile.ValidateAppID(a); err != nil {
			v.Add(fmt.Sprintf("app_ids[%d]", i), "%v", err)
		}
		apps[a] = true
	}
	if err := v.Err(); err != nil {
		return nil, s.status(ctx, err)
	}
	tokens, err := s.store.Tokens(ctx, r, "profile")
	if err != nil {
		return nil, s.status(ctx, err)
	}
	resp := &profilev1.ListPushTokensResponse{}
	for i := range tokens { // already ordered by app id, then token
		t := &tokens[i]
		if (len(apps) > 0 && !apps[t.AppID]) || (!req.GetIncludeInactive() && !t.Active()) {
			continue
		}
		resp.Tokens = append(resp.Tokens, tokenProto(t, req.GetIncludeHistory()))
	}
	return resp, nil
}

// ImportTokens implements the RPC. Invalid rows are counted and reported,
// never fatal; valid rows are written in big batched transactions while the
// stream keeps arriving.
func (s *Server) ImportTokens(stream grpc.ClientStreamingServer[profilev1.ImportTokensRequest, profilev1.ImportTokensResponse]) error {
	ctx := stream.Context()
	im := s.store.StartImport(ctx)
	var index int64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.metrics.imported(ctx, im.Abort())
			return err
		}
		now := s.now()
		for _, r := range req.GetRows() {
			row, verr := importRow(r, now)
			if verr != nil {
				im.Reject(index, verr.Field, verr.Description)
			} else if err := im.Add(row); err != nil {
				s.metrics.imported(ctx, im.Abort())
				return s.status(ctx, err)
			}
			index++
		}
	}
	c, err := im.Finish()
	s.metrics.imported(ctx, c) // batches written before an error stay written
	if err != nil {
		return s.status(ctx, err)
	}
	resp := &profilev1.ImportTokensResponse{
		Rows:            c.Rows,
		Created:         c.Created,
		Updated:         c.Updated,
		Moved:           c.Moved,
		Unchanged:       c.Unchanged,
		Rejected:        c.Rejected,
		ProfilesCreated: c.ProfilesCreated,
	}
	for _, rr := range c.RejectedRows {
		resp.RejectedRows = append(resp.RejectedRows, &profilev1.RejectedRow{Index: rr.Index, Field: rr.Field, Reason: rr.Reason})
	}
	return stream.SendAndClose(resp)
}

// importRow validates one CRM row; the violation names a field of the row.
func importRow(r *profilev1.ImportRow, now int64) (profile.ImportRow, *fault.FieldViolation) {
	var v fault.ValidationError
	row := profile.ImportRow{
		CustomerID: r.GetCustomerId(),
		Reg: profile.Registration{
			Key:      tokenKey(&v, "", r.GetToken(), r.GetPlatform(), r.GetAppId()),
			DeviceID: text(&v, "device_id", r.GetDeviceId(), profile.MaxDeviceIDLen),
			Source:   "import",
		},
	}
	if err := profile.ValidateIdentityValue(row.CustomerID); err != nil {
		v.Add("customer_id", "%v", err)
	}
	if r.GetSourceTime() == nil {
		v.Add("source_time", "is required: the newest row wins by this time")
	} else {
		row.Reg.Time = sourceTime(&v, "source_time", r.GetSourceTime(), now)
	}
	row.Reg.Env = environment(&v, "apns_environment", row.Reg.Key.Platform, r.GetApnsEnvironment())
	row.Attributes, row.AttrSize = attributes(&v, "attributes", r.GetAttributes())
	if len(v.Violations) > 0 {
		return row, &v.Violations[0]
	}
	return row, nil
}

// QueryAudience implements the RPC.
func (s *Server) QueryAudience(req *profilev1.QueryAudienceRequest, stream grpc.ServerStreamingServer[profilev1.QueryAudienceResponse]) error {
	ctx := stream.Context()
	var v fault.ValidationError
	q := audience.Query{
		AppIDs:                 req.GetAppIds(),
		RequireExplicitConsent: req.GetRequireExplicitConsent(),
		BatchSize:              int(req.GetBatchSize()),
		Limit:                  req.GetLimit(),
		CountOnly:              req.GetCountOnly(),
	}
	for i, a := range req.GetAppIds() {
		if err := profile.ValidateAppID(a); err != nil {
			v.Add(fmt.Sprintf("app_ids[%d]", i), "%v", err)
		}
	}
	for i, p := range req.GetPlatforms() {
		q.Platforms = append(q.Platforms, platform(&v, fmt.Sprintf("platforms[%d]", i), p))
	}
	if after := req.GetStartAfterProfileId(); after != "" {
		q.StartAfter, q.HasStart = parseID(&v, "start_after_profile_id", after), true
	}
	if err := q.Validate(); err != nil {
		var qv *fault.ValidationError
		if errors.As(err, &qv) {
			v.Violations = append(v.Violations, qv.Violations...)
		}
	}
	q.Fields = memberFields(&v, req.GetMemberFields())
	cond, err := audience.Compile(req.GetCondition())
	if err != nil {
		var cv *fault.ValidationError
		if !errors.As(err, &cv) {
			return s.status(ctx, err)
		}
		v.Violations = append(v.Violations, cv.Violations...)
	}
	if err := v.Err(); err != nil {
		return s.status(ctx, err)
	}
	q.Condition = cond
	return s.status(ctx, streamAudience(ctx, s.store, q, stream, s.metrics))
}

// streamAudience runs the query and sends its batches. Encoding members to
// protobuf costs about as much as finding them, so a second goroutine
// converts and sends each batch while the scan looks for the next one (at
// most one batch waits between them, keeping memory bounded).
func streamAudience(ctx context.Context, sc audience.Scanner, q audience.Query, stream grpc.ServerStreamingServer[profilev1.QueryAudienceResponse], m *metrics) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan *audience.Batch, 1)
	sent := make(chan error, 1)
	go func() {
		var err error
		for b := range batches {
			if err != nil {
				continue // drain after a failed send; the scan is being cancelled
			}
			var resp *profilev1.QueryAudienceResponse
			if resp, err = audienceResponse(b); err == nil {
				err = stream.Send(resp)
			}
			if err == nil {
				m.streamed(ctx, len(resp.Members))
			}
			if err != nil {
				cancel()
			}
		}
		sent <- err
	}()
	runErr := audience.Run(ctx, sc, q, func(b *audience.Batch) error {
		select {
		case batches <- b:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	close(batches)
	if sendErr := <-sent; sendErr != nil {
		return sendErr
	}
	return runErr
}

func audienceResponse(b *audience.Batch) (*profilev1.QueryAudienceResponse, error) {
	resp := &profilev1.QueryAudienceResponse{
		Members: make([]*profilev1.AudienceMember, len(b.Members)),
		Stats:   statsProto(&b.Stats),
	}
	for i := range b.Members {
		m, err := memberProto(&b.Members[i])
		if err != nil {
			return nil, err
		}
		resp.Members[i] = m
	}
	if !b.ResumeAfter.IsZero() {
		resp.ResumeAfterProfileId = b.ResumeAfter.String()
	}
	return resp, nil
}

// ReportTokenFeedback implements the RPC.
func (s *Server) ReportTokenFeedback(ctx context.Context, req *profilev1.ReportTokenFeedbackRequest) (*profilev1.ReportTokenFeedbackResponse, error) {
	var v fault.ValidationError
	if n := len(req.GetFeedback()); n > MaxFeedbackItems {
		v.Add("feedback", "holds %d verdicts, more than %d", n, MaxFeedbackItems)
		return nil, s.status(ctx, v.Err())
	}
	now := s.now()
	items := make([]store.FeedbackItem, 0, len(req.GetFeedback()))
	for i, f := range req.GetFeedback() {
		prefix := fmt.Sprintf("feedback[%d].", i)
		it := store.FeedbackItem{Key: tokenKey(&v, prefix, f.GetToken(), f.GetPlatform(), f.GetAppId())}
		it.Reason = feedbackReason(&v, prefix+"reason", f.GetReason())
		it.At = sourceTime(&v, prefix+"gateway_time", f.GetGatewayTime(), now)
		items = append(items, it)
	}
	if err := v.Err(); err != nil {
		return nil, s.status(ctx, err)
	}
	c, err := s.store.Feedback(ctx, items)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	s.metrics.feedback(ctx, items, c)
	return &profilev1.ReportTokenFeedbackResponse{
		Deactivated: int32(c.Deactivated),
		Unchanged:   int32(c.Unchanged),
		Unknown:     int32(c.Unknown),
	}, nil
}

// feedbackReason maps a gateway verdict to why the token stops: the app is
// gone (UNREGISTERED), or the gateway rejects the token itself (BAD_TOKEN).
func feedbackReason(v *fault.ValidationError, field string, r profilev1.FeedbackReason) profile.InactiveReason {
	switch r {
	case profilev1.FeedbackReason_FEEDBACK_REASON_UNREGISTERED:
		return profile.ReasonUnregistered
	case profilev1.FeedbackReason_FEEDBACK_REASON_BAD_DEVICE_TOKEN,
		profilev1.FeedbackReason_FEEDBACK_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC,
		profilev1.FeedbackReason_FEEDBACK_REASON_EXPIRED_TOKEN:
		return profile.ReasonBadToken
	case profilev1.FeedbackReason_FEEDBACK_REASON_UNSPECIFIED:
		v.Add(field, "is required")
	default:
		v.Add(field, "unknown feedback reason %d", r)
	}
	return profile.ReasonNone
}
