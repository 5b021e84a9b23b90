package profile

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pushmesh/pushmesh/servicekit/fault"
)

func TestValidateToken(t *testing.T) {
	apns64 := strings.Repeat("0123456789abcdef", 4)
	fcm := "dGVzdA:APA91bH3x_y-Z0" + strings.Repeat("a", 140)
	tests := []struct {
		name     string
		platform Platform
		token    string
		want     string // normalized; "" means rejected
	}{
		{"apns 64 hex", PlatformAPNS, apns64, apns64},
		{"apns uppercase is lowercased", PlatformAPNS, strings.ToUpper(apns64), apns64},
		{"apns mixed case", PlatformAPNS, "AbCdEf01", "abcdef01"},
		{"apns any length", PlatformAPNS, "a", "a"},
		{"apns 160 hex (longer tokens)", PlatformAPNS, strings.Repeat("ab", 80), strings.Repeat("ab", 80)},
		{"apns odd length", PlatformAPNS, "abc", "abc"},
		{"apns empty", PlatformAPNS, "", ""},
		{"apns non-hex letter", PlatformAPNS, apns64[:63] + "g", ""},
		{"apns space", PlatformAPNS, "ab cd", ""},
		{"apns angle brackets (NSData description)", PlatformAPNS, "<" + apns64 + ">", ""},
		{"apns too long", PlatformAPNS, strings.Repeat("a", MaxTokenLen+1), ""},
		{"apns at the limit", PlatformAPNS, strings.Repeat("a", MaxTokenLen), strings.Repeat("a", MaxTokenLen)},
		{"fcm typical", PlatformFCM, fcm, fcm},
		{"fcm keeps case", PlatformFCM, "AbC:xyz", "AbC:xyz"},
		{"fcm empty", PlatformFCM, "", ""},
		{"fcm space", PlatformFCM, "abc def", ""},
		{"fcm tab", PlatformFCM, "abc\tdef", ""},
		{"fcm newline", PlatformFCM, "abc\n", ""},
		{"fcm non-ascii", PlatformFCM, "abcé", ""},
		{"fcm nul", PlatformFCM, "ab\x00", ""},
		{"fcm del", PlatformFCM, "ab\x7f", ""},
		{"fcm at the limit", PlatformFCM, strings.Repeat("x", MaxTokenLen), strings.Repeat("x", MaxTokenLen)},
		{"fcm too long", PlatformFCM, strings.Repeat("x", MaxTokenLen+1), ""},
		{"unknown platform", Platform(9), "abc", ""},
		{"unspecified platform", PlatformUnspecified, "abc", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ValidateToken(tt.platform, tt.token)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("got %q accepted, want rejected", got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// FuzzValidateToken checks the token rules on any input: no panic; an
// accepted APNs token is non-empty lowercase hex of the same length, an
// accepted FCM token is unchanged visible ASCII; accepting is idempotent;
// and rejection is exactly what the rules say. The seed corpus lives in
// testdata/fuzz/FuzzValidateToken; `go test` runs it as a normal test.
func FuzzValidateToken(f *testing.F) {
	f.Add(uint8(PlatformAPNS), strings.Repeat("0123456789abcdef", 4))
	f.Add(uint8(PlatformAPNS), "ABCDEF")
	f.Add(uint8(PlatformFCM), "dGVzdA:APA91bH3x_y-Z0")
	f.Add(uint8(PlatformFCM), "has space")
	f.Add(uint8(0), "abc")
	f.Fuzz(func(t *testing.T, platform uint8, token string) {
		p := Platform(platform)
		got, err := ValidateToken(p, token)
		wantOK := len(token) > 0 && len(token) <= MaxTokenLen
		switch p {
		case PlatformAPNS:
			for i := 0; i < len(token); i++ {
				if !strings.ContainsRune("0123456789abcdefABCDEF", rune(token[i])) {
					wantOK = false
				}
			}
			if wantOK && (got != strings.ToLower(token)) {
				t.Fatalf("APNs %q: got %q, want the lowercase token", token, got)
			}
		case PlatformFCM:
			for i := 0; i < len(token); i++ {
				if token[i] < 0x21 || token[i] > 0x7E {
					wantOK = false
				}
			}
			if wantOK && got != token {
				t.Fatalf("FCM %q: got %q, want it unchanged", token, got)
			}
		default:
			wantOK = false
		}
		if (err == nil) != wantOK {
			t.Fatalf("platform %d, token %q: got error %v, want ok=%v", p, token, err, wantOK)
		}
		if err != nil {
			if got != "" {
				t.Fatalf("rejected token returned %q, want empty", got)
			}
			if strings.Contains(err.Error(), token) && len(token) > 8 {
				t.Fatalf("error %q repeats the token", err)
			}
			return
		}
		if !utf8.ValidString(got) {
			t.Fatalf("accepted token %q is not valid UTF-8", got)
		}
		again, err := ValidateToken(p, got)
		if err != nil || again != got {
			t.Fatalf("re-validating %q: got %q, %v; want it unchanged", got, again, err)
		}
	})
}

func TestValidateIdentity(t *testing.T) {
	tests := []struct {
		idn        Identity
		wantFields []string
	}{
		{Identity{"customer_id", "C-1"}, nil},
		{Identity{"email", "ada@example.com"}, nil},
		{Identity{"device-id_2", "x"}, nil},
		{Identity{"", "x"}, []string{"id.namespace"}},
		{Identity{"Email", "x"}, []string{"id.namespace"}},
		{Identity{"e mail", "x"}, []string{"id.namespace"}},
		{Identity{strings.Repeat("a", MaxNamespaceLen+1), "x"}, []string{"id.namespace"}},
		{Identity{"email", ""}, []string{"id.value"}},
		{Identity{"email", strings.Repeat("x", MaxIdentityLen+1)}, []string{"id.value"}},
		{Identity{"email", "bad\xffutf8"}, []string{"id.value"}},
		{Identity{"email", "line\nbreak"}, []string{"id.value"}},
		{Identity{"", ""}, []string{"id.namespace", "id.value"}},
	}
	for _, tt := range tests {
		var v fault.ValidationError
		ValidateIdentity(&v, "id", tt.idn)
		var got []string
		for _, fv := range v.Violations {
			got = append(got, fv.Field)
		}
		if strings.Join(got, ",") != strings.Join(tt.wantFields, ",") {
			t.Errorf("%+v: got violations on %q, want %q", tt.idn, got, tt.wantFields)
		}
	}
}

func TestValidateAttributes(t *testing.T) {
	deep := any("x")
	for i := 0; i < MaxAttributeDepth+1; i++ {
		deep = []any{deep}
	}
	tests := []struct {
		name      string
		attrs     map[string]any
		wantField string // "" means valid
	}{
		{"typical", map[string]any{"tier": "gold", "age": 41.0, "vip": true, "tags": []any{"a"}, "addr": map[string]any{"city": "Paris"}}, ""},
		{"null deletes", map[string]any{"tier": nil}, ""},
		{"empty key", map[string]any{"": "x"}, "attributes."},
		{"long key", map[string]any{strings.Repeat("k", MaxAttributeKeyLen+1): "x"}, "attributes." + strings.Repeat("k", MaxAttributeKeyLen+1)},
		{"too deep", map[string]any{"deep": deep}, "attributes.deep"},
		{"too big", map[string]any{"blob": strings.Repeat("x", MaxAttributesBytes+1)}, "attributes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v fault.ValidationError
			ValidateAttributes(&v, "attributes", tt.attrs)
			if tt.wantField == "" {
				if err := v.Err(); err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			if len(v.Violations) == 0 || v.Violations[0].Field != tt.wantField {
				t.Fatalf("got %+v, want a violation on %q", v.Violations, tt.wantField)
			}
		})
	}
}

func TestValidateSourceTime(t *testing.T) {
	now := int64(1_700_000_000) * sec
	tests := []struct {
		at int64
		ok bool
	}{
		{now, true},
		{now - 365*24*3600*sec, true},
		{now + int64(MaxFutureSkew), true},
		{now + int64(MaxFutureSkew) + 1, false},
		{0, false},
		{-5, false},
	}
	for _, tt := range tests {
		if err := ValidateSourceTime(tt.at, now); (err == nil) != tt.ok {
			t.Errorf("ValidateSourceTime(%d): got %v, want ok=%v", tt.at, err, tt.ok)
		}
	}
}
