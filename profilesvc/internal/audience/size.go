package audience

import (
	"github.com/pushmesh/pushmesh/profilesvc/internal/profile"
)

// Sizes of a member as the API encodes it (pushmesh.profile.v1.AudienceMember
// inside a QueryAudienceResponse), computed from the member without
// encoding it, to bound the size of each message. They count every field
// the gRPC adapter sets (see grpcapi.memberProto) with its tag and length;
// where a length is not known (a timestamp's varints) they take the
// longest. A test in grpcapi checks them against the real encoding.
const (
	// idField is a profile id: 26 characters with tag and length.
	idField = 1 + 1 + 26
	// timeField is a google.protobuf.Timestamp with tag and length, its
	// seconds and nanoseconds at their longest before the year 2262.
	timeField = 1 + 1 + (1 + 5) + (1 + 5)
	// enumField is a small enum or bool with its tag.
	enumField = 2
)

// MemberSize is the size of m encoded in a QueryAudienceResponse's members
// (as the field, with its tag and length), or a little more.
func MemberSize(m *Member) int {
	n := idField
	if m.Excluded {
		return msgField(n + 2*enumField)
	}
	n += msgField(structSize(m.Attributes))
	for _, idn := range m.Identities {
		n += msgField(strField(len(idn.Namespace)) + strField(len(idn.Value)))
	}
	for i := range m.Tokens {
		n += msgField(tokenSize(&m.Tokens[i]))
	}
	return msgField(n)
}

// tokenSize is the size of a token streamed to an audience (see
// grpcapi.memberTokenProto).
func tokenSize(t *profile.Token) int {
	n := strField(len(t.Token)) + enumField + strField(len(t.AppID)) + enumField +
		strField(len(t.DeviceID)) + idField + enumField + timeField
	if !t.Device.IsZero() {
		d := &t.Device
		n += msgField(strField(len(d.Model)) + strField(len(d.OSVersion)) + strField(len(d.AppVersion)) +
			strField(len(d.Locale)) + strField(len(d.TimeZone)))
	}
	return n
}

// structSize is the size of a google.protobuf.Struct holding m.
func structSize(m map[string]any) int {
	n := 0
	for k, v := range m {
		n += msgField(strField(len(k)) + msgField(protoValueSize(v)))
	}
	return n
}

// protoValueSize is the size of a google.protobuf.Value holding v (one of
// the attribute value types).
func protoValueSize(v any) int {
	switch x := v.(type) {
	case string:
		return strField(len(x))
	case float64:
		return 1 + 8
	case []any:
		n := 0
		for _, e := range x {
			n += msgField(protoValueSize(e))
		}
		return msgField(n)
	case map[string]any:
		return msgField(structSize(x))
	}
	return enumField // null, bool
}

// strField is the size of a string or bytes field of n bytes.
func strField(n int) int { return 1 + uvarintLen(n) + n }

// msgField is the size of a message field whose message takes n bytes.
func msgField(n int) int { return 1 + uvarintLen(n) + n }

func uvarintLen(n int) int {
	l := 1
	for u := uint64(n); u >= 0x80; u >>= 7 {
		l++
	}
	return l
}
