package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/creds"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/metrics"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// GoogleTokenURIs are the token endpoints of Google's service-account JSON
// files (the second in older ones).
var GoogleTokenURIs = []string{"https://oauth2.googleapis.com/token", "https://accounts.google.com/o/oauth2/token"}

// checkTokenURI refuses a service account whose token_uri is not Google's
// (or, with Config.FCMEndpoint set, on that endpoint's host, as the
// emulator's is). The token exchange POSTs a signed assertion there and an
// error quotes the answer: with any URL allowed, whoever registers an app
// could make deliverysvc call an internal address and read the reply.
func (g *Gateways) checkTokenURI(raw string) error {
	if slices.Contains(GoogleTokenURIs, raw) {
		return nil
	}
	if g.cfg.FCMEndpoint != "" {
		u, err := url.Parse(raw)
		ep, _ := url.Parse(g.cfg.FCMEndpoint)
		if err == nil && u.Scheme == ep.Scheme && u.Host == ep.Host {
			return nil
		}
		return fmt.Errorf("token_uri %q is neither Google's (%s) nor on the FCM endpoint's host %s", raw, GoogleTokenURIs[0], ep.Host)
	}
	return fmt.Errorf("token_uri %q is not Google's %s", raw, GoogleTokenURIs[0])
}

// FCMScope is the OAuth2 scope for sending with FCM HTTP v1.
const FCMScope = "https://www.googleapis.com/auth/firebase.messaging"

// fcmMaxChunk is SendEach's limit.
const fcmMaxChunk = 500

// classifyFCM maps a firebase send error to a failure reason, the gateway's
// words and its Retry-After.
func classifyFCM(err error) (commonv1.FailureReason, string, time.Duration) {
	var retry time.Duration
	status := 0
	if res := errorutils.HTTPResponse(err); res != nil {
		retry = parseRetryAfter(res.Header, time.Now())
		status = res.StatusCode
	}
	msg := err.Error()
	detail := func(code string) string {
		if status != 0 {
			return fmt.Sprintf("FCM %d %s: %s", status, code, msg)
		}
		return fmt.Sprintf("FCM %s: %s", code, msg)
	}
	switch {
	case messaging.IsUnregistered(err):
		return commonv1.FailureReason_FAILURE_REASON_UNREGISTERED, detail("UNREGISTERED"), 0
	case messaging.IsSenderIDMismatch(err):
		return commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH, detail("SENDER_ID_MISMATCH"), 0
	case messaging.IsThirdPartyAuthError(err):
		return commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, detail("THIRD_PARTY_AUTH_ERROR"), 0
	case messaging.IsQuotaExceeded(err):
		return commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED, detail("QUOTA_EXCEEDED"), retry
	case messaging.IsUnavailable(err):
		return commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE, detail("UNAVAILABLE"), retry
	case messaging.IsInternal(err):
		return commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE, detail("INTERNAL"), retry
	case messaging.IsInvalidArgument(err):
		// FCM answers INVALID_ARGUMENT both for a malformed message and
		// for a token that is not a registration token; only its words
		// tell them apart.
		if strings.Contains(strings.ToLower(msg), "registration token") {
			return commonv1.FailureReason_FAILURE_REASON_BAD_DEVICE_TOKEN, detail("INVALID_ARGUMENT"), 0
		}
		return commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE, detail("INVALID_ARGUMENT"), 0
	}
	switch {
	case status == 0:
		return commonv1.FailureReason_FAILURE_REASON_NETWORK, "FCM request failed: " + msg, 0
	case status == http.StatusTooManyRequests:
		return commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED, detail(http.StatusText(status)), retry
	case status >= 500:
		return commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE, detail(http.StatusText(status)), retry
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		// Without an FcmError detail: the access token or the service
		// account's permissions on the project were refused.
		return commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, detail(http.StatusText(status)), 0
	case status == http.StatusBadRequest:
		return commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE, detail(http.StatusText(status)), 0
	}
	return commonv1.FailureReason_FAILURE_REASON_INTERNAL, detail(http.StatusText(status)), 0
}

