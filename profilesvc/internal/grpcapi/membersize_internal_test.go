package grpcapi

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
	"github.com/pushmesh/pushmesh/profilesvc/internal/audience"
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// TestMemberSizeBoundsTheEncoding: audience.MemberSize, which bounds the
// messages of an audience query, is never less than what memberProto's
// member takes in a response, and not much more.
func TestMemberSizeBoundsTheEncoding(t *testing.T) {
	id := profile.ID{1, 2, 3}
	now := time.Now().UnixNano()
	long := strings.Repeat("x", 300)
	fullToken := profile.Token{Platform: profile.PlatformAPNS, AppID: "com.example", Token: strings.Repeat("ab", 2048), Env: profile.EnvProduction,
		DeviceID: "dev", Device: profile.Device{Model: "iPhone", OSVersion: "17", AppVersion: long, Locale: "en", TimeZone: "UTC"}, CreateTime: now}
	members := []audience.Member{
		{ID: id, Excluded: true, Reason: audience.ExcludedNoConsent},
		{ID: id, Attributes: map[string]any{}, Tokens: []profile.Token{{Platform: profile.PlatformFCM, AppID: "a", Token: "t"}}},
		{ID: id, Attributes: map[string]any{"tier": "gold", "age": 41.0, "vip": true, "gone": nil},
			Identities: []profile.Identity{{Namespace: "customer_id", Value: "C1"}, {Namespace: "email", Value: long}},
			Tokens:     []profile.Token{fullToken, fullToken}},
		{ID: id, Attributes: map[string]any{
			"l":    make([]any, 70000),
			"b":    []any{true, false, []any{}, map[string]any{}, map[string]any{"": nil, "k": []any{1.0, "s"}}},
			"m":    map[string]any{"n": map[string]any{"o": long}},
			"e":    "",
			long:   strings.Repeat("é", 5000),
			"big":  strings.Repeat("z", 70000),
			"zero": 0.0,
		}, Tokens: []profile.Token{{Platform: profile.PlatformFCM, AppID: "a", Token: "t"}}},
	}
	for i := range members {
		m := &members[i]
		pm, err := memberProto(m)
		if err != nil {
			t.Fatal(err)
		}
		// As a member of a response: with its tag and length.
		got := proto.Size(&profilev1.QueryAudienceResponse{Members: []*profilev1.AudienceMember{pm}})
		est := audience.MemberSize(m)
		t.Logf("member %d: %d bytes encoded, %d estimated", i, got, est)
		if est < got || est > got+got/10+64 {
			t.Errorf("member %d: estimated %d bytes, encoded %d", i, est, got)
		}
	}
}
