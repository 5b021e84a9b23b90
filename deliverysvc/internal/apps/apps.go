// Package apps registers apps and their gateway credentials, validates the
// credentials live against the gateway, stores them encrypted, and keeps one
// live gateway sender per app for the delivery pipeline. Credential errors
// seen while sending suspend an app; updating and validating its credentials
// resumes it. A credential error of credentials that a rotation replaces
// (or is replacing) does not suspend the app: the push is retried with the
// new ones.
package apps

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// Sentinel errors.
var (
	ErrNotFound      = errors.New("app not found")
	ErrAlreadyExists = errors.New("app already registered")
)

// DefaultRateLimit is an app's send rate when it sets none: FCM's default
// quota of 600,000 messages per minute.
const DefaultRateLimit = 10_000

// MaxRateLimit bounds an app's rate limit.
const MaxRateLimit = 1_000_000

// State says whether an app can send.
type State int

// States.
const (
	StateUnspecified State = iota
	StateActive
	StateSuspended
)

// App is a registered app, without its credentials.
type App struct {
	Key             delivery.AppKey
	DisplayName     string
	APNsEnvironment commonv1.ApnsEnvironment
	State           State
	SuspendedReason commonv1.FailureReason
	SuspendedDetail string
	// RateLimit is in messages per second; 0 means DefaultRateLimit.
	RateLimit       int32
	Credentials     creds.Info
	CredentialsTime time.Time
	CreateTime      time.Time
	UpdateTime      time.Time
	ValidateTime    time.Time
}

// RawCredentials are credentials as given by a caller, not yet parsed.
type RawCredentials struct {
	APNs *RawAPNs
	FCM  *RawFCM
}

// RawAPNs is APNs token authentication as given.
type RawAPNs struct{ KeyPEM, KeyID, TeamID string }

// RawFCM is a service-account JSON file as given.
type RawFCM struct{ JSON string }

// Sender is a live gateway connection for one app. Close releases its idle
// connections once the app no longer uses it; a Send that still arrives
// after Close (a message holding an old App value) must work anyway.
type Sender interface {
	delivery.Sender
	Close()
}

// Gateways checks credentials live and opens senders; see package gateway.
type Gateways interface {
	// Check proves the gateway accepts the credentials. It returns a
	// *creds.RejectedError when the gateway refuses them and an error
	// wrapping creds.ErrUnavailable when it cannot be asked.
	Check(ctx context.Context, key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) error
	// Open builds the app's sender. It must not need the network.
	Open(key delivery.AppKey, env commonv1.ApnsEnvironment, c creds.Credentials) (Sender, error)
}

// Service runs the app operations and serves the pipeline's app lookups
// (delivery.Apps). It is safe for concurrent use.
type Service struct {
	store    *Store
	gateways Gateways
	log      *slog.Logger
	now      func() time.Time

	mu   sync.RWMutex
	live map[string]*liveApp // tenant \x00 platform \x00 app id
	// rotating counts the UpdateCredentials calls checking new credentials
	// for an app (by live key), so a credential error of the credentials
	// about to be replaced is retried instead of failing the push.
	rotating map[string]int

	locks keyedMutex
}

// liveApp is an app loaded for sending.
type liveApp struct {
	app     App
	sender  *leasedSender
	limiter *rate.Limiter
}

// NewService returns the app service over store.
func NewService(store *Store, gateways Gateways, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{store: store, gateways: gateways, log: log, now: time.Now, live: make(map[string]*liveApp), rotating: make(map[string]int)}
}

func liveKey(tenantID string, key delivery.AppKey) string {
	return tenantID + "\x00" + platformSlug(key.Platform) + "\x00" + key.AppID
}

// RegisterInput is a new app.
type RegisterInput struct {
	Key             delivery.AppKey
	DisplayName     string
	APNsEnvironment commonv1.ApnsEnvironment
	Credentials     RawCredentials
	RateLimit       int32
}

// validateKey checks an app key; field is its path, e.g. "key".
func validateKey(v *fault.ValidationError, field string, key delivery.AppKey) {
	switch key.Platform {
	case commonv1.Platform_PLATFORM_APNS, commonv1.Platform_PLATFORM_FCM:
	default:
		v.Add(field+".platform", "must be PLATFORM_APNS or PLATFORM_FCM, got %s", key.Platform)
	}
	id := key.AppID
	if id == "" {
		v.Add(field+".app_id", "required: the bundle id (APNs) or package name (FCM)")
		return
	}
	if len(id) > 255 {
		v.Add(field+".app_id", "at most 255 characters, got %d", len(id))
		return
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			v.Add(field+".app_id", "a bundle id or package name is letters, digits, '.', '-' and '_', got %q at %d", c, i)
			return
		}
	}
}

