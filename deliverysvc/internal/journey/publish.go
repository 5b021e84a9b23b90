package journey

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

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

// Publish limits.
const (
	maxNameLen     = 200
	maxAppIDs      = 50
	maxSampleSize  = 20
	defaultSamples = 3
	// publishSampleCandidates is how many audience members publish looks
	// at for a sample the journey would send to.
	publishSampleCandidates = 20
	maxRequestIDLen         = 256
	maxConditionLen         = 8 << 10
	maxMessagesPerS         = 1_000_000
	maxMessageIDLen         = delivery.MaxIDLen
	syntheticProfile        = "sample-profile"
)

// PublishInput is a PublishJourney request.
type PublishInput struct {
	Journey    *deliveryv1.Journey
	DryRun     bool
	SampleSize int
	RequestID  string
}

// validate checks what needs no other service.
func validate(in PublishInput) error {
	j := in.Journey
	if j == nil {
		return fault.Invalid("journey", "required")
	}
	v := &fault.ValidationError{}
	checkText := func(field, s string, maxLen int) {
		if len(s) > maxLen {
			v.Add(field, "at most %d bytes, got %d", maxLen, len(s))
		} else if !utf8.ValidString(s) {
			v.Add(field, "must be valid UTF-8")
		}
	}
	if strings.TrimSpace(j.GetName()) == "" {
		v.Add("journey.name", "required")
	}
	checkText("journey.name", j.GetName(), maxNameLen)
	if len(j.GetAppIds()) == 0 {
		v.Add("journey.app_ids", "name at least one app")
	}
	if len(j.GetAppIds()) > maxAppIDs {
		v.Add("journey.app_ids", "at most %d apps, got %d", maxAppIDs, len(j.GetAppIds()))
	}
	seen := map[string]int{}
	for i, a := range j.GetAppIds() {
		field := fmt.Sprintf("journey.app_ids[%d]", i)
		if a == "" {
			v.Add(field, "empty app id")
		}
		checkText(field, a, delivery.MaxIDLen)
		if first, dup := seen[a]; dup {
			v.Add(field, "repeats journey.app_ids[%d]", first)
		}
		seen[a] = i
	}
	checkText("journey.audience.condition", j.GetAudience().GetCondition(), maxConditionLen)
	for i, p := range j.GetAudience().GetPlatforms() {
		if p != commonv1.Platform_PLATFORM_APNS && p != commonv1.Platform_PLATFORM_FCM {
			v.Add(fmt.Sprintf("journey.audience.platforms[%d]", i), "must be PLATFORM_APNS or PLATFORM_FCM, got %s", p)
		}
	}
	d := j.GetDelivery()
	if ttl := d.GetTtl(); ttl != nil && (!ttl.IsValid() || ttl.AsDuration() < 0 || ttl.AsDuration() > delivery.MaxTTL) {
		v.Add("journey.delivery.ttl", "must be between 0 and %s", delivery.MaxTTL)
	}
	if n := d.GetMaxMessagesPerSecond(); n < 0 || n > maxMessagesPerS {
		v.Add("journey.delivery.max_messages_per_second", "must be 0 (no cap) to %d, got %d", maxMessagesPerS, n)
	}
	if len(d.GetCollapseId()) > delivery.MaxCollapseIDLen {
		v.Add("journey.delivery.collapse_id", "at most %d bytes (APNs' limit), got %d", delivery.MaxCollapseIDLen, len(d.GetCollapseId()))
	} else {
		checkText("journey.delivery.collapse_id", d.GetCollapseId(), delivery.MaxCollapseIDLen)
	}
	if _, ok := deliveryv1.FcmPriority_name[int32(d.GetPriority())]; !ok {
		v.Add("journey.delivery.priority", "unknown priority %d", d.GetPriority())
	}
	if _, ok := deliveryv1.ApnsPushType_name[int32(d.GetApnsPushType())]; !ok {
		v.Add("journey.delivery.apns_push_type", "unknown push type %d", d.GetApnsPushType())
	}
	if st := j.GetStartTime(); st != nil && !st.IsValid() {
		v.Add("journey.start_time", "not a valid timestamp")
	}
	checkText("journey.message_id", j.GetMessageId(), maxMessageIDLen)
	if in.SampleSize < 0 || in.SampleSize > maxSampleSize {
		v.Add("sample_size", "must be 0 to %d, got %d", maxSampleSize, in.SampleSize)
	}
	checkText("request_id", in.RequestID, maxRequestIDLen)
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
					"app %s (%s) is suspended after %s: update its credentials or validate it", id,
					strings.TrimPrefix(key.Platform.String(), "PLATFORM_"), app.SuspendedReason)
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
	if err := validate(in); err != nil {
		return nil, nil, err
	}
	t := tenant.FromContext(ctx)
	if in.RequestID != "" && !in.DryRun {
		// A retried publish answers with the first journey, whatever
		// changed since.
		if prev, err := m.store.ByRequest(t, in.RequestID); err != nil || prev != nil {
			return prev, nil, err
		}
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
	j.Progress, j.Error, j.State = nil, "", deliveryv1.JourneyState_JOURNEY_STATE_UNSPECIFIED
	j.CreateTime, j.UpdateTime = nil, nil
	probe := newRunner(m, Ref{Tenant: t, ID: j.GetJourneyId()}, j, content, func() {})

	if in.DryRun {
		dr, err := m.dryRun(ctx, probe, in.SampleSize)
		if err != nil {
			return nil, nil, err
		}
		return j, dr, nil
	}
	// A few members are enough to know that the condition compiles, and
	// give the sample the templates must render for: as in a dry run, the
	// first member the journey would send to. One profile's odd data (an
	// attribute that is no URL where the image takes it) only excludes that
	// profile when the journey runs, so it must not block publishing for
	// everyone; when none of them would be sent to, the first member is the
	// sample, and the error names it.
	q := probe.query("")
	q.Limit = publishSampleCandidates
	var sample, first *profilev1.AudienceMember
	if err := m.audience.Query(ctx, q, func(resp *profilev1.QueryAudienceResponse) error {
		for _, member := range resp.GetMembers() {
			if first == nil {
				first = member
			}
			if sample == nil && probe.plan(ctx, member).exclusion == commonv1.ExclusionReason_EXCLUSION_REASON_UNSPECIFIED {
				sample = member
			}
		}
		return nil
	}); err != nil {
		return nil, nil, err
	}
	if sample == nil {
		sample = first
	}
	if err := checkSample(j, content, sample, now); err != nil {
		return nil, nil, err
	}

	j.State = deliveryv1.JourneyState_JOURNEY_STATE_RUNNING
	if st := j.GetStartTime(); st != nil && st.AsTime().After(now) {
		j.State = deliveryv1.JourneyState_JOURNEY_STATE_SCHEDULED
	}
	j.Progress = &deliveryv1.JourneyProgress{}
	j.CreateTime, j.UpdateTime = timestamppb.New(now), timestamppb.New(now)
	stored, existed, err := m.store.Create(t, j, in.RequestID)
	if err != nil {
		return nil, nil, err
	}
	if !existed {
		m.start(Ref{Tenant: t, ID: j.GetJourneyId()}, j, content, trace.SpanContextFromContext(ctx))
	}
	return stored, nil, nil
}

