package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// classifyAPNs maps an APNs answer to a failure reason.
func classifyAPNs(status int, reason string) commonv1.FailureReason {
	switch reason {
	case apns2.ReasonBadDeviceToken:
		return commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN
	case apns2.ReasonUnregistered:
		return commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
	case apns2.ReasonExpiredToken:
		return commonv1.FailureReason_FAILURE_REASON_EXPIRED_TOKEN
	case apns2.ReasonDeviceTokenNotForTopic:
		return commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC
	case apns2.ReasonPayloadTooLarge:
		return commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE
	case apns2.ReasonInvalidProviderToken, apns2.ReasonExpiredProviderToken, apns2.ReasonMissingProviderToken,
		apns2.ReasonBadCertificate, apns2.ReasonBadCertificateEnvironment, apns2.ReasonForbidden:
		return commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS
	case apns2.ReasonBadTopic, apns2.ReasonTopicDisallowed:
		return commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH
	case apns2.ReasonTooManyRequests, apns2.ReasonTooManyProviderTokenUpdates:
		return commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED
	case apns2.ReasonIdleTimeout:
		// The connection idled out; a new one will do.
		return commonv1.FailureReason_FAILURE_REASON_NETWORK
	}
	switch {
	case status == http.StatusTooManyRequests:
		return commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED
	case status >= 500:
		return commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE
	case status == http.StatusForbidden:
		return commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS
	case status == http.StatusGone:
		return commonv1.FailureReason_FAILURE_REASON_UNREGISTERED
	case status == http.StatusRequestEntityTooLarge:
		return commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE
	}
	return commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE
}

// apnsSender sends one app's pushes over a pool of apns2 clients per
// environment, all signing with one provider token.
type apnsSender struct {
	g      *Gateways
	key    delivery.AppKey
	env    commonv1.ApnsEnvironment // the app's default
	token  *token.Token
	sem    chan struct{}
	pools  [3]*apnsPool // by commonv1.ApnsEnvironment
	poolMu sync.Mutex
}

// apnsPool is several apns2 clients, each its own HTTP/2 connection, used
// round-robin: one connection tops out well below what a few can carry.
type apnsPool struct {
	clients []*apns2.Client
	next    atomic.Uint32
}

func (p *apnsPool) pick() *apns2.Client {
	return p.clients[int(p.next.Add(1))%len(p.clients)]
}

func (p *apnsPool) closeIdle() {
	for _, c := range p.clients {
		c.CloseIdleConnections()
	}
}

func (g *Gateways) apnsHost(env commonv1.ApnsEnvironment) string {
	sandbox := env == commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX
	switch {
	case sandbox && g.cfg.APNsSandboxURL != "":
		return strings.TrimSuffix(g.cfg.APNsSandboxURL, "/")
	case g.cfg.APNsURL != "":
		return strings.TrimSuffix(g.cfg.APNsURL, "/")
	case sandbox:
		return APNsSandboxURL
	}
	return APNsProductionURL
}

// newAPNsClient returns an apns2 token client for env, on one HTTP/2
// connection of its own (h2Conn). Its transport trusts the configured roots
// and records Retry-After, which apns2's Response does not carry.
func (g *Gateways) newAPNsClient(env commonv1.ApnsEnvironment, tok *token.Token) *apns2.Client {
	c := apns2.NewTokenClient(tok)
	c.Host = g.apnsHost(env)
	// No Client.Timeout: net/http enforces it with a goroutine per request
	// for transports it does not know (this wrapper); push sets a context
	// deadline instead.
	c.HTTPClient = &http.Client{
		Transport: &retryAfterTransport{base: &h2Conn{t: g.h2, addr: hostPort(c.Host)}, metrics: g.cfg.Metrics},
	}
	return c
}

// hostPort is the host:port of an https URL, 443 if it names no port.
func hostPort(rawURL string) string {
	host := strings.TrimPrefix(rawURL, "https://")
	if _, _, err := net.SplitHostPort(host); err != nil {
		return net.JoinHostPort(host, "443")
	}
	return host
}

func newToken(c *creds.APNs) *token.Token {
	// token.Token signs one JWT and reuses it for token.TokenTimeout (50
	// minutes): at least 20 minutes as Apple asks, and under the hour after
	// which Apple answers ExpiredProviderToken.
	return &token.Token{AuthKey: c.Key, KeyID: c.KeyID, TeamID: c.TeamID}
}

func (g *Gateways) openAPNs(key delivery.AppKey, env commonv1.ApnsEnvironment, c *creds.APNs) *apnsSender {
	return &apnsSender{g: g, key: key, env: env, token: newToken(c), sem: make(chan struct{}, g.cfg.APNsConcurrency)}
}