// classifyTokenError maps a failed OAuth2 token exchange: a refusal by the
// token endpoint means bad credentials, anything else is transient.
func classifyTokenError(err error) (commonv1.FailureReason, string) {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		switch sc := re.Response.StatusCode; {
		case sc == http.StatusTooManyRequests || sc == http.StatusRequestTimeout || sc >= 500:
			return commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE, fmt.Sprintf("OAuth2 token exchange failed (%d): %s", sc, oauthErrorText(re))
		default:
			return commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, fmt.Sprintf("OAuth2 token exchange refused (%d): %s", sc, oauthErrorText(re))
		}
	}
	return commonv1.FailureReason_FAILURE_REASON_NETWORK, "OAuth2 token exchange failed: " + err.Error()
}

func oauthErrorText(re *oauth2.RetrieveError) string {
	if re.ErrorCode != "" {
		if re.ErrorDescription != "" {
			return re.ErrorCode + ": " + re.ErrorDescription
		}
		return re.ErrorCode
	}
	body := strings.TrimSpace(string(re.Body))
	if len(body) > 200 {
		body = body[:200] + "…"
	}
	return body
}

// fcmClient is a firebase messaging client of one service account, with the
// token source it sends with.
type fcmClient struct {
	messaging *messaging.Client
	tokens    oauth2.TokenSource
	transport *http.Transport
}

// newFCMClient builds a messaging client in its own firebase App. The HTTP
// client trusts the configured roots and adds OAuth2 tokens obtained by a
// real exchange at the service account's token_uri.
func (g *Gateways) newFCMClient(c *creds.FCM) (*fcmClient, error) {
	if err := g.checkTokenURI(c.TokenURI); err != nil {
		return nil, err
	}
	transport := &http.Transport{
		Proxy:               g.proxy,
		TLSClientConfig:     g.tlsConfig(),
		DialContext:         dialBatched,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	// The token source keeps this context for every later exchange.
	tokenCtx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: transport, Timeout: g.cfg.RequestTimeout})
	gc, err := google.CredentialsFromJSONWithType(tokenCtx, c.JSON, google.ServiceAccount, FCMScope)
	if err != nil {
		return nil, fmt.Errorf("service account: %w", err)
	}
	hc := &http.Client{Transport: &timeoutTransport{
		base:      &oauth2.Transport{Source: gc.TokenSource, Base: transport},
		deadlines: g.deadlines,
		metrics:   g.cfg.Metrics,
	}}
	opts := []option.ClientOption{option.WithHTTPClient(hc)}
	if g.cfg.FCMEndpoint != "" {
		opts = append(opts, option.WithEndpoint(strings.TrimSuffix(g.cfg.FCMEndpoint, "/")))
	}
	ctx := context.Background()
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: c.ProjectID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("firebase app: %w", err)
	}
	mc, err := app.Messaging(ctx)
	if err != nil {
		return nil, fmt.Errorf("firebase messaging: %w", err)
	}
	return &fcmClient{messaging: mc, tokens: gc.TokenSource, transport: transport}, nil
}

// timeoutTransport bounds each request, body included, by RequestTimeout
// (firebase retries internally, so each attempt needs its own bound).
// http.Client.Timeout does the same for a transport it does not know
// (oauth2's) with a goroutine and a timer per request, and FCM costs a
// request per message.
//
// A request whose context already ends within the bound keeps it (the
// credential check's, a chunk whose latest TTL is near). Any other runs
// under the gateways' shared deadline context instead (see sharedDeadline),
// without its own context's cancellation. That loses nothing: such a
// request comes from an FCM chunk, whose context is deliberately not
// cancellable (it mixes several callers' messages) and ends only at its
// deadline, which is then later than the shared one.
//
// It also records each request's duration: firebase makes one request per
// message (and one per retry of its own), which SendEach's answer does not
// show.
type timeoutTransport struct {
	base      http.RoundTripper
	deadlines *sharedDeadline
	metrics   *metrics.Metrics
}

