package grpcapi

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/audience"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
	"github.com/pushmesh/pushmesh/profilesvc/internal/store"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// This file converts between the API's messages and the domain's types and
// validates requests on the way in, naming each field as the API does.

func ts(nanos int64) *timestamppb.Timestamp {
	if nanos == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, nanos))
}

// timeOf converts a request timestamp to unix nanoseconds; def when unset.
// ok is false when the timestamp is invalid (reported into v).
func timeOf(v *fault.ValidationError, field string, t *timestamppb.Timestamp, def int64) (n int64, ok bool) {
	if t == nil {
		return def, true
	}
	if err := t.CheckValid(); err != nil {
		v.Add(field, "is not a valid timestamp: %v", err)
		return 0, false
	}
	// Nanosecond unix times overflow int64 after the year 2262.
	if t.Seconds > (1<<63-1)/int64(time.Second)-1 {
		v.Add(field, "is too far in the future")
		return 0, false
	}
	return t.AsTime().UnixNano(), true
}

// sourceTime reads a source timestamp (now when unset) and checks it. A
// timestamp that is set but empty (google.protobuf.Timestamp{}, the epoch)
// is not "unset": it fails the check like any other time not after 1970,
// instead of being stored as a time every other registration beats.
func sourceTime(v *fault.ValidationError, field string, t *timestamppb.Timestamp, now int64) int64 {
	n, ok := timeOf(v, field, t, now)
	if !ok {
		return 0
	}
	if err := profile.ValidateSourceTime(n, now); err != nil {
		v.Add(field, "%v", err)
	}
	return n
}

func parseID(v *fault.ValidationError, field, s string) profile.ID {
	id, err := profile.ParseID(s)
	if err != nil {
		v.Add(field, "%v", err)
	}
	return id
}

// ref converts a required ProfileRef at field (e.g. "profile").
func ref(v *fault.ValidationError, field string, r *profilev1.ProfileRef) profile.Ref {
	switch x := r.GetRef().(type) {
	case *profilev1.ProfileRef_ProfileId:
		return profile.Ref{ID: parseID(v, field+".profile_id", x.ProfileId)}
	case *profilev1.ProfileRef_Identity:
		idn := identity(x.Identity)
		profile.ValidateIdentity(v, field+".identity", idn)
		return profile.Ref{Identity: idn, ByIdentity: true}
	}
	v.Add(field, "is required: give profile_id or identity")
	return profile.Ref{}
}

func identity(i *profilev1.Identity) profile.Identity {
	return profile.Identity{Namespace: i.GetNamespace(), Value: i.GetValue()}
}

func platform(v *fault.ValidationError, field string, p commonv1.Platform) profile.Platform {
	pl := profile.Platform(p)
	if p < 0 || p > 255 {
		pl = 255
	}
	if err := profile.ValidatePlatform(pl); err != nil {
		v.Add(field, "%v", err)
	}
	return pl
}

// environment reads an APNs environment; it only applies to APNs tokens and
// is dropped for FCM ones.
func environment(v *fault.ValidationError, field string, p profile.Platform, e commonv1.ApnsEnvironment) profile.Environment {
	if e < 0 || e > commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION {
		v.Add(field, "unknown APNs environment %d", e)
		return 0
	}
	if p != profile.PlatformAPNS {
		return profile.EnvUnspecified
	}
	return profile.Environment(e)
}

// tokenKey reads and validates a token with its platform and app, under
// prefix ("" or e.g. "feedback[3].").
func tokenKey(v *fault.ValidationError, prefix, token string, p commonv1.Platform, appID string) profile.TokenKey {
	k := profile.TokenKey{Platform: platform(v, prefix+"platform", p), AppID: appID}
	if err := profile.ValidateAppID(appID); err != nil {
		v.Add(prefix+"app_id", "%v", err)
	}
	if profile.ValidatePlatform(k.Platform) == nil {
		norm, err := profile.ValidateToken(k.Platform, token)
		if err != nil {
			v.Add(prefix+"token", "%v token %v", k.Platform, err)
		}
		k.Token = norm
	}
	return k
}

