package grpcapi

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// AppServer implements deliveryv1.AppServiceServer over apps.Service.
type AppServer struct {
	deliveryv1.UnimplementedAppServiceServer
	Apps *apps.Service
	Log  *slog.Logger
}

func appKey(k *deliveryv1.AppKey) delivery.AppKey {
	return delivery.AppKey{Platform: k.GetPlatform(), AppID: k.GetAppId()}
}

func rawCredentials(c *deliveryv1.Credentials) apps.RawCredentials {
	var raw apps.RawCredentials
	switch k := c.GetKind().(type) {
	case *deliveryv1.Credentials_ApnsToken:
		raw.APNs = &apps.RawAPNs{KeyPEM: k.ApnsToken.GetPrivateKeyPem(), KeyID: k.ApnsToken.GetKeyId(), TeamID: k.ApnsToken.GetTeamId()}
	case *deliveryv1.Credentials_FcmServiceAccount:
		raw.FCM = &apps.RawFCM{JSON: k.FcmServiceAccount.GetServiceAccountJson()}
	}
	return raw
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// appProto shows an app with credential fingerprints only.
func appProto(a apps.App) *deliveryv1.App {
	state := deliveryv1.AppState_APP_STATE_ACTIVE
	if a.State == apps.StateSuspended {
		state = deliveryv1.AppState_APP_STATE_SUSPENDED
	}
	return &deliveryv1.App{
		Key:                &deliveryv1.AppKey{Platform: a.Key.Platform, AppId: a.Key.AppID},
		DisplayName:        a.DisplayName,
		ApnsEnvironment:    a.APNsEnvironment,
		State:              state,
		SuspendedReason:    a.SuspendedReason,
		SuspendedDetail:    a.SuspendedDetail,
		RateLimitPerSecond: a.RateLimit,
		Credentials: &deliveryv1.CredentialsInfo{
			Fingerprint: a.Credentials.Fingerprint,
			KeyId:       a.Credentials.KeyID,
			TeamId:      a.Credentials.TeamID,
			ProjectId:   a.Credentials.ProjectID,
			ClientEmail: a.Credentials.ClientEmail,
			UpdateTime:  timestamp(a.CredentialsTime),
		},
		CreateTime:   timestamp(a.CreateTime),
		UpdateTime:   timestamp(a.UpdateTime),
		ValidateTime: timestamp(a.ValidateTime),
	}
}

// RegisterApp implements deliveryv1.AppServiceServer.
func (s *AppServer) RegisterApp(ctx context.Context, req *deliveryv1.RegisterAppRequest) (*deliveryv1.RegisterAppResponse, error) {
	app, err := s.Apps.Register(ctx, apps.RegisterInput{
		Key:             appKey(req.GetKey()),
		DisplayName:     req.GetDisplayName(),
		APNsEnvironment: req.GetApnsEnvironment(),
		Credentials:     rawCredentials(req.GetCredentials()),
		RateLimit:       req.GetRateLimitPerSecond(),
	})
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.RegisterAppResponse{App: appProto(app)}, nil
}

// GetApp implements deliveryv1.AppServiceServer.
func (s *AppServer) GetApp(ctx context.Context, req *deliveryv1.GetAppRequest) (*deliveryv1.GetAppResponse, error) {
	app, err := s.Apps.Get(ctx, appKey(req.GetKey()))
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.GetAppResponse{App: appProto(app)}, nil
}

// ListApps implements deliveryv1.AppServiceServer.
func (s *AppServer) ListApps(ctx context.Context, req *deliveryv1.ListAppsRequest) (*deliveryv1.ListAppsResponse, error) {
	list, next, err := s.Apps.List(ctx, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	out := &deliveryv1.ListAppsResponse{NextPageToken: next, Apps: make([]*deliveryv1.App, len(list))}
	for i, a := range list {
		out.Apps[i] = appProto(a)
	}
	return out, nil
}

// UpdateAppCredentials implements deliveryv1.AppServiceServer.
func (s *AppServer) UpdateAppCredentials(ctx context.Context, req *deliveryv1.UpdateAppCredentialsRequest) (*deliveryv1.UpdateAppCredentialsResponse, error) {
	app, err := s.Apps.UpdateCredentials(ctx, appKey(req.GetKey()), rawCredentials(req.GetCredentials()))
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.UpdateAppCredentialsResponse{App: appProto(app)}, nil
}

// DeleteApp implements deliveryv1.AppServiceServer.
func (s *AppServer) DeleteApp(ctx context.Context, req *deliveryv1.DeleteAppRequest) (*deliveryv1.DeleteAppResponse, error) {
	if err := s.Apps.Delete(ctx, appKey(req.GetKey())); err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.DeleteAppResponse{}, nil
}

// ValidateApp implements deliveryv1.AppServiceServer. Credentials the
// gateway refuses answer FailedPrecondition with the gateway's reason, as in
// RegisterApp (the app is suspended meanwhile), so a response always has
// valid set.
func (s *AppServer) ValidateApp(ctx context.Context, req *deliveryv1.ValidateAppRequest) (*deliveryv1.ValidateAppResponse, error) {
	app, err := s.Apps.Validate(ctx, appKey(req.GetKey()))
	if err != nil {
		return nil, Status(ctx, s.Log, err)
	}
	return &deliveryv1.ValidateAppResponse{App: appProto(app), Valid: true}, nil
}
