package profile

import (
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Limits on what callers may store. They keep records and index keys small
// and stop one caller from bloating the file.
const (
	// MaxTokenLen bounds tokens of both platforms. FCM documents 4096 bytes;
	// APNs tokens are 64 hex characters today and Apple says they may grow,
	// so no fixed length is assumed, only this sanity bound.
	MaxTokenLen        = 4096
	MaxAppIDLen        = 255
	MaxDeviceIDLen     = 256
	MaxDeviceFieldLen  = 128
	MaxSourceLen       = 64
	MaxNamespaceLen    = 64
	MaxIdentityLen     = 512
	MaxAttributeKeyLen = 256
	// MaxAttributesBytes bounds the encoded attributes of one request or row
	// (see AttributesSize).
	MaxAttributesBytes = 64 << 10
	// MaxAttributeDepth bounds the nesting of lists and maps.
	MaxAttributeDepth = 8
	// MaxFutureSkew is how far in the future a source timestamp may be. A
	// timestamp far ahead would win every later conflict forever.
	MaxFutureSkew = 24 * time.Hour
)

// ValidateToken checks a token for its platform and returns its stored form
// (APNs tokens lowercased). The error says what is wrong, without repeating
// the token.
func ValidateToken(p Platform, token string) (string, error) {
	switch p {
	case PlatformAPNS:
		return validateAPNSToken(token)
	case PlatformFCM:
		return validateFCMToken(token)
	}
	return "", errors.New("unknown platform")
}

// validateAPNSToken accepts non-empty hexadecimal of any length up to
// MaxTokenLen and lowercases it.
func validateAPNSToken(token string) (string, error) {
	if token == "" {
		return "", errors.New("is empty")
	}
	if len(token) > MaxTokenLen {
		return "", fmt.Errorf("is %d bytes, more than %d", len(token), MaxTokenLen)
	}
	upper := false
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			upper = true
		default:
			return "", fmt.Errorf("is not hexadecimal: byte %d is %q", i, c)
		}
	}
	if !upper {
		return token, nil
	}
	b := []byte(token)
	for i, c := range b {
		if c >= 'A' && c <= 'F' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b), nil
}

// validateFCMToken accepts 1 to 4096 visible ASCII characters (0x21-0x7E).
// A space is rejected too: no FCM token has one, and one usually means a
// padded CSV field.
func validateFCMToken(token string) (string, error) {
	if token == "" {
		return "", errors.New("is empty")
	}
	if len(token) > MaxTokenLen {
		return "", fmt.Errorf("is %d bytes, more than %d", len(token), MaxTokenLen)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c < 0x21 || c > 0x7E {
			return "", fmt.Errorf("is not printable ASCII: byte %d is %q", i, c)
		}
	}
	return token, nil
}

// ValidatePlatform accepts APNs and FCM.
func ValidatePlatform(p Platform) error {
	if p != PlatformAPNS && p != PlatformFCM {
		if p == PlatformUnspecified {
			return errors.New("is required (PLATFORM_APNS or PLATFORM_FCM)")
		}
		return fmt.Errorf("unknown platform %d", p)
	}
	return nil
}

// ValidateEnvironment accepts the three API values.
func ValidateEnvironment(e Environment) error {
	if e > EnvProduction {
		return fmt.Errorf("unknown APNs environment %d", e)
	}
	return nil
}

// ValidateAppID accepts 1 to 255 visible ASCII characters: bundle ids and
// Android package names are much narrower, but any app id deliverysvc
// registers must fit.
func ValidateAppID(appID string) error {
	if appID == "" {
		return errors.New("is required")
	}
	if len(appID) > MaxAppIDLen {
		return fmt.Errorf("is %d bytes, more than %d", len(appID), MaxAppIDLen)
	}
	for i := 0; i < len(appID); i++ {
		if c := appID[i]; c < 0x21 || c > 0x7E {
			return fmt.Errorf("byte %d is %q; want visible ASCII", i, c)
		}
	}
	return nil
}

// ValidateText checks an optional free-text field: valid UTF-8, no control
// characters, at most max bytes.
func ValidateText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("is %d bytes, more than %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7F {
			return fmt.Errorf("contains control character %U", r)
		}
	}
	return nil
}

// ValidateNamespace accepts 1 to 64 characters of a-z, 0-9, '_' and '-'.
func ValidateNamespace(ns string) error {
	if ns == "" {
		return errors.New("is required")
	}
	if len(ns) > MaxNamespaceLen {
		return fmt.Errorf("is %d bytes, more than %d", len(ns), MaxNamespaceLen)
	}
	for i := 0; i < len(ns); i++ {
		c := ns[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("character %q at %d is not allowed (use a-z, 0-9, '_' and '-')", c, i)
		}
	}
	return nil
}

// ValidateIdentityValue accepts 1 to 512 bytes of UTF-8 without control
// characters.
func ValidateIdentityValue(v string) error {
	if v == "" {
		return errors.New("is required")
	}
	return ValidateText(v, MaxIdentityLen)
}