// pool returns the client pool of an environment, built on first use.
func (s *apnsSender) pool(env commonv1.ApnsEnvironment) *apnsPool {
	if env != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX && env != commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION {
		env = s.env
	}
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	if p := s.pools[env]; p != nil {
		return p
	}
	p := &apnsPool{clients: make([]*apns2.Client, s.g.cfg.APNsConnections)}
	for i := range p.clients {
		p.clients[i] = s.g.newAPNsClient(env, s.token)
	}
	s.pools[env] = p
	return p
}

// Close implements apps.Sender: idle connections close; later sends reopen.
func (s *apnsSender) Close() {
	s.poolMu.Lock()
	defer s.poolMu.Unlock()
	for _, p := range s.pools {
		if p != nil {
			p.closeIdle()
		}
	}
}

// apnsFanOut bounds the goroutines one Send call starts.
const apnsFanOut = 64

// Send implements delivery.Sender. A single push is made on the caller's
// goroutine and traced by the caller's message span; a fan-out gets its own
// span.
func (s *apnsSender) Send(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
	out := make([]delivery.Attempt, len(pushes))
	if len(pushes) == 1 {
		out[0] = s.push(ctx, &pushes[0])
		return out
	}
	ctx, span := s.g.tracer.Start(ctx, "apns.send", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("pushmesh.app_id", s.key.AppID),
		attribute.Int("pushmesh.pushes", len(pushes)),
	))
	defer span.End()
	{
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < min(len(pushes), apnsFanOut); w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= len(pushes) {
						return
					}
					out[i] = s.push(ctx, &pushes[i])
				}
			}()
		}
		wg.Wait()
	}
	failed := 0
	for i := range out {
		if out[i].Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
			failed++
		}
	}
	span.SetAttributes(attribute.Int("pushmesh.failed", failed))
	if failed > 0 {
		span.SetStatus(codes.Error, fmt.Sprintf("%d of %d pushes failed", failed, len(out)))
	}
	return out
}

// push makes one request.
func (s *apnsSender) push(ctx context.Context, p *delivery.Push) delivery.Attempt {
	if !s.acquire(ctx) {
		return delivery.Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_NETWORK, Detail: "not sent: " + ctx.Err().Error()}
	}
	defer func() { <-s.sem }()
	a := p.APNs
	n := apns2.Notification{
		DeviceToken: p.Target.Token,
		Topic:       a.Topic,
		Expiration:  a.Expiration,
		Priority:    a.Priority,
		PushType:    apns2.EPushType(a.PushType),
		CollapseID:  a.CollapseID,
		Payload:     a.Payload,
	}
	ra := &retryAfter{}
	// The request runs under the shared deadline, not under ctx: see
	// sharedDeadline. A message whose TTL ends first gets its own.
	reqCtx, deadline := s.g.deadlines.get(time.Now())
	ttlBound := !p.Deadline.IsZero() && p.Deadline.Before(deadline)
	cancel := context.CancelFunc(func() {})
	if ttlBound {
		reqCtx, cancel = context.WithDeadline(reqCtx, p.Deadline)
	}
	client := s.pool(p.Target.APNsEnvironment).pick()
	issued := s.tokenIssuedAt()
	res, err := client.PushWithContext(context.WithValue(reqCtx, retryAfterKey{}, ra), &n)
	if err == nil && res.Reason == apns2.ReasonExpiredProviderToken {
		// Apple judges a provider token's age by its own clock: with ours
		// minutes behind, apns2's 50-minute reuse reaches the hour Apple
		// allows. A fresh token, once, before the app is suspended over it.
		s.renewToken(issued)
		res, err = client.PushWithContext(context.WithValue(reqCtx, retryAfterKey{}, ra), &n)
	}
	cancel()
	if err != nil && ttlBound && errors.Is(err, context.DeadlineExceeded) {
		return delivery.Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_TTL_EXPIRED, Detail: "the message's TTL ran out while APNs had not answered"}
	}
	return apnsAttempt(res, err, ra.value())
}

// tokenIssuedAt is when the provider token now in use was signed.
func (s *apnsSender) tokenIssuedAt() int64 {
	s.token.Lock()
	defer s.token.Unlock()
	return s.token.IssuedAt
}

// renewToken makes the next push sign a new provider token, unless the one
// signed at issued was already replaced (by a concurrent push that was
// refused too: one renewal serves them all, and Apple refuses more than one
// new token per 20 minutes).
func (s *apnsSender) renewToken(issued int64) {
	s.token.Lock()
	defer s.token.Unlock()
	if s.token.IssuedAt == issued {
		s.token.IssuedAt = 0 // expired for GenerateIfExpired
	}
}

