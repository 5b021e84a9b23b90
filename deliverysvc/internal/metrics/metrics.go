// Package metrics is deliverysvc's OpenTelemetry instruments, all in one
// place: what was sent and why sends failed, how long the gateways take,
// how full the pipeline is, what waits in the outboxes, which apps are
// suspended and which journeys run. README.md ("Metrics") lists them with
// the alerts they are for.
//
// Attributes are small enums only (platform, failure reason, outbox, journey
// state, gateway outcome). Never tokens, profile, journey or message ids,
// and no tenant or app id either: tenants are named by callers (any valid
// name in the x-pushmesh-tenant header makes one) and apps are registered
// by them, so both are unbounded, and every attribute set a counter has
// ever seen is kept by the SDK for the life of the process. Per-tenant, per-app and
// per-journey figures are trackingsvc's GetMetrics; the logs name the app
// that was suspended.
//
// A nil *Metrics records nothing, so packages that take one in their Config
// work unchanged in tests that do not care.
package metrics

import (
	"context"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	"github.com/pushmesh/pushmesh/servicekit/instruments"
)

// meterName is the instrumentation scope of every instrument here.
const meterName = "github.com/pushmesh/pushmesh/deliverysvc"

// Attribute keys.
const (
	keyPlatform      = attribute.Key("pushmesh.platform")
	keyFailureReason = attribute.Key("pushmesh.failure_reason")
	keyOutcome       = attribute.Key("pushmesh.outcome")
	keyOutbox        = attribute.Key("pushmesh.outbox")
	keyJourneyState  = attribute.Key("pushmesh.journey.state")
)

// GatewayOutcome classes a gateway's answer to one HTTP request.
type GatewayOutcome int

// Gateway outcomes, by HTTP status.
const (
	GatewayOK           GatewayOutcome = iota // 2xx
	GatewayRejected                           // 4xx but 429: a dead token, a bad message, refused credentials
	GatewayThrottled                          // 429
	GatewayUnavailable                        // 5xx
	GatewayNetworkError                       // no answer: connection, TLS, timeout
	numGatewayOutcomes
)

var gatewayOutcomeNames = [numGatewayOutcomes]string{"ok", "rejected", "throttled", "unavailable", "network_error"}

// OutcomeOf classes an HTTP round trip's result.
func OutcomeOf(status int, err error) GatewayOutcome {
	switch {
	case err != nil:
		return GatewayNetworkError
	case status == 429:
		return GatewayThrottled
	case status >= 500:
		return GatewayUnavailable
	case status >= 400:
		return GatewayRejected
	}
	return GatewayOK
}

// platforms are the values of the platform attribute, by commonv1.Platform.
var platforms = [...]commonv1.Platform{
	commonv1.Platform_PLATFORM_UNSPECIFIED, commonv1.Platform_PLATFORM_APNS, commonv1.Platform_PLATFORM_FCM,
}

// PlatformName is the platform attribute's value: "apns", "fcm", or
// "unspecified" (a message-level failure before a token was known).
func PlatformName(p commonv1.Platform) string {
	switch p {
	case commonv1.Platform_PLATFORM_APNS:
		return "apns"
	case commonv1.Platform_PLATFORM_FCM:
		return "fcm"
	}
	return "unspecified"
}

// ReasonName is the failure reason attribute's value: the enum's name in
// lower case without its prefix, e.g. "unregistered".
func ReasonName(r commonv1.FailureReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "FAILURE_REASON_"))
}

// StateName is the journey state attribute's value, e.g. "running".
func StateName(s deliveryv1.JourneyState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOURNEY_STATE_"))
}

type platformReason struct {
	platform commonv1.Platform
	reason   commonv1.FailureReason
}

