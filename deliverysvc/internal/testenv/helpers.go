package testenv

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"sync"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// Apple-style ids used by the helpers.
const (
	TeamID = "TEAM123456"
	KeyID  = "KEY1234567"
)

// APNsApp is an APNs app registered with the emulator and deliverysvc.
type APNsApp struct {
	BundleID string
	TeamID   string
	KeyID    string
	P8       []byte
	Key      *ecdsa.PrivateKey
	App      *deliveryv1.App
}

// NewAPNsKey makes a provider key known to the emulator and lets its team
// push to bundleID.
func (e *Env) NewAPNsKey(teamID, keyID, bundleID string) (p8 []byte, key *ecdsa.PrivateKey, err error) {
	p8, key, err = e.APNs.NewProviderKey(teamID, keyID)
	if err != nil {
		return nil, nil, err
	}
	e.APNs.RegisterTopic(teamID, bundleID)
	return p8, key, nil
}

// APNsCredentials wraps a .p8 key as API credentials.
func APNsCredentials(p8 []byte, keyID, teamID string) *deliveryv1.Credentials {
	return &deliveryv1.Credentials{Kind: &deliveryv1.Credentials_ApnsToken{ApnsToken: &deliveryv1.ApnsTokenCredentials{
		PrivateKeyPem: string(p8), KeyId: keyID, TeamId: teamID,
	}}}
}

// FCMCredentials wraps a service-account JSON as API credentials.
func FCMCredentials(saJSON []byte) *deliveryv1.Credentials {
	return &deliveryv1.Credentials{Kind: &deliveryv1.Credentials_FcmServiceAccount{FcmServiceAccount: &deliveryv1.FcmServiceAccount{
		ServiceAccountJson: string(saJSON),
	}}}
}

// RegisterAPNsApp registers bundleID with a new emulator key (team TeamID,
// key KeyID) in the tenant of ctx.
func (e *Env) RegisterAPNsApp(ctx context.Context, bundleID string, rateLimit int32) (*APNsApp, error) {
	p8, key, err := e.NewAPNsKey(TeamID, KeyID, bundleID)
	if err != nil {
		return nil, err
	}
	res, err := e.Apps.RegisterApp(ctx, &deliveryv1.RegisterAppRequest{
		Key:                &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_APNS, AppId: bundleID},
		DisplayName:        bundleID,
		ApnsEnvironment:    commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX,
		Credentials:        APNsCredentials(p8, KeyID, TeamID),
		RateLimitPerSecond: rateLimit,
	})
	if err != nil {
		return nil, fmt.Errorf("register APNs app %s: %w", bundleID, err)
	}
	return &APNsApp{BundleID: bundleID, TeamID: TeamID, KeyID: KeyID, P8: p8, Key: key, App: res.GetApp()}, nil
}

// FCMApp is an FCM app registered with the emulator and deliverysvc.
type FCMApp struct {
	PackageName string
	ProjectID   string
	SAJSON      []byte
	App         *deliveryv1.App
}

// RegisterFCMApp registers packageName with a new service account of
// projectID in the tenant of ctx.
func (e *Env) RegisterFCMApp(ctx context.Context, packageName, projectID string, rateLimit int32) (*FCMApp, error) {
	saJSON, _, err := e.FCM.NewServiceAccount(projectID)
	if err != nil {
		return nil, err
	}
	res, err := e.Apps.RegisterApp(ctx, &deliveryv1.RegisterAppRequest{
		Key:                &deliveryv1.AppKey{Platform: commonv1.Platform_PLATFORM_FCM, AppId: packageName},
		DisplayName:        packageName,
		Credentials:        FCMCredentials(saJSON),
		RateLimitPerSecond: rateLimit,
	})
	if err != nil {
		return nil, fmt.Errorf("register FCM app %s: %w", packageName, err)
	}
	return &FCMApp{PackageName: packageName, ProjectID: projectID, SAJSON: saJSON, App: res.GetApp()}, nil
}

// APNsToken is the i-th test device token: 64 hex digits.
func APNsToken(i int) string { return fmt.Sprintf("%064x", 0xa0000000+i) }

// FCMToken is the i-th test registration token.
func FCMToken(i int) string { return fmt.Sprintf("fcm-device-%06d", i) }

// TokensMessage is a message to explicit tokens.
func TokensMessage(key string, n *deliveryv1.Notification, tokens ...*deliveryv1.TokenTarget) *deliveryv1.Message {
	return &deliveryv1.Message{
		IdempotencyKey: key,
		Target:         &deliveryv1.Message_Tokens{Tokens: &deliveryv1.TokensTarget{Tokens: tokens}},
		Notification:   n,
	}
}

// APNsTarget is an explicit APNs token of app.
func APNsTarget(token, app string) *deliveryv1.TokenTarget {
	return &deliveryv1.TokenTarget{Token: token, Platform: commonv1.Platform_PLATFORM_APNS, AppId: app}
}

// FCMTarget is an explicit FCM token of app.
func FCMTarget(token, app string) *deliveryv1.TokenTarget {
	return &deliveryv1.TokenTarget{Token: token, Platform: commonv1.Platform_PLATFORM_FCM, AppId: app}
}

// SendOutcome is everything a Send stream answered.
type SendOutcome struct {
	Results   []*deliveryv1.SendResult
	Completed []string
	// Err is the stream's final status (nil when it ended cleanly).
	Err error
}

// ByKey returns the results of one idempotency key.
func (o *SendOutcome) ByKey(key string) []*deliveryv1.SendResult {
	var out []*deliveryv1.SendResult
	for _, r := range o.Results {
		if r.GetIdempotencyKey() == key {
			out = append(out, r)
		}
	}
	return out
}

// Send opens a Send stream in the tenant of ctx, sends the batches, closes
// its side and reads every response until the stream ends.
func (e *Env) Send(ctx context.Context, batches ...[]*deliveryv1.Message) (*SendOutcome, error) {
	stream, err := e.Delivery.Send(ctx)
	if err != nil {
		return nil, err
	}
	out := &SendOutcome{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			res, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				out.Err = err
				return
			}
			out.Results = append(out.Results, res.GetResults()...)
			out.Completed = append(out.Completed, res.GetCompletedKeys()...)
		}
	}()
	var sendErr error
	for _, b := range batches {
		if sendErr = stream.Send(&deliveryv1.SendRequest{Messages: b}); sendErr != nil {
			break // the stream ended; Recv reports why
		}
	}
	closeErr := stream.CloseSend()
	wg.Wait()
	if out.Err == nil && closeErr != nil {
		return out, closeErr
	}
	return out, nil
}