// ValidateKey checks an app key alone; field is its path.
func ValidateKey(key delivery.AppKey, field string) error {
	v := &fault.ValidationError{}
	validateKey(v, field, key)
	return v.Err()
}

// parseCredentials parses raw credentials for platform; field is their
// path, e.g. "credentials".
func parseCredentials(v *fault.ValidationError, field string, platform commonv1.Platform, raw RawCredentials) creds.Credentials {
	var c creds.Credentials
	switch {
	case raw.APNs == nil && raw.FCM == nil:
		v.Add(field, "required: apns_token for an APNs app, fcm_service_account for an FCM app")
		return c
	case raw.APNs != nil && platform != commonv1.Platform_PLATFORM_APNS:
		v.Add(field+".apns_token", "APNs credentials given for a %s app", platform)
		return c
	case raw.FCM != nil && platform != commonv1.Platform_PLATFORM_FCM:
		v.Add(field+".fcm_service_account", "FCM credentials given for a %s app", platform)
		return c
	}
	var err error
	if raw.APNs != nil {
		c.APNs, err = creds.ParseAPNs(raw.APNs.KeyPEM, raw.APNs.KeyID, raw.APNs.TeamID, field+".apns_token")
	} else {
		c.FCM, err = creds.ParseFCM(raw.FCM.JSON, field+".fcm_service_account.service_account_json")
	}
	var ve *fault.ValidationError
	if errors.As(err, &ve) {
		v.Violations = append(v.Violations, ve.Violations...)
	} else if err != nil {
		v.Add(field, "%v", err)
	}
	return c
}

// Register validates and stores a new app. Its credentials must pass the
// live check.
func (s *Service) Register(ctx context.Context, in RegisterInput) (App, error) {
	v := &fault.ValidationError{}
	validateKey(v, "key", in.Key)
	if len(in.DisplayName) > 200 {
		v.Add("display_name", "at most 200 characters, got %d", len(in.DisplayName))
	}
	env := in.APNsEnvironment
	switch {
	case in.Key.Platform == commonv1.Platform_PLATFORM_FCM && env != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_UNSPECIFIED:
		v.Add("apns_environment", "only APNs apps have an APNs environment")
	case env == commonv1.ApnsEnvironment_APNS_ENVIRONMENT_UNSPECIFIED && in.Key.Platform == commonv1.Platform_PLATFORM_APNS:
		env = commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION
	case env != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_UNSPECIFIED && env != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX && env != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION:
		v.Add("apns_environment", "unknown environment %d", env)
	}
	if in.RateLimit < 0 || in.RateLimit > MaxRateLimit {
		v.Add("rate_limit_per_second", "must be between 0 (the default, %d/s) and %d, got %d", DefaultRateLimit, MaxRateLimit, in.RateLimit)
	}
	c := parseCredentials(v, "credentials", in.Key.Platform, in.Credentials)
	if err := v.Err(); err != nil {
		return App{}, err
	}

	tenantID := tenant.FromContext(ctx)
	unlock := s.locks.lock(liveKey(tenantID, in.Key))
	defer unlock()
	if _, _, err := s.store.Get(tenantID, in.Key); err == nil {
		return App{}, fault.OnField(ErrAlreadyExists, "key", "%s app %q is already registered", platformName(in.Key.Platform), in.Key.AppID)
	} else if !errors.Is(err, ErrNotFound) {
		return App{}, err
	}
	if err := s.gateways.Check(ctx, in.Key, env, c); err != nil {
		return App{}, checkError(err)
	}
	sender, err := s.gateways.Open(in.Key, env, c)
	if err != nil {
		return App{}, fmt.Errorf("open gateway: %w", err)
	}
	now := s.now()
	app := App{
		Key:             in.Key,
		DisplayName:     in.DisplayName,
		APNsEnvironment: env,
		State:           StateActive,
		RateLimit:       in.RateLimit,
		Credentials:     c.Info(),
		CredentialsTime: now,
		CreateTime:      now,
		UpdateTime:      now,
		ValidateTime:    now,
	}
	if err := s.store.Create(tenantID, &app, c); err != nil {
		sender.Close()
		if errors.Is(err, ErrAlreadyExists) {
			return App{}, fault.OnField(ErrAlreadyExists, "key", "%s app %q is already registered", platformName(in.Key.Platform), in.Key.AppID)
		}
		return App{}, err
	}
	s.install(tenantID, app, sender, false)
	s.log.InfoContext(ctx, "app registered", "tenant", tenantID, "platform", platformSlug(in.Key.Platform), "app_id", in.Key.AppID, "fingerprint", app.Credentials.Fingerprint)
	return app, nil
}