// Metrics holds the instruments. Safe for concurrent use.
type Metrics struct {
	meter metric.Meter

	sent            metric.Int64Counter
	failed          metric.Int64Counter
	gatewayDuration metric.Float64Histogram
	journeySent     metric.Int64Counter

	inFlight      metric.Int64ObservableGauge
	inFlightLimit metric.Int64ObservableGauge
	outboxBacklog metric.Int64ObservableGauge
	appsSuspended metric.Int64ObservableGauge
	journeys      metric.Int64ObservableGauge

	// Attribute sets of the hot-path instruments, built once: recording
	// with them allocates nothing (a 20,000 pushes/s pipeline records
	// every push). Read-only after New.
	sentOpts    map[commonv1.Platform][]metric.AddOption
	failedOpts  map[platformReason][]metric.AddOption
	gatewayOpts map[commonv1.Platform]*[numGatewayOutcomes][]metric.RecordOption
}

// New makes the instruments from mp (otel.GetMeterProvider() in the
// service).
func New(mp metric.MeterProvider) (*Metrics, error) {
	in := instruments.New(mp, meterName)
	m := &Metrics{
		meter:       in.Meter,
		sentOpts:    make(map[commonv1.Platform][]metric.AddOption),
		failedOpts:  make(map[platformReason][]metric.AddOption),
		gatewayOpts: make(map[commonv1.Platform]*[numGatewayOutcomes][]metric.RecordOption),
	}
	m.sent = in.Counter("pushmesh.notifications.sent", "{notification}",
		"Pushes a gateway (APNs or FCM) accepted.")
	m.failed = in.Counter("pushmesh.notifications.failed", "{notification}",
		"Pushes that failed for good (after any retries), by failure reason; cancellations included.")
	m.gatewayDuration = in.Histogram("pushmesh.gateway.request.duration", "s",
		"Duration of one HTTP request to APNs or FCM, until its response headers.",
		// From a loopback emulator's sub-millisecond answers to a request
		// timing out (30 s by default).
		0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
	m.journeySent = in.Counter("pushmesh.journey.notifications.sent", "{notification}",
		"Pushes of journeys that a gateway accepted.")

	m.inFlight = in.Gauge("pushmesh.delivery.in_flight", "{push}",
		"Pushes admitted to the send pipeline and not yet answered (Send streams and journeys).")
	m.inFlightLimit = in.Gauge("pushmesh.delivery.in_flight.limit", "{push}",
		"The pipeline's bound on pushes in flight (--max-in-flight).")
	m.outboxBacklog = in.Gauge("pushmesh.outbox.backlog", "{record}",
		"Records waiting in an outbox: send outcomes for trackingsvc (tracking), dead-token verdicts for profilesvc (feedback).")
	m.appsSuspended = in.Gauge("pushmesh.apps.suspended", "{app}",
		"Apps suspended because a gateway rejected their credentials, by reason.")
	m.journeys = in.Gauge("pushmesh.journeys.active", "{journey}",
		"Journeys this deliverysvc is running, by state (scheduled, running; one cancelled or ended shows until it has drained).")

	for _, p := range platforms {
		m.sentOpts[p] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(keyPlatform.String(PlatformName(p))))}
		for r := range commonv1.FailureReason_name {
			reason := commonv1.FailureReason(r)
			m.failedOpts[platformReason{p, reason}] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(
				keyPlatform.String(PlatformName(p)), keyFailureReason.String(ReasonName(reason))))}
		}
		var g [numGatewayOutcomes][]metric.RecordOption
		for o := range numGatewayOutcomes {
			g[o] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(
				keyPlatform.String(PlatformName(p)), keyOutcome.String(gatewayOutcomeNames[o])))}
		}
		m.gatewayOpts[p] = &g
	}
	return m, in.Err
}

// platformOf maps a platform this build does not know to "unspecified", so
// the attribute tables need no entry for it.
func platformOf(p commonv1.Platform) commonv1.Platform {
	if p == commonv1.Platform_PLATFORM_APNS || p == commonv1.Platform_PLATFORM_FCM {
		return p
	}
	return commonv1.Platform_PLATFORM_UNSPECIFIED
}

// Sent counts n pushes of platform accepted by their gateway.
func (m *Metrics) Sent(ctx context.Context, p commonv1.Platform, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.sent.Add(ctx, n, m.sentOpts[platformOf(p)]...)
}