func text(v *fault.ValidationError, field, s string, max int) string {
	if err := profile.ValidateText(s, max); err != nil {
		v.Add(field, "%v", err)
	}
	return s
}

func device(v *fault.ValidationError, field string, d *commonv1.DeviceInfo) profile.Device {
	return profile.Device{
		Model:      text(v, field+".model", d.GetModel(), profile.MaxDeviceFieldLen),
		OSVersion:  text(v, field+".os_version", d.GetOsVersion(), profile.MaxDeviceFieldLen),
		AppVersion: text(v, field+".app_version", d.GetAppVersion(), profile.MaxDeviceFieldLen),
		Locale:     text(v, field+".locale", d.GetLocale(), profile.MaxDeviceFieldLen),
		TimeZone:   text(v, field+".time_zone", d.GetTimeZone(), profile.MaxDeviceFieldLen),
	}
}

// attributes converts and validates attributes, and measures them.
func attributes(v *fault.ValidationError, field string, s *structpb.Struct) (map[string]any, profile.AttrSize) {
	if s == nil {
		return nil, profile.AttrSize{}
	}
	m := s.AsMap()
	return m, profile.ValidateAttributes(v, field, m)
}

func profileProto(st store.ProfileState) (*profilev1.Profile, error) {
	p := st.Profile
	attrs, err := structProto(p.VisibleAttributes())
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", p.ID, err)
	}
	out := &profilev1.Profile{
		ProfileId:        p.ID.String(),
		Identities:       identitiesProto(p.Identities),
		Attributes:       attrs,
		CreateTime:       ts(p.CreateTime),
		UpdateTime:       ts(p.UpdateTime),
		ActiveTokenCount: int32(st.ActiveTokens),
	}
	if p.Consent != profile.ConsentUnspecified || p.ConsentTime != 0 {
		out.Consent = &profilev1.PushConsent{State: profilev1.ConsentState(p.Consent), UpdateTime: ts(p.ConsentTime)}
	}
	return out, nil
}

func identitiesProto(ids []profile.Identity) []*profilev1.Identity {
	out := make([]*profilev1.Identity, len(ids))
	for i, idn := range ids {
		out[i] = &profilev1.Identity{Namespace: idn.Namespace, Value: idn.Value}
	}
	return out
}

// Limits of profilev1.MemberFields.
const (
	maxMemberAttributes = 256
	maxMemberNamespaces = 64
)

// memberFields validates a QueryAudience request's selection; nil (no
// selection) means whole members.
func memberFields(v *fault.ValidationError, mf *profilev1.MemberFields) *audience.Fields {
	if mf == nil {
		return nil
	}
	f := &audience.Fields{
		Attributes: make(map[string]struct{}, len(mf.GetAttributes())),
		Namespaces: make(map[string]struct{}, len(mf.GetIdentityNamespaces())),
	}
	tooMany := false
	if n := len(mf.GetAttributes()); n > maxMemberAttributes {
		v.Add("member_fields.attributes", "names %d attributes, more than %d", n, maxMemberAttributes)
		tooMany = true
	}
	if n := len(mf.GetIdentityNamespaces()); n > maxMemberNamespaces {
		v.Add("member_fields.identity_namespaces", "names %d namespaces, more than %d", n, maxMemberNamespaces)
		tooMany = true
	}
	if tooMany {
		return f
	}
	for i, name := range mf.GetAttributes() {
		if err := profile.ValidateAttributeKey(name); err != nil {
			v.Add(fmt.Sprintf("member_fields.attributes[%d]", i), "%v", err)
			continue
		}
		f.Attributes[name] = struct{}{}
	}
	for i, ns := range mf.GetIdentityNamespaces() {
		if err := profile.ValidateNamespace(ns); err != nil {
			v.Add(fmt.Sprintf("member_fields.identity_namespaces[%d]", i), "%v", err)
			continue
		}
		f.Namespaces[ns] = struct{}{}
	}
	return f
}