// checkError turns a failed live check into the service's error: rejected
// credentials stay *creds.RejectedError (FailedPrecondition), an unreachable
// gateway wraps creds.ErrUnavailable.
func checkError(err error) error {
	var rej *creds.RejectedError
	if errors.As(err, &rej) {
		return rej
	}
	if errors.Is(err, creds.ErrUnavailable) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: %v", creds.ErrUnavailable, err)
}

// Get returns an app.
func (s *Service) Get(ctx context.Context, key delivery.AppKey) (App, error) {
	if err := ValidateKey(key, "key"); err != nil {
		return App{}, err
	}
	app, _, err := s.store.Get(tenant.FromContext(ctx), key)
	if errors.Is(err, ErrNotFound) {
		return App{}, notFound(key)
	}
	return app, err
}

func notFound(key delivery.AppKey) error {
	return fault.OnField(ErrNotFound, "key", "%s app %q is not registered", platformName(key.Platform), key.AppID)
}

// Page limits of List.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// List returns a page of the tenant's apps, by platform then app id, and
// the token of the next page ("" at the end).
func (s *Service) List(ctx context.Context, pageSize int32, pageToken string) ([]App, string, error) {
	v := &fault.ValidationError{}
	switch {
	case pageSize < 0:
		v.Add("page_size", "must not be negative, got %d", pageSize)
	case pageSize == 0:
		pageSize = DefaultPageSize
	case pageSize > MaxPageSize:
		pageSize = MaxPageSize
	}
	var after *delivery.AppKey
	if pageToken != "" {
		k, err := decodePageToken(pageToken)
		if err != nil {
			v.Add("page_token", "not a token from a previous ListApps response")
		}
		after = &k
	}
	if err := v.Err(); err != nil {
		return nil, "", err
	}
	apps, more, err := s.store.List(tenant.FromContext(ctx), after, int(pageSize))
	if err != nil {
		return nil, "", err
	}
	next := ""
	if more && len(apps) > 0 {
		next = encodePageToken(apps[len(apps)-1].Key)
	}
	return apps, next, nil
}

func encodePageToken(k delivery.AppKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(platformSlug(k.Platform) + "\x00" + k.AppID))
}

func decodePageToken(tok string) (delivery.AppKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return delivery.AppKey{}, err
	}
	for i, c := range b {
		if c == 0 {
			p := platformFromSlug(string(b[:i]))
			if p == commonv1.Platform_PLATFORM_UNSPECIFIED {
				break
			}
			return delivery.AppKey{Platform: p, AppID: string(b[i+1:])}, nil
		}
	}
	return delivery.AppKey{}, errors.New("malformed page token")
}

// UpdateCredentials validates new credentials live and swaps them in: new
// sends use a sender built with them, sends in flight finish with the old
// one. An app suspended for credential errors is resumed.
func (s *Service) UpdateCredentials(ctx context.Context, key delivery.AppKey, raw RawCredentials) (App, error) {
	v := &fault.ValidationError{}
	validateKey(v, "key", key)
	c := parseCredentials(v, "credentials", key.Platform, raw)
	if err := v.Err(); err != nil {
		return App{}, err
	}
	tenantID := tenant.FromContext(ctx)
	unlock := s.locks.lock(liveKey(tenantID, key))
	defer unlock()
	current, _, err := s.store.Get(tenantID, key)
	if errors.Is(err, ErrNotFound) {
		return App{}, notFound(key)
	} else if err != nil {
		return App{}, err
	}
	// Usually the old key is revoked first, so the sends of the live check
	// (which can take seconds) are refused: they are retried, not failed.
	endRotation := s.startRotation(liveKey(tenantID, key))
	defer endRotation()
	if err := s.gateways.Check(ctx, key, current.APNsEnvironment, c); err != nil {
		return App{}, checkError(err)
	}
	// Built before the swap, so no send ever waits for a client.
	sender, err := s.gateways.Open(key, current.APNsEnvironment, c)
	if err != nil {
		return App{}, fmt.Errorf("open gateway: %w", err)
	}
	now := s.now()
	app, err := s.store.Update(tenantID, key, func(app *App, stored *creds.Credentials) error {
		*stored = c
		app.Credentials = c.Info()
		app.CredentialsTime, app.UpdateTime, app.ValidateTime = now, now, now
		app.State, app.SuspendedReason, app.SuspendedDetail = StateActive, commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED, ""
		return nil
	})
	if err != nil {
		sender.Close()
		if errors.Is(err, ErrNotFound) {
			return App{}, notFound(key)
		}
		return App{}, err
	}
	s.install(tenantID, app, sender, true)
	s.log.InfoContext(ctx, "app credentials updated", "tenant", tenantID, "platform", platformSlug(key.Platform), "app_id", key.AppID, "fingerprint", app.Credentials.Fingerprint)
	return app, nil
}

