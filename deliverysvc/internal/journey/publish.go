package journey

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/apps"
	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
	"github.com/pushmesh/pushmesh/servicekit/tenant"
)

// PublishInput is a PublishJourney request.
type PublishInput struct {
	Journey    *deliveryv1.Journey
	DryRun     bool
	SampleSize int
	RequestID  string
}

// validate checks what needs no other service.
func validate(j *deliveryv1.Journey, sampleSize int) error {
	v := &fault.ValidationError{}
	if j == nil {
		return fault.Invalid("journey", "required")
	}
	if strings.TrimSpace(j.GetName()) == "" {
		v.Add("journey.name", "required")
	} else if len(j.GetName()) > 200 {
		v.Add("journey.name", "at most 200 bytes")
	}
	if len(j.GetAppIds()) == 0 {
		v.Add("journey.app_ids", "name at least one app")
	}
	for i, a := range j.GetAppIds() {
		if a == "" {
			v.Add(fmt.Sprintf("journey.app_ids[%d]", i), "empty app id")
		}
	}
	for i, p := range j.GetAudience().GetPlatforms() {
		if p != commonv1.Platform_PLATFORM_APNS && p != commonv1.Platform_PLATFORM_FCM {
			v.Add(fmt.Sprintf("journey.audience.platforms[%d]", i), "unknown platform %d", p)
		}
	}
	d := j.GetDelivery()
	if d.GetTtl() != nil && (d.GetTtl().AsDuration() < 0 || d.GetTtl().AsDuration() > delivery.MaxTTL) {
		v.Add("journey.delivery.ttl", "must be between 0 and %s", delivery.MaxTTL)
	}
	if d.GetMaxMessagesPerSecond() < 0 {
		v.Add("journey.delivery.max_messages_per_second", "must not be negative")
	}
	if len(d.GetCollapseId()) > delivery.MaxCollapseIDLen {
		v.Add("journey.delivery.collapse_id", "at most %d bytes", delivery.MaxCollapseIDLen)
	}
	if sampleSize < 0 || sampleSize > 20 {
		v.Add("sample_size", "must be 0 to 20")
	}
	return v.Err()
}

// checkApps requires every app id to be registered (for APNs, FCM or both)
// and none of its registrations suspended.
func (m *Manager) checkApps(ctx context.Context, ids []string) error {
	for i, id := range ids {
		found := false
		for _, key := range appKeys(id) {
			app, err := m.apps.App(ctx, key)
			if errors.Is(err, apps.ErrNotFound) || errors.Is(err, delivery.ErrAppNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			found = true
			if app.Suspended {
				return fault.OnField(ErrAppUnavailable, fmt.Sprintf("journey.app_ids[%d]", i),
					"app %s (%s) is suspended after %s: update its credentials and validate it", id, key.Platform, app.SuspendedReason)
			}
		}
		if !found {
			return fault.OnField(ErrAppUnavailable, fmt.Sprintf("journey.app_ids[%d]", i), "app %q is not registered (RegisterApp first)", id)
		}
	}
	return nil
}

// Publish validates a journey and stores and starts it, or dry-runs it.
func (m *Manager) Publish(ctx context.Context, in PublishInput) (*deliveryv1.Journey, *deliveryv1.DryRunResult, error) {
	if err := validate(in.Journey, in.SampleSize); err != nil {
		return nil, nil, err
	}
	j := proto.Clone(in.Journey).(*deliveryv1.Journey)
	content, err := Compile(j)
	if err != nil {
		return nil, nil, err
	}
	if err := m.checkApps(ctx, j.GetAppIds()); err != nil {
		return nil, nil, err
	}
	now := m.cfg.Now()
	j.JourneyId = newID(now)
	if j.MessageId == "" {
		j.MessageId = "msg_" + strings.TrimPrefix(j.JourneyId, "jrn_")
	}
	probe := &runner{m: m, ref: Ref{Tenant: tenant.FromContext(ctx), ID: j.GetJourneyId()}, content: content, journey: j}

	if in.DryRun {
		dr, err := m.dryRun(ctx, probe, in.SampleSize)
		if err != nil {
			return nil, nil, err
		}
		return j, dr, nil
	}
	// The condition must compile: one member is enough to know.
	if err := m.audience.Query(ctx, probe.queryLimit(1), func(*profilev1.QueryAudienceResponse) error { return nil }); err != nil {
		return nil, nil, err
	}

	j.State = deliveryv1.JourneyState_JOURNEY_STATE_RUNNING
	if st := j.GetStartTime(); st != nil && st.AsTime().After(now) {
		j.State = deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED
	}
	j.Progress = &deliveryv1.JourneyProgress{}
	j.Error = ""
	j.CreateTime, j.UpdateTime = timestamppb.New(now), timestamppb.New(now)
	t := tenant.FromContext(ctx)
	stored, existed, err := m.store.Create(t, j, in.RequestID)
	if err != nil {
		return nil, nil, err
	}
	if !existed {
		m.start(Ref{Tenant: t, ID: j.GetJourneyId()}, j, content, trace.SpanContextFromContext(ctx))
	}
	return stored, nil, nil
}

func (r *runner) queryLimit(limit int64) *profilev1.QueryAudienceRequest {
	q := r.query("")
	q.Limit = limit
	return q
}

// dryRun streams the audience and counts what the journey would do,
// rendering a few samples; it sends and stores nothing.
func (m *Manager) dryRun(ctx context.Context, r *runner, samples int) (*deliveryv1.DryRunResult, error) {
	if samples == 0 {
		samples = 3
	}
	dr := &deliveryv1.DryRunResult{}
	excluded := map[commonv1.ExclusionReason]int64{}
	start := time.Now()
	err := m.audience.Query(ctx, r.query(""), func(resp *profilev1.QueryAudienceResponse) error {
		dr.ProfilesScanned = resp.GetStats().GetScanned()
		for _, member := range resp.GetMembers() {
			dr.Qualified++
			if member.GetExcluded() {
				excluded[member.GetExclusionReason()]++
				continue
			}
			msgs, err := r.messages(member)
			if err != nil {
				excluded[commonv1.ExclusionReason_EXCLUSION_REASON_RENDER_ERROR]++
				continue
			}
			dr.TokensTargeted += int64(len(msgs))
			if len(dr.Samples) < samples && len(msgs) > 0 {
				n := msgs[0].Notification
				dr.Samples = append(dr.Samples, &deliveryv1.RenderedSample{
					ProfileId: member.GetProfileId(), Platform: msgs[0].Tokens[0].Platform,
					Locale:       member.GetAttributes().GetFields()["locale"].GetStringValue(),
					Notification: notificationProto(&n), Tokens: int32(len(msgs)),
				})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, reason := range sortedKeys(excluded) {
		dr.Excluded = append(dr.Excluded, &commonv1.ExclusionCount{Reason: reason, Count: excluded[reason]})
	}
	m.cfg.Logger.Info("journey dry run", "qualified", dr.GetQualified(), "took", time.Since(start).String())
	return dr, nil
}

func notificationProto(n *delivery.Notification) *deliveryv1.Notification {
	return &deliveryv1.Notification{
		Title: n.Title, Subtitle: n.Subtitle, Body: n.Body, ImageUrl: n.ImageURL, Sound: n.Sound, Badge: n.Badge,
		Data: n.Data, Category: n.Category, ThreadId: n.ThreadID, DeepLink: n.DeepLink,
	}
}