// sampleStandIn renders in place of a `required` value the sample profile
// lacks. It is an absolute https URL, so it cannot make an image_url that
// takes the whole URL, or a part of it, from the value invalid; and it is
// shorter than any `{{x | required}}` hole, so it adds no length.
const sampleStandIn = "https://x"

// checkSample renders every template of the journey (the default and each
// variant, for each platform it can serve) for a sample profile, the first
// audience member or, without one, a synthetic profile, and checks the
// result as the pipeline will: reserved data keys, image URL, lengths, the
// gateways' payload limits. A
// missing required value is not an error here (it excludes that profile
// only): the template is checked with sampleStandIn in its place, as the
// profiles that have the value will render it.
func checkSample(j *deliveryv1.Journey, content *Content, sample *profilev1.AudienceMember, now time.Time) error {
	values := &Values{ProfileID: syntheticProfile}
	if sample != nil {
		values = &Values{ProfileID: sample.GetProfileId(), Attributes: sample.GetAttributes(), Identities: sample.GetIdentities()}
	}
	v := &fault.ValidationError{}
	opts := j.GetDelivery()
	for _, cm := range content.messages() {
		n, err := cm.render(values)
		profile := "for profile " + values.ProfileID
		if errors.Is(err, ErrMissingValue) {
			missing := strings.TrimPrefix(err.Error(), ErrMissingValue.Error()+": ")
			profile = fmt.Sprintf("for profile %s, with %q standing in for its missing %s", values.ProfileID, sampleStandIn, missing)
			withStandIn := *values
			withStandIn.StandIn = sampleStandIn
			n, err = cm.render(&withStandIn)
		}
		if err != nil {
			v.Add(cm.field, "does not render: %v", err)
			continue
		}
		msg := delivery.Message{
			IdempotencyKey: "publish-check", MessageID: j.GetMessageId(), JourneyID: j.GetJourneyId(),
			Tokens:       []delivery.Target{{Token: "sample", Platform: commonv1.Platform_PLATFORM_APNS, AppID: "sample"}},
			Notification: n,
			APNs:         delivery.APNsOptions{PushType: delivery.APNsPushType(opts.GetApnsPushType()), CollapseID: opts.GetCollapseId()},
			FCM:          delivery.FCMOptions{Priority: delivery.FCMPriority(opts.GetPriority()), CollapseKey: opts.GetCollapseId()},
			TTL:          opts.GetTtl().AsDuration(),
		}
		var ve *fault.ValidationError
		if err := delivery.ValidateMessage(&msg, "", now); errors.As(err, &ve) {
			for _, fv := range ve.Violations {
				v.Add(journeyField(cm.field, fv.Field), "%s: %s", profile, fv.Description)
			}
		}
		// A template too large for a gateway (a static body over 4 KB, say)
		// would fail every send: refuse it now, for each platform it serves.
		for _, platform := range templatePlatforms(j, cm) {
			if err := delivery.CheckPayloadSize(&msg, platform, now); err != nil {
				v.Add(cm.field, "%s: %v", profile, err)
				break
			}
		}
	}
	return v.Err()
}