func (t *timeoutTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	shared, deadline := t.deadlines.get(start)
	if d, ok := req.Context().Deadline(); !ok || d.After(deadline) {
		req = req.WithContext(shared)
	}
	res, err := t.base.RoundTrip(req)
	status := 0
	if err == nil {
		status = res.StatusCode
	}
	t.metrics.GatewayRequest(req.Context(), commonv1.Platform_PLATFORM_FCM, metrics.OutcomeOf(status, err), time.Since(start))
	return res, err
}

// checkFCMToken is a registration token no device has.
const checkFCMToken = "pushmesh-credential-check"

// checkFCM exchanges the service account for an access token and makes a
// validate_only send: FCM checks the token's project permissions without
// delivering anything.
func (g *Gateways) checkFCM(ctx context.Context, c *creds.FCM) error {
	ctx, span := g.tracer.Start(ctx, "fcm.check", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attribute.String("pushmesh.project_id", c.ProjectID)))
	defer span.End()
	fc, err := g.newFCMClient(c)
	if err != nil {
		return &creds.RejectedError{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS, Detail: err.Error()}
	}
	defer fc.transport.CloseIdleConnections()
	if _, err := fc.tokens.Token(); err != nil {
		reason, detail := classifyTokenError(err)
		span.SetStatus(codes.Error, "token exchange failed")
		if reason == commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS {
			return &creds.RejectedError{Reason: reason, Detail: detail}
		}
		return fmt.Errorf("%w: %s", creds.ErrUnavailable, detail)
	}
	_, err = fc.messaging.SendDryRun(ctx, &messaging.Message{Token: checkFCMToken, Data: map[string]string{"pm_check": "1"}})
	if err == nil {
		return nil
	}
	reason, detail, _ := classifyFCM(err)
	switch delivery.ClassOf(reason) {
	case delivery.ClassToken:
		return nil // the token was looked at: the credentials were accepted
	case delivery.ClassMessage:
		if reason == commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE {
			return fmt.Errorf("%w: unexpected FCM answer to the check: %s", creds.ErrUnavailable, detail)
		}
		return nil
	case delivery.ClassCredentials:
		span.SetStatus(codes.Error, detail)
		return &creds.RejectedError{Reason: reason, Detail: detail}
	}
	span.SetStatus(codes.Error, detail)
	return fmt.Errorf("%w: %s", creds.ErrUnavailable, detail)
}

// fcmSender sends one app's messages in SendEach chunks. Messages from all
// concurrent sends are gathered into chunks of up to 500, so a burst of
// one-token messages costs one SendEach per 500 rather than one per message.
type fcmSender struct {
	g      *Gateways
	key    delivery.AppKey
	client *fcmClient
	chunks chan struct{} // bounds the SendEach calls in flight

	mu      sync.Mutex
	pending []*fcmItem
	timer   *time.Timer
}

type fcmItem struct {
	ctx      context.Context
	deadline time.Time
	msg      *messaging.Message
	out      *delivery.Attempt
	done     *sync.WaitGroup
}

func (g *Gateways) openFCM(key delivery.AppKey, c *creds.FCM) (*fcmSender, error) {
	fc, err := g.newFCMClient(c)
	if err != nil {
		return nil, err
	}
	return &fcmSender{g: g, key: key, client: fc, chunks: make(chan struct{}, g.cfg.FCMConcurrentChunks)}, nil
}

// Close implements apps.Sender.
func (s *fcmSender) Close() { s.client.transport.CloseIdleConnections() }

// Send implements delivery.Sender: it queues the messages into chunks and
// waits for their answers.
func (s *fcmSender) Send(ctx context.Context, pushes []delivery.Push) []delivery.Attempt {
	out := make([]delivery.Attempt, len(pushes))
	var done sync.WaitGroup
	done.Add(len(pushes))
	var full [][]*fcmItem
	s.mu.Lock()
	for i := range pushes {
		s.pending = append(s.pending, &fcmItem{ctx: ctx, deadline: pushes[i].Deadline, msg: pushes[i].FCM, out: &out[i], done: &done})
		if len(s.pending) == fcmMaxChunk {
			full = append(full, s.pending)
			s.pending = make([]*fcmItem, 0, fcmMaxChunk)
		}
	}
	if len(s.pending) > 0 && s.timer == nil {
		// A partial chunk waits briefly for company, then goes alone.
		s.timer = time.AfterFunc(s.g.cfg.FCMLinger, s.flush)
	}
	s.mu.Unlock()
	for _, chunk := range full {
		go s.sendChunk(chunk)
	}
	done.Wait()
	return out
}