// Delete removes an app; sends in flight finish.
func (s *Service) Delete(ctx context.Context, key delivery.AppKey) error {
	if err := ValidateKey(key, "key"); err != nil {
		return err
	}
	tenantID := tenant.FromContext(ctx)
	unlock := s.locks.lock(liveKey(tenantID, key))
	defer unlock()
	if err := s.store.Delete(tenantID, key); err != nil {
		if errors.Is(err, ErrNotFound) {
			return notFound(key)
		}
		return err
	}
	s.mu.Lock()
	old := s.live[liveKey(tenantID, key)]
	delete(s.live, liveKey(tenantID, key))
	s.mu.Unlock()
	if old != nil {
		old.sender.retire(false)
	}
	s.log.InfoContext(ctx, "app deleted", "tenant", tenantID, "platform", platformSlug(key.Platform), "app_id", key.AppID)
	return nil
}

// Validate re-checks an app's stored credentials against the gateway. A
// suspended app that passes is resumed. Credentials the gateway refuses
// suspend the app (durably) and return the gateway's *creds.RejectedError,
// as Register does; an unreachable gateway returns an error wrapping
// creds.ErrUnavailable and changes nothing.
func (s *Service) Validate(ctx context.Context, key delivery.AppKey) (App, error) {
	if err := ValidateKey(key, "key"); err != nil {
		return App{}, err
	}
	tenantID := tenant.FromContext(ctx)
	unlock := s.locks.lock(liveKey(tenantID, key))
	defer unlock()
	current, c, err := s.store.Get(tenantID, key)
	if errors.Is(err, ErrNotFound) {
		return App{}, notFound(key)
	} else if err != nil {
		return App{}, err
	}
	if err := s.gateways.Check(ctx, key, current.APNsEnvironment, c); err != nil {
		var rej *creds.RejectedError
		if errors.As(err, &rej) {
			if _, err := s.suspend(ctx, tenantID, key, rej.Reason, rej.Detail); err != nil {
				return App{}, err
			}
		}
		return App{}, checkError(err)
	}
	now := s.now()
	app, err := s.store.Update(tenantID, key, func(a *App, _ *creds.Credentials) error {
		if a.State != StateActive {
			a.State, a.SuspendedReason, a.SuspendedDetail = StateActive, commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED, ""
			a.UpdateTime = now
		}
		a.ValidateTime = now
		return nil
	})
	if err != nil {
		return App{}, err
	}
	if current.State != StateActive {
		s.log.InfoContext(ctx, "app resumed", "tenant", tenantID, "platform", platformSlug(key.Platform), "app_id", key.AppID)
	}
	s.setLiveApp(tenantID, app)
	return app, nil
}

// App implements delivery.Apps: the app's live sender, loaded on first use.
func (s *Service) App(ctx context.Context, key delivery.AppKey) (delivery.App, error) {
	tenantID := tenant.FromContext(ctx)
	lk := liveKey(tenantID, key)
	s.mu.RLock()
	la := s.live[lk]
	s.mu.RUnlock()
	if la == nil {
		var err error
		if la, err = s.load(tenantID, key); err != nil {
			return delivery.App{}, err
		}
	}
	a := &la.app
	return delivery.App{
		Key:             key,
		APNsEnvironment: a.APNsEnvironment,
		Suspended:       a.State == StateSuspended,
		SuspendedReason: a.SuspendedReason,
		SuspendedDetail: a.SuspendedDetail,
		Limiter:         la.limiter,
		Sender:          la.sender,
	}, nil
}