// Failed counts n pushes of platform that failed for reason.
func (m *Metrics) Failed(ctx context.Context, p commonv1.Platform, reason commonv1.FailureReason, n int64) {
	if m == nil || n == 0 {
		return
	}
	opts, ok := m.failedOpts[platformReason{platformOf(p), reason}]
	if !ok {
		// A reason newer than this build: counted, without allocating a
		// set per call, under "unspecified".
		opts = m.failedOpts[platformReason{platformOf(p), commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED}]
	}
	m.failed.Add(ctx, n, opts...)
}

// JourneySent counts n pushes of a journey accepted by their gateway.
func (m *Metrics) JourneySent(ctx context.Context, p commonv1.Platform, n int64) {
	if m == nil || n == 0 {
		return
	}
	m.journeySent.Add(ctx, n, m.sentOpts[platformOf(p)]...)
}

// GatewayRequest records one gateway request's duration.
func (m *Metrics) GatewayRequest(ctx context.Context, p commonv1.Platform, o GatewayOutcome, d time.Duration) {
	if m == nil || o < 0 || o >= numGatewayOutcomes {
		return
	}
	m.gatewayDuration.Record(ctx, d.Seconds(), m.gatewayOpts[platformOf(p)][o]...)
}

// SuspendedKey is one series of the apps-suspended gauge.
type SuspendedKey struct {
	Platform commonv1.Platform
	Reason   commonv1.FailureReason
}

// Sources are what the gauges read, on each collection (every
// OTEL_METRIC_EXPORT_INTERVAL): they must be cheap, or run rarely enough.
// A nil field leaves its gauge out.
type Sources struct {
	// InFlight is the pipeline's pushes in flight; InFlightLimit its bound.
	InFlight      func() int64
	InFlightLimit int64
	// Outboxes maps an outbox's name ("tracking", "feedback") to its
	// backlog.
	Outboxes map[string]func() int64
	// SuspendedApps counts the suspended apps by platform and reason.
	SuspendedApps func() (map[SuspendedKey]int, error)
	// Journeys counts the running journeys by state.
	Journeys func() map[deliveryv1.JourneyState]int
}

// Observe registers the gauges' callback over src. Call the returned
// unregister before closing what src reads (the store): the SDK would call
// it again at the next collection.
func (m *Metrics) Observe(src Sources) (unregister func() error, err error) {
	if m == nil {
		return func() error { return nil }, nil
	}
	reg, err := m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if src.InFlight != nil {
			o.ObserveInt64(m.inFlight, src.InFlight())
			o.ObserveInt64(m.inFlightLimit, src.InFlightLimit)
		}
		for name, backlog := range src.Outboxes {
			o.ObserveInt64(m.outboxBacklog, backlog(), metric.WithAttributes(keyOutbox.String(name)))
		}
		if src.Journeys != nil {
			counts := src.Journeys()
			// Zeros for the states that matter, so a dashboard shows "none"
			// rather than no data.
			for _, s := range []deliveryv1.JourneyState{deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED, deliveryv1.JourneyState_JOURNEY_STATE_RUNNING} {
				if _, ok := counts[s]; !ok {
					o.ObserveInt64(m.journeys, 0, metric.WithAttributes(keyJourneyState.String(StateName(s))))
				}
			}
			for state, n := range counts {
				o.ObserveInt64(m.journeys, int64(n), metric.WithAttributes(keyJourneyState.String(StateName(state))))
			}
		}
		if src.SuspendedApps != nil {
			counts, err := src.SuspendedApps()
			if err != nil {
				return err // the SDK reports it through otel.Handle
			}
			for k, n := range counts {
				o.ObserveInt64(m.appsSuspended, int64(n), metric.WithAttributes(
					keyPlatform.String(PlatformName(k.Platform)), keyFailureReason.String(ReasonName(k.Reason))))
			}
		}
		return nil
	}, m.inFlight, m.inFlightLimit, m.outboxBacklog, m.appsSuspended, m.journeys)
	if err != nil {
		return nil, err
	}
	return reg.Unregister, nil
}
