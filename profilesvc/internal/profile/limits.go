package profile

import (
	"errors"

	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Caps on one profile as a whole. The per-field limits (validate.go) bound
// one request or row; these bound what many of them add up to, so no
// profile grows past what one reply can carry. Every way a profile grows
// checks them inside its transaction, before changing anything:
// UpsertProfile (identities, attribute merges), RegisterPushToken and import
// rows (a token created on or moved to the profile, the row's attributes).
//
// The numbers keep a profile at its caps, with every field at its longest,
// far under gRPC's default 4 MiB message limit (sizes of the protobuf
// encoding, counting tags and lengths):
//
//   - ListPushTokens with include_inactive and include_history: a PushToken
//     is at most about 9.8 KB (a 4,096-byte token, 255-byte app id, 256-byte
//     device id, five 128-byte device fields, five timestamps, and
//     MaxTokenHistory moves of about 138 bytes each), so 100 tokens take
//     under 0.95 MiB;
//   - an audience member: 100 tokens of at most 5.4 KB each (no history,
//     one timestamp), 64 KiB of attributes, which take at most 4.5 times
//     their encoded size as a google.protobuf.Struct (a one-byte key with a
//     boolean value: 2 bytes encoded, 9 as a Struct entry), and 100
//     identities of at most 584 bytes: under 0.9 MiB, so one member always
//     fits in an audience batch (audience.MaxBatchBytes, 1 MiB);
//   - GetProfile: the attributes and identities, under 0.4 MiB.
//
// A cap reached is FailedPrecondition, not ResourceExhausted: it is a
// property of the profile's state that retrying does not change (gRPC
// reserves ResourceExhausted for quotas and exhausted capacity, which clear
// up with time and invite a retry with backoff, and uses it for messages
// over the size limit, which is what the caps prevent). The caller must
// change the state first: delete attributes, deactivate a token, or delete
// the profile.
const (
	// MaxProfileTokens bounds the tokens a profile owns, active and
	// inactive: the store keeps every token a profile registered (an
	// inactive one is kept so that a stale registration cannot revive it)
	// until it moves to another profile, the profile is deleted, or it is
	// evicted. A token new to a profile at the cap (created on it or moved
	// to it) evicts the profile's least recently seen inactive token, in
	// the same transaction, and is refused only when every token of the
	// profile is active (Workset.makeRoomForToken). What the store knew of
	// an evicted token goes with it, its deactivation by a gateway
	// included: a later stale registration of it creates it afresh.
	MaxProfileTokens = 100
	// MaxProfileAttributesBytes bounds a profile's attributes that are set,
	// measured as AttributesSize measures a request's (key length plus
	// encoded value). Deleted keys (tombstones) do not count: replies leave
	// them out.
	MaxProfileAttributesBytes = 64 << 10
	// MaxProfileIdentities bounds the identities of a profile.
	MaxProfileIdentities = 100
	// MaxTokenHistory is how many moves a token's history keeps: the
	// newest; older ones are dropped as new ones are appended. The history
	// is informative only (the owner is a register of its own).
	MaxTokenHistory = 32
)

// ErrLimit is wrapped by every LimitError: a profile would outgrow one of
// its caps.
var ErrLimit = errors.New("profile limit reached")

// LimitError says a change would take a profile past one of its caps. It
// names the request field that would have grown it (a *fault.FieldError
// wrapping ErrLimit) and the cap.
type LimitError struct {
	// Limit names the cap, e.g. "MaxProfileTokens".
	Limit string
	// Max is the cap's value.
	Max int
	err error
}

func (e *LimitError) Error() string { return e.err.Error() }

// Unwrap exposes the field error (and through it ErrLimit).
func (e *LimitError) Unwrap() error { return e.err }

// Field is the request field at fault.
func (e *LimitError) Field() string {
	f, _ := fault.FieldOf(e.err)
	return f
}

// Reason is the message without the field.
func (e *LimitError) Reason() string { return e.err.Error() }

func limitError(field, limit string, max int, format string, args ...any) error {
	return &LimitError{Limit: limit, Max: max, err: fault.OnField(ErrLimit, field, format, args...)}
}

func tokenLimitError(field, profile string) error {
	return limitError(field, "MaxProfileTokens", MaxProfileTokens,
		"profile %s already owns %d tokens, the most a profile keeps, and none of them is inactive to make room", profile, MaxProfileTokens)
}

func attributesLimitError(field, profile string, size int) error {
	return limitError(field, "MaxProfileAttributesBytes", MaxProfileAttributesBytes,
		"the attributes of profile %s would take %d bytes encoded, more than the %d a profile keeps", profile, size, MaxProfileAttributesBytes)
}

func identitiesLimitError(field, profile string, n int) error {
	return limitError(field, "MaxProfileIdentities", MaxProfileIdentities,
		"profile %s would have %d identities, more than the %d a profile keeps", profile, n, MaxProfileIdentities)
}