// load reads an app from the store and opens its sender.
func (s *Service) load(tenantID string, key delivery.AppKey) (*liveApp, error) {
	app, c, err := s.store.Get(tenantID, key)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %s app %q", delivery.ErrAppNotFound, platformName(key.Platform), key.AppID)
	} else if err != nil {
		return nil, err
	}
	sender, err := s.gateways.Open(key, app.APNsEnvironment, c)
	if err != nil {
		return nil, fmt.Errorf("open gateway for %s app %q: %w", platformName(key.Platform), key.AppID, err)
	}
	lk := liveKey(tenantID, key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if la := s.live[lk]; la != nil {
		// Loaded concurrently: keep the first.
		sender.Close()
		return la, nil
	}
	la := &liveApp{app: app, sender: s.lease(lk, sender), limiter: newLimiter(app.RateLimit)}
	s.live[lk] = la
	return la, nil
}

func newLimiter(perSecond int32) *rate.Limiter {
	r := int(perSecond)
	if r <= 0 {
		r = DefaultRateLimit
	}
	// A second's worth of burst: FCM's quota is per minute, so short bursts
	// are fine, and a burst at least as big as a batch keeps WaitN simple.
	return rate.NewLimiter(rate.Limit(r), r)
}

// install makes a new sender current for an app and retires the old one
// once its in-flight sends end; rotation says the new sender has new
// credentials, so the old one's credential errors are stale.
func (s *Service) install(tenantID string, app App, sender Sender, rotation bool) {
	lk := liveKey(tenantID, app.Key)
	s.mu.Lock()
	old := s.live[lk]
	la := &liveApp{app: app, sender: s.lease(lk, sender)}
	if old != nil && old.app.RateLimit == app.RateLimit {
		la.limiter = old.limiter // keep the rate's history across a rotation
	} else {
		la.limiter = newLimiter(app.RateLimit)
	}
	s.live[lk] = la
	s.mu.Unlock()
	if old != nil {
		old.sender.retire(rotation)
	}
}

// lease wraps an app's new sender; lk is the app's live key.
func (s *Service) lease(lk string, sender Sender) *leasedSender {
	return &leasedSender{inner: sender, rotating: func() bool {
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.rotating[lk] > 0
	}}
}

// startRotation marks new credentials of an app as being checked until the
// returned func is called.
func (s *Service) startRotation(lk string) (end func()) {
	s.mu.Lock()
	s.rotating[lk]++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		if s.rotating[lk]--; s.rotating[lk] == 0 {
			delete(s.rotating, lk)
		}
		s.mu.Unlock()
	}
}

