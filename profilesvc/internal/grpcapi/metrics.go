package grpcapi

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
	"github.com/pushmesh/pushmesh/servicekit/instruments"
)

// meterName is the instrumentation scope of profilesvc's instruments.
const meterName = "github.com/pushmesh/pushmesh/profilesvc"

// Attribute keys. Values are small enums (README.md, "Metrics"); never a
// token, a profile or customer id, nor the tenant or app id, which callers
// choose without bound.
const (
	keyPlatform = attribute.Key("pushmesh.platform")
	keyOutcome  = attribute.Key("pushmesh.outcome")
	keyReason   = attribute.Key("pushmesh.inactive_reason")
)

// metrics are profilesvc's instruments, recorded here in the adapter where
// each RPC's outcome is known: the store and the domain stay free of them.
// Registrations and imports are counted per call or per import, never per
// row, so the cost does not show next to a bbolt commit.
type metrics struct {
	registered  metric.Int64Counter
	deactivated metric.Int64Counter
	importRows  metric.Int64Counter
	members     metric.Int64Counter
}

func newMetrics(mp metric.MeterProvider) (*metrics, error) {
	in := instruments.New(mp, meterName)
	var m metrics
	m.registered = in.Counter("pushmesh.tokens.registered", "{token}",
		"RegisterPushToken calls, by platform and outcome (created, updated, moved, unchanged).")
	m.deactivated = in.Counter("pushmesh.tokens.deactivated", "{token}",
		"Active tokens made inactive, by platform and reason: gateway feedback (unregistered, bad_token), UnregisterPushToken (uninstalled, stale…), a newer token of the same device (replaced).")
	m.importRows = in.Counter("pushmesh.import.rows", "{row}",
		"ImportTokens rows, by outcome (created, updated, moved, unchanged, rejected), counted when the import ends.")
	m.members = in.Counter("pushmesh.audience.members", "{profile}",
		"Audience members streamed by QueryAudience.")
	return &m, in.Err
}

func platformName(p profile.Platform) string { return p.String() } // apns, fcm, unspecified

func outcomeName(o profile.Outcome) string {
	return strings.ToLower(strings.TrimPrefix(profilev1.RegistrationOutcome(o).String(), "REGISTRATION_OUTCOME_"))
}

func reasonName(r profile.InactiveReason) string {
	return strings.ToLower(strings.TrimPrefix(profilev1.InactiveReason(r).String(), "INACTIVE_REASON_"))
}

func (m *metrics) tokenRegistered(ctx context.Context, p profile.Platform, res profile.RegisterResult) {
	m.registered.Add(ctx, 1, metric.WithAttributes(keyPlatform.String(platformName(p)), keyOutcome.String(outcomeName(res.Outcome))))
	if n := len(res.Replaced); n > 0 {
		m.tokensDeactivated(ctx, p, profile.ReasonReplaced, int64(n))
	}
}

func (m *metrics) tokensDeactivated(ctx context.Context, p profile.Platform, r profile.InactiveReason, n int64) {
	m.deactivated.Add(ctx, n, metric.WithAttributes(keyPlatform.String(platformName(p)), keyReason.String(reasonName(r))))
}

// feedback counts the tokens a feedback batch deactivated, by platform and
// reason.
func (m *metrics) feedback(ctx context.Context, items []store.FeedbackItem, c store.FeedbackCounts) {
	type key struct {
		platform profile.Platform
		reason   profile.InactiveReason
	}
	var byKey map[key]int64
	for i, out := range c.Outcomes {
		if out != profile.FeedbackDeactivated || i >= len(items) {
			continue
		}
		if byKey == nil {
			byKey = make(map[key]int64, 2)
		}
		byKey[key{items[i].Key.Platform, items[i].Reason}]++
	}
	for k, n := range byKey {
		m.tokensDeactivated(ctx, k.platform, k.reason, n)
	}
}

// imported counts an import's rows by outcome.
func (m *metrics) imported(ctx context.Context, c store.ImportCounts) {
	for _, o := range []struct {
		name string
		n    int64
	}{{"created", c.Created}, {"updated", c.Updated}, {"moved", c.Moved}, {"unchanged", c.Unchanged}, {"rejected", c.Rejected}} {
		if o.n > 0 {
			m.importRows.Add(ctx, o.n, metric.WithAttributes(keyOutcome.String(o.name)))
		}
	}
}

func (m *metrics) streamed(ctx context.Context, n int) {
	if n > 0 {
		m.members.Add(ctx, int64(n))
	}
}