// acquire takes a slot of the sender's concurrency bound, or fails when ctx
// ends first. A free slot is taken without a two-way select, which is
// measurably dearer on every push.
func (s *apnsSender) acquire(ctx context.Context) bool {
	select {
	case s.sem <- struct{}{}:
		return true
	default:
	}
	select {
	case s.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func apnsAttempt(res *apns2.Response, err error, retry time.Duration) delivery.Attempt {
	if err != nil {
		return delivery.Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_NETWORK, Detail: "APNs request failed: " + cleanNetError(err)}
	}
	if res.StatusCode == http.StatusOK {
		return delivery.Attempt{GatewayID: res.ApnsID}
	}
	a := delivery.Attempt{
		Reason:     classifyAPNs(res.StatusCode, res.Reason),
		Detail:     fmt.Sprintf("APNs %d %s", res.StatusCode, res.Reason),
		RetryAfter: retry,
		GatewayID:  res.ApnsID,
	}
	if res.StatusCode == http.StatusGone && !res.Timestamp.IsZero() {
		a.GatewayTime = res.Timestamp.Time
	}
	return a
}

// checkDeviceToken is a syntactically valid token no device has: Apple
// answers BadDeviceToken once it has accepted the provider token and topic.
var checkDeviceToken = strings.Repeat("0", 64)

// checkAPNs sends a silent push to a dummy token. Anything but a rejection
// of the provider token or topic proves the credentials.
func (g *Gateways) checkAPNs(ctx context.Context, key delivery.AppKey, env commonv1.ApnsEnvironment, c *creds.APNs) error {
	ctx, span := g.tracer.Start(ctx, "apns.check", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attribute.String("pushmesh.app_id", key.AppID)))
	defer span.End()
	client := g.newAPNsClient(env, newToken(c))
	defer client.CloseIdleConnections()
	var ra retryAfter
	res, err := client.PushWithContext(context.WithValue(ctx, retryAfterKey{}, &ra), &apns2.Notification{
		DeviceToken: checkDeviceToken,
		Topic:       key.AppID,
		PushType:    apns2.PushTypeBackground,
		Priority:    apns2.PriorityLow,
		Expiration:  time.Unix(1, 0), // deliver now or never
		Payload:     []byte(`{"aps":{"content-available":1}}`),
	})
	if err != nil {
		span.SetStatus(codes.Error, "request failed")
		return fmt.Errorf("%w: APNs at %s: %s", creds.ErrUnavailable, client.Host, cleanNetError(err))
	}
	span.SetAttributes(attribute.Int("http.response.status_code", res.StatusCode), attribute.String("pushmesh.apns_reason", res.Reason))
	if res.StatusCode == http.StatusOK {
		return nil
	}
	reason := classifyAPNs(res.StatusCode, res.Reason)
	switch delivery.ClassOf(reason) {
	case delivery.ClassNone, delivery.ClassToken:
		return nil
	case delivery.ClassCredentials:
		span.SetStatus(codes.Error, res.Reason)
		detail := fmt.Sprintf("APNs answered %d %s", res.StatusCode, res.Reason)
		if reason == commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH {
			detail += fmt.Sprintf(": team %s may not push to topic %q", c.TeamID, key.AppID)
		}
		return &creds.RejectedError{Reason: reason, Detail: detail}
	case delivery.ClassRetryable:
		return fmt.Errorf("%w: APNs answered %d %s", creds.ErrUnavailable, res.StatusCode, res.Reason)
	}
	span.SetStatus(codes.Error, res.Reason)
	return fmt.Errorf("%w: unexpected APNs answer to the check: %d %s", creds.ErrUnavailable, res.StatusCode, res.Reason)
}

// retryAfterKey carries a *retryAfter through a push's request context to
// retryAfterTransport.
type retryAfterKey struct{}

type retryAfter struct {
	mu sync.Mutex
	d  time.Duration
}

func (r *retryAfter) set(d time.Duration) {
	r.mu.Lock()
	r.d = d
	r.mu.Unlock()
}

func (r *retryAfter) value() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.d
}

// retryAfterTransport records the Retry-After header of 429 and 5xx answers
// for the request's push, and each request's duration.
type retryAfterTransport struct {
	base    *h2Conn
	metrics *metrics.Metrics
}

func (t *retryAfterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	res, err := t.base.RoundTrip(req)
	status := 0
	if err == nil {
		status = res.StatusCode
	}
	t.metrics.GatewayRequest(req.Context(), commonv1.Platform_PLATFORM_APNS, metrics.OutcomeOf(status, err), time.Since(start))
	if err == nil && (res.StatusCode == http.StatusTooManyRequests || res.StatusCode >= 500) {
		if ra, ok := req.Context().Value(retryAfterKey{}).(*retryAfter); ok {
			ra.set(parseRetryAfter(res.Header, time.Now()))
		}
	}
	return res, err
}

// CloseIdleConnections lets apns2's Client.CloseIdleConnections reach the
// connection.
func (t *retryAfterTransport) CloseIdleConnections() { t.base.CloseIdleConnections() }