// structProto converts stored attributes. They were validated on the way
// in, so an error means a corrupt record or a bug: it fails the call
// (Internal) rather than dropping attributes silently.
func structProto(m map[string]any) (*structpb.Struct, error) {
	s, err := structpb.NewStruct(m)
	if err != nil {
		return nil, fmt.Errorf("stored attributes do not convert: %w", err)
	}
	return s, nil
}

func tokenProto(t *profile.Token, withHistory bool) *profilev1.PushToken {
	out := &profilev1.PushToken{
		Token:           t.Token,
		Platform:        commonv1.Platform(t.Platform),
		AppId:           t.AppID,
		ApnsEnvironment: commonv1.ApnsEnvironment(t.Env),
		DeviceId:        t.DeviceID,
		ProfileId:       t.Owner.String(),
		SourceTime:      ts(t.SourceStamp.Time),
		// The newest registration always wins, so the last one seen is
		// the winning one.
		LastSeenTime:   ts(t.SourceStamp.Time),
		State:          profilev1.TokenState_TOKEN_STATE_ACTIVE,
		InactiveReason: profilev1.InactiveReason(t.InactiveReason()),
		CreateTime:     ts(t.CreateTime),
		UpdateTime:     ts(t.UpdateTime),
	}
	if !t.Active() {
		out.State = profilev1.TokenState_TOKEN_STATE_INACTIVE
	}
	if t.Reason.FromGateway() {
		out.GatewayInvalidTime = ts(t.DeactivatedAt)
	}
	if !t.Device.IsZero() {
		out.Device = deviceProto(t.Device)
	}
	if withHistory {
		out.History = make([]*profilev1.TokenMove, len(t.History))
		for i, m := range t.History {
			mv := &profilev1.TokenMove{ToProfileId: m.To.String(), Time: ts(m.Time), Source: m.Source}
			if !m.From.IsZero() {
				mv.FromProfileId = m.From.String()
			}
			out.History[i] = mv
		}
	}
	return out
}

func memberProto(m *audience.Member) (*profilev1.AudienceMember, error) {
	out := &profilev1.AudienceMember{ProfileId: m.ID.String(), Excluded: m.Excluded}
	if m.Excluded {
		out.ExclusionReason = commonv1.ExclusionReason(m.Reason)
		return out, nil
	}
	attrs, err := structProto(m.Attributes)
	if err != nil {
		return nil, fmt.Errorf("profile %s: %w", m.ID, err)
	}
	out.Attributes = attrs
	out.Identities = identitiesProto(m.Identities)
	out.Tokens = make([]*profilev1.PushToken, len(m.Tokens))
	for i := range m.Tokens {
		out.Tokens[i] = memberTokenProto(&m.Tokens[i], m.ID)
	}
	return out, nil
}

// memberTokenProto converts a token streamed to an audience: what sending
// needs, from the token's details (no stamps, no history).
func memberTokenProto(t *profile.Token, owner profile.ID) *profilev1.PushToken {
	out := &profilev1.PushToken{
		Token:           t.Token,
		Platform:        commonv1.Platform(t.Platform),
		AppId:           t.AppID,
		ApnsEnvironment: commonv1.ApnsEnvironment(t.Env),
		DeviceId:        t.DeviceID,
		ProfileId:       owner.String(),
		State:           profilev1.TokenState_TOKEN_STATE_ACTIVE,
		CreateTime:      ts(t.CreateTime),
	}
	if !t.Device.IsZero() {
		out.Device = deviceProto(t.Device)
	}
	return out
}

func deviceProto(d profile.Device) *commonv1.DeviceInfo {
	return &commonv1.DeviceInfo{
		Model:      d.Model,
		OsVersion:  d.OSVersion,
		AppVersion: d.AppVersion,
		Locale:     d.Locale,
		TimeZone:   d.TimeZone,
	}
}

func statsProto(s *audience.Stats) *profilev1.AudienceStats {
	out := &profilev1.AudienceStats{Scanned: s.Scanned, Qualified: s.Qualified, Tokens: s.Tokens}
	for reason, n := range s.Excluded {
		if n > 0 {
			out.Excluded = append(out.Excluded, &commonv1.ExclusionCount{Reason: commonv1.ExclusionReason(reason), Count: n})
		}
	}
	return out
}