// setLiveApp refreshes the metadata (state) of a loaded app.
func (s *Service) setLiveApp(tenantID string, app App) {
	lk := liveKey(tenantID, app.Key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.live[lk]; old != nil {
		s.live[lk] = &liveApp{app: app, sender: old.sender, limiter: old.limiter}
	}
}

// Suspend implements delivery.Apps: it marks the app suspended, durably,
// unless it already is. The pipeline calls it after its Send returned a
// credential error, and it suspends only when the app's current sender
// returned one: an error of credentials that a rotation has replaced since
// (e.g. while Suspend waited for the rotation's lock) must not suspend the
// new ones.
func (s *Service) Suspend(ctx context.Context, key delivery.AppKey, reason commonv1.FailureReason, detail string) error {
	tenantID := tenant.FromContext(ctx)
	lk := liveKey(tenantID, key)
	s.mu.RLock()
	la := s.live[lk]
	s.mu.RUnlock()
	if la != nil && la.app.State == StateSuspended {
		return nil
	}
	unlock := s.locks.lock(lk)
	defer unlock()
	s.mu.RLock()
	la = s.live[lk]
	s.mu.RUnlock()
	if la == nil || !la.sender.refusedCredentials() {
		s.log.InfoContext(ctx, "credential error ignored: not from the app's current credentials", "tenant", tenantID,
			"platform", platformSlug(key.Platform), "app_id", key.AppID, "reason", reason.String())
		return nil
	}
	_, err := s.suspend(ctx, tenantID, key, reason, detail)
	if errors.Is(err, ErrNotFound) {
		return nil // deleted meanwhile: nothing to suspend
	}
	return err
}

// suspend stores the suspension and updates the live app. The key lock
// must be held.
func (s *Service) suspend(ctx context.Context, tenantID string, key delivery.AppKey, reason commonv1.FailureReason, detail string) (App, error) {
	changed := false
	now := s.now()
	app, err := s.store.Update(tenantID, key, func(a *App, _ *creds.Credentials) error {
		if a.State == StateSuspended {
			return nil
		}
		changed = true
		a.State, a.SuspendedReason, a.SuspendedDetail, a.UpdateTime = StateSuspended, reason, detail, now
		return nil
	})
	if err != nil {
		return App{}, err
	}
	s.setLiveApp(tenantID, app)
	if changed {
		// The stored detail: the store redacts credential identifiers.
		s.log.WarnContext(ctx, "app suspended: the gateway rejected its credentials", "tenant", tenantID,
			"platform", platformSlug(key.Platform), "app_id", key.AppID, "reason", reason.String(), "detail", app.SuspendedDetail)
	}
	return app, nil
}

func platformName(p commonv1.Platform) string {
	switch p {
	case commonv1.Platform_PLATFORM_APNS:
		return "APNs"
	case commonv1.Platform_PLATFORM_FCM:
		return "FCM"
	}
	return p.String()
}

// leasedSender counts the sends using a sender, so a retired sender closes
// only after they end. It also tells stale credential errors from current
// ones: a credential error of a sender whose credentials were replaced while
// the push was in flight, or are being replaced, becomes a retryable
// attempt, so the pipeline sends the push again with the app's current
// sender instead of failing it and suspending the app.
type leasedSender struct {
	inner Sender
	// rotating reports whether new credentials for the app are being
	// checked (UpdateCredentials).
	rotating func() bool

	mu      sync.Mutex
	active  int
	retired bool
	rotated bool // retired because new credentials replaced this sender's
	closed  bool
	// refused records that a credential error was returned as such, for
	// Suspend.
	refused bool
}

func (l *leasedSender) Send(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
	l.mu.Lock()
	l.active++
	l.mu.Unlock()
	defer l.end()
	attempts := l.inner.Send(ctx, pushes)
	l.screenCredentialErrors(attempts)
	return attempts
}

// staleRetryDetail follows the gateway's words in a credential error made
// retryable.
const staleRetryDetail = "; the credentials it was sent with are being replaced: retrying with the app's current credentials"

// screenCredentialErrors turns the credential errors of attempts into
// retryable ones when this sender's credentials are replaced or being
// replaced, and records them otherwise.
func (l *leasedSender) screenCredentialErrors(attempts []delivery.Attempt) {
	first := -1
	for i := range attempts {
		if delivery.ClassOf(attempts[i].Reason) == delivery.ClassCredentials {
			first = i
			break
		}
	}
	if first < 0 {
		return
	}
	l.mu.Lock()
	stale := l.rotated
	l.mu.Unlock()
	if !stale && l.rotating != nil {
		stale = l.rotating()
	}
	if !stale {
		l.mu.Lock()
		l.refused = true
		l.mu.Unlock()
		return
	}
	for i := first; i < len(attempts); i++ {
		a := &attempts[i]
		if delivery.ClassOf(a.Reason) == delivery.ClassCredentials {
			// GATEWAY_UNAVAILABLE: the gateway did not take the push for a
			// reason that the next attempt does not have. It is what the
			// message reports should its TTL end before a retry.
			a.Reason = commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE
			a.Detail += staleRetryDetail
			a.RetryAfter = 0
		}
	}
}

// refusedCredentials reports whether this sender has returned a credential
// error.
func (l *leasedSender) refusedCredentials() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

func (l *leasedSender) end() {
	l.mu.Lock()
	l.active--
	closeNow := l.retired && l.active == 0 && !l.closed
	if closeNow {
		l.closed = true
	}
	l.mu.Unlock()
	if closeNow {
		l.inner.Close()
	}
}

// retire closes the sender once its sends end; rotated says new credentials
// replace it.
func (l *leasedSender) retire(rotated bool) {
	l.mu.Lock()
	l.retired = true
	l.rotated = l.rotated || rotated
	closeNow := l.active == 0 && !l.closed
	if closeNow {
		l.closed = true
	}
	l.mu.Unlock()
	if closeNow {
		l.inner.Close()
	}
}

// Close retires every live sender (at shutdown).
func (s *Service) Close() {
	s.mu.Lock()
	live := s.live
	s.live = make(map[string]*liveApp)
	s.mu.Unlock()
	for _, la := range live {
		la.sender.retire(false)
	}
}

// keyedMutex serializes the admin operations on one app (a live check can
// take seconds) without blocking the others.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = make(map[string]*keyLock)
	}
	l := k.locks[key]
	if l == nil {
		l = &keyLock{}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