// templatePlatforms are the platforms a template can be sent on: its
// variant's, else the audience's, else both.
func templatePlatforms(j *deliveryv1.Journey, cm *compiledMessage) []commonv1.Platform {
	if cm.platform != commonv1.Platform_PLATFORM_UNSPECIFIED {
		return []commonv1.Platform{cm.platform}
	}
	if ps := j.GetAudience().GetPlatforms(); len(ps) > 0 {
		return ps
	}
	return []commonv1.Platform{commonv1.Platform_PLATFORM_APNS, commonv1.Platform_PLATFORM_FCM}
}

// journeyField maps a field of a delivery message back to the journey
// field it came from.
func journeyField(templateField, messageField string) string {
	f := strings.TrimPrefix(messageField, ".")
	switch {
	case strings.HasPrefix(f, "notification."):
		return templateField + "." + strings.TrimPrefix(f, "notification.")
	case f == "message_id", f == "journey_id":
		return "journey." + f
	case f == "apns.collapse_id", f == "fcm.collapse_key":
		return "journey.delivery.collapse_id"
	case f == "apns.push_type":
		return "journey.delivery.apns_push_type"
	case f == "fcm.priority":
		return "journey.delivery.priority"
	case f == "ttl":
		return "journey.delivery.ttl"
	}
	return templateField
}

// dryRun streams the audience and counts what the journey would do,
// rendering a few samples; it sends and stores nothing.
func (m *Manager) dryRun(ctx context.Context, r *runner, samples int) (*deliveryv1.DryRunResult, error) {
	if samples == 0 {
		samples = defaultSamples
	}
	ctx, span := tracer.Start(ctx, "journey.dry_run")
	defer span.End()
	dr := &deliveryv1.DryRunResult{}
	excluded := map[commonv1.ExclusionReason]int64{}
	var first *profilev1.AudienceMember
	start := time.Now()
	q := r.query("")
	q.BatchSize = 5000
	err := m.audience.Query(ctx, q, func(resp *profilev1.QueryAudienceResponse) error {
		dr.ProfilesScanned = resp.GetStats().GetScanned()
		for _, member := range resp.GetMembers() {
			dr.Qualified++
			p := r.plan(ctx, member)
			if p.exclusion != commonv1.ExclusionReason_EXCLUSION_REASON_UNSPECIFIED {
				excluded[p.exclusion]++
				continue
			}
			if first == nil {
				first = member
			}
			dr.TokensTargeted += int64(len(p.msgs))
			if len(dr.Samples) < samples {
				n := p.msgs[0].Notification
				dr.Samples = append(dr.Samples, &deliveryv1.RenderedSample{
					ProfileId: member.GetProfileId(), Platform: p.msgs[0].Tokens[0].Platform,
					Locale:       member.GetAttributes().GetFields()[localeAttribute].GetStringValue(),
					Notification: notificationProto(&n), Tokens: int32(len(p.msgs)),
				})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := checkSample(r.journey, r.content, first, m.cfg.Now()); err != nil {
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