// ValidateIdentity checks both parts of an identity into v, under field.
func ValidateIdentity(v *fault.ValidationError, field string, idn Identity) {
	if err := ValidateNamespace(idn.Namespace); err != nil {
		v.Add(field+".namespace", "%v", err)
	}
	if err := ValidateIdentityValue(idn.Value); err != nil {
		v.Add(field+".value", "%v", err)
	}
}

// ValidateSourceTime checks a source timestamp (unix nanoseconds): after
// 1970 and at most MaxFutureSkew ahead of now.
func ValidateSourceTime(t, now int64) error {
	if t <= 0 {
		return errors.New("must be after 1970-01-01")
	}
	if t > now+int64(MaxFutureSkew) {
		return fmt.Errorf("is more than %s in the future", MaxFutureSkew)
	}
	return nil
}

// ValidateAttributeKey accepts 1 to MaxAttributeKeyLen bytes of UTF-8.
func ValidateAttributeKey(k string) error {
	if k == "" || len(k) > MaxAttributeKeyLen || !utf8.ValidString(k) {
		return fmt.Errorf("attribute keys must be 1 to %d bytes of UTF-8", MaxAttributeKeyLen)
	}
	return nil
}

// AttrSize measures attributes given as a map, as ValidateAttributes found
// them.
type AttrSize struct {
	// Encoded is the size the attributes count against MaxAttributesBytes
	// and MaxProfileAttributesBytes: each key's length plus its value's
	// encoded size, deletions (nil values) included.
	Encoded int
	// Memory estimates the heap the map takes (see memMap): mostly
	// per-value overhead (interfaces, map slots, slice elements) besides
	// the strings' bytes, so it is not proportional to Encoded: a list of
	// booleans takes 16 times its encoded size, a long string about as
	// much.
	Memory int
}

// Estimated heap sizes of attribute values as the API adapter builds them
// (structpb.Struct.AsMap): within 10% of the measured heap of rows of
// strings, numbers, lists of booleans or numbers, and half as much again
// for many small nested maps.
const (
	memIface    = 16 // an interface: a slice element or map slot half
	memMapEntry = 56 // a map slot (key header and value interface) with its share of control bytes at the usual load
	memMap      = 48 // a map's header
	memSlice    = 24 // a slice header, boxed in an interface
	memString   = 24 // a string header, boxed, and size-class rounding
)

// memStringBytes is what n bytes of string take: large allocations are
// rounded up to whole pages.
func memStringBytes(n int) int { return memString + n + n/8 }

// memMapOf is the heap of a map of n entries besides its keys' bytes and
// its values' payloads; small maps still hold a group of 8 slots.
func memMapOf(n int) int { return memMap + memMapEntry*max(n, 8) }

// ValidateAttributes checks attribute values given as a map from the API (nil
// values mean "remove the key") into v, under field, and measures them.
func ValidateAttributes(v *fault.ValidationError, field string, attrs map[string]any) AttrSize {
	size := AttrSize{Memory: memMapOf(len(attrs))}
	for k, val := range attrs {
		path := field + "." + k
		if err := ValidateAttributeKey(k); err != nil {
			v.Add(path, "%v", err)
			continue
		}
		if err := validateValue(val, 1, &size.Memory); err != nil {
			v.Add(path, "%v", err)
			continue
		}
		size.Encoded += len(k) + valueSize(val)
		size.Memory += memStringBytes(len(k)) - memString // the key's bytes; its header is in the slot
	}
	if size.Encoded > MaxAttributesBytes {
		v.Add(field, "attributes take %d bytes encoded, more than %d", size.Encoded, MaxAttributesBytes)
	}
	return size
}

// AttributesSize is the encoded size of attrs as ValidateAttributes counts
// it.
func AttributesSize(attrs map[string]any) int {
	n := 0
	for k, val := range attrs {
		n += len(k) + valueSize(val)
	}
	return n
}

// validateValue checks one value and adds the heap its payload takes
// (beyond the interface holding it) to *mem.
func validateValue(val any, depth int, mem *int) error {
	if depth > MaxAttributeDepth {
		return fmt.Errorf("nested deeper than %d levels", MaxAttributeDepth)
	}
	switch x := val.(type) {
	case nil, bool:
		return nil
	case string:
		if !utf8.ValidString(x) {
			return errors.New("string is not valid UTF-8")
		}
		*mem += memStringBytes(len(x))
		return nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return errors.New("numbers must be finite")
		}
		*mem += 8
		return nil
	case []any:
		*mem += memSlice + memIface*len(x)
		for _, e := range x {
			if err := validateValue(e, depth+1, mem); err != nil {
				return err
			}
		}
		return nil
	case map[string]any:
		*mem += memIface + memMapOf(len(x))
		for k, e := range x {
			if !utf8.ValidString(k) {
				return errors.New("map key is not valid UTF-8")
			}
			*mem += memStringBytes(len(k)) - memString
			if err := validateValue(e, depth+1, mem); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unsupported value type %T", val)
}