// flush sends the partial chunk (runs on the linger timer).
func (s *fcmSender) flush() {
	s.mu.Lock()
	chunk := s.pending
	s.pending = make([]*fcmItem, 0, fcmMaxChunk)
	s.timer = nil
	s.mu.Unlock()
	if len(chunk) > 0 {
		s.sendChunk(chunk)
	}
}

// sendChunk makes one SendEach call and hands each item its attempt.
func (s *fcmSender) sendChunk(items []*fcmItem) {
	s.chunks <- struct{}{}
	defer func() { <-s.chunks }()
	// The chunk mixes messages of several callers: it must not fail when
	// one of them goes away, so it keeps the first caller's trace but not
	// its cancellation.
	ctx := context.WithoutCancel(items[0].ctx)
	// firebase retries 503s and network errors itself (up to four times,
	// honouring Retry-After): bound that by the earliest deadline in the
	// chunk, so no message is retried past its own TTL. A message with a
	// later deadline that this cuts short fails as a network error, and
	// the pipeline retries it within its own TTL.
	var deadline time.Time
	for _, it := range items {
		if !it.deadline.IsZero() && (deadline.IsZero() || it.deadline.Before(deadline)) {
			deadline = it.deadline
		}
	}
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	ctx, span := s.g.tracer.Start(ctx, "fcm.send_each", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("pushmesh.app_id", s.key.AppID),
		attribute.Int("pushmesh.messages", len(items)),
	))
	defer span.End()
	defer func() {
		for _, it := range items {
			it.done.Done()
		}
	}()

	// Ask for the access token first: firebase reports a failed exchange
	// as an opaque transport error, losing the token endpoint's answer.
	if _, err := s.client.tokens.Token(); err != nil {
		reason, detail := classifyTokenError(err)
		span.SetStatus(codes.Error, detail)
		for _, it := range items {
			*it.out = delivery.Attempt{Reason: reason, Detail: detail}
		}
		return
	}
	msgs := make([]*messaging.Message, len(items))
	for i, it := range items {
		msgs[i] = it.msg
	}
	br, err := s.client.messaging.SendEach(ctx, msgs)
	if err != nil {
		// SendEach refuses the whole chunk when one message fails
		// firebase's own checks: send one by one so only that one fails.
		span.AddEvent("chunk refused; sending one by one", trace.WithAttributes(attribute.String("error", err.Error())))
		for i, it := range items {
			one, err := s.client.messaging.SendEach(ctx, msgs[i:i+1])
			if err != nil {
				*it.out = delivery.Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_INVALID_MESSAGE, Detail: "FCM message refused by the client library: " + err.Error()}
				continue
			}
			*it.out = fcmAttempt(one.Responses[0])
		}
		return
	}
	for i, r := range br.Responses {
		*items[i].out = fcmAttempt(r)
	}
	span.SetAttributes(attribute.Int("pushmesh.sent", br.SuccessCount), attribute.Int("pushmesh.failed", br.FailureCount))
	if br.FailureCount > 0 {
		span.SetStatus(codes.Error, fmt.Sprintf("%d of %d messages failed", br.FailureCount, len(items)))
	}
}

func fcmAttempt(r *messaging.SendResponse) delivery.Attempt {
	if r.Success {
		return delivery.Attempt{GatewayID: r.MessageID}
	}
	if errors.Is(r.Error, context.DeadlineExceeded) {
		return delivery.Attempt{Reason: commonv1.FailureReason_FAILURE_REASON_TTL_EXPIRED, Detail: "the message's TTL ran out while FCM was being retried: " + r.Error.Error()}
	}
	reason, detail, retry := classifyFCM(r.Error)
	return delivery.Attempt{Reason: reason, Detail: detail, RetryAfter: retry}
}
