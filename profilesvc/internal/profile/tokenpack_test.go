package profile

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

func TestTokenPacking(t *testing.T) {
	apns := strings.Repeat("0123456789abcdef", 4)
	fcm := "dGVzdC1pbnN0YW5jZQ:APA91b" + strings.Repeat("Zm9vYmFy_-09", 11)
	tests := []struct {
		name     string
		token    string
		kind     byte
		wantSize int // encoded bytes, when it matters
	}{
		{"empty", "", tokenText, 2},
		{"APNs, 64 hex digits", apns, tokenHex, 2 + 32},
		{"odd number of hex digits", "abc", tokenHex, 2 + 2},
		{"uppercase hex is not hex", "ABCDEF", tokenBase64, 3 + 5},
		{"FCM registration token", fcm, tokenBase64, 4 + (6*(len(fcm)-1)+7)/8}, // 156 characters: a 2-byte count
		{"base64 without a colon", "abcXYZ09-_", tokenBase64, 0},
		{"colon first", ":abc", tokenBase64, 0},
		{"colon last", "abc:", tokenBase64, 0},
		{"colon alone", ":", tokenBase64, 0},
		{"two colons", "ab:cd:ef", tokenText, 0},
		{"space", "ab cd", tokenText, 0},
		{"base64 padding", "YWJj=", tokenText, 0},
		{"non-ASCII", "jeton-é", tokenText, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := appendToken(nil, tt.token)
			if enc[0] != tt.kind {
				t.Errorf("kind %d, want %d", enc[0], tt.kind)
			}
			if tt.wantSize > 0 && len(enc) != tt.wantSize {
				t.Errorf("encoded in %d bytes, want %d", len(enc), tt.wantSize)
			}
			r := reader{b: append(enc, 0x55)}
			got, _ := r.token(nil)
			if r.err != nil || string(got) != tt.token {
				t.Fatalf("decoded %q (%v), want %q", got, r.err, tt.token)
			}
			if len(r.b) != 1 {
				t.Fatalf("decoding left %d bytes, want the 1 that followed", len(r.b))
			}
			r = reader{b: append(enc, 0x55)}
			if n := r.tokenLen(); r.err != nil || n != len(tt.token) || len(r.b) != 1 {
				t.Fatalf("tokenLen %d (%v, %d bytes left), want %d", n, r.err, len(r.b), len(tt.token))
			}
		})
	}
}

// FuzzTokenPacking checks that any text comes back exactly, and that
// decoding any bytes fails cleanly.
func FuzzTokenPacking(f *testing.F) {
	f.Add("0123456789abcdef", []byte{tokenHex, 3, 0xab, 0xc0})
	f.Add("abc:DEF_-", []byte{tokenBase64, 200, 1, 1, 2})
	f.Add("x y", []byte{tokenText, 9, 'a'})
	f.Fuzz(func(t *testing.T, token string, garbage []byte) {
		r := reader{b: appendToken(nil, token)}
		if got, _ := r.token([]byte("scratch")[:0]); r.err != nil || string(got) != token || len(r.b) != 0 {
			t.Fatalf("decoded %q (%v, %d bytes left), want %q", got, r.err, len(r.b), token)
		}
		r = reader{b: garbage}
		got, _ := r.token(nil)
		if r.err == nil && len(got) > 8*len(garbage) {
			t.Fatalf("%d bytes decoded to %d characters", len(garbage), len(got))
		}
		r2 := reader{b: garbage}
		if n := r2.tokenLen(); (r.err == nil) != (r2.err == nil) || (r.err == nil && (n != len(got) || len(r.b) != len(r2.b))) {
			t.Fatalf("tokenLen %d (%v), token %d characters (%v)", n, r2.err, len(got), r.err)
		}
	})
}

// encodeDetailsV1 is EncodeDetails as it was before version 2, to check
// that stored version 1 records still read the same.
func encodeDetailsV1(dst []byte, t *Token) []byte {
	dst = append(dst, detailsV1, byte(t.Platform))
	if t.Active() {
		dst = append(dst, 1)
	} else {
		dst = append(dst, 0)
	}
	dst = appendStr(dst, t.AppID)
	dst = appendStr(dst, t.Token)
	dst = append(dst, byte(t.Env))
	for _, s := range []string{t.DeviceID, t.Device.Model, t.Device.OSVersion, t.Device.AppVersion, t.Device.Locale, t.Device.TimeZone} {
		dst = appendStr(dst, s)
	}
	dst = binary.AppendVarint(dst, t.CreateTime)
	dst = binary.AppendUvarint(dst, uint64(len(t.History)))
	for _, m := range t.History {
		dst = append(dst, m.From[:]...)
		dst = append(dst, m.To[:]...)
		dst = binary.AppendVarint(dst, m.Time)
		dst = appendStr(dst, m.Source)
	}
	return dst
}

// encodeHotV1 is a hot record as written before flag 8: the device
// fingerprint always present.
func encodeHotV1(t *Token) []byte {
	fp := t.DeviceFP
	t.DeviceFP = 1 // so EncodeHot writes the fingerprint
	b := EncodeHot(nil, t)
	t.DeviceFP = fp
	i := len(t.Owner) + 1 // flags
	r := reader{b: b[i+1:]}
	r.stamp()
	r.byte()
	if b[i]&hotEnvStampIsSource == 0 {
		r.stamp()
	}
	binary.LittleEndian.PutUint64(r.b, fp)
	return b
}

func TestDetailsVersion1StillRead(t *testing.T) {
	want := sampleToken()
	want.Token = strings.Repeat("9f", 32)
	v1 := encodeDetailsV1(nil, want)
	got := &Token{}
	if err := DecodeFullDetails(got, v1); err != nil {
		t.Fatal(err)
	}
	if got.Token != want.Token || !reflect.DeepEqual(got.History, want.History) || got.Device != want.Device || got.CreateTime != want.CreateTime {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	v2 := EncodeDetails(nil, want)
	if len(v2) >= len(v1)-32-16 {
		t.Errorf("version 2 record %d bytes, version 1 %d: want at least the token's half and one move's from saved", len(v2), len(v1))
	}
	v, err := ParseView(EncodeProfile(nil, sampleProfile()), [][]byte{v1, v2})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	err = v.EachTokenHead(func(h *TokenHead) bool {
		if tok, err := h.Full(); err != nil || tok.Token != want.Token {
			t.Errorf("head token %q (%v), want %q", tok.Token, err, want.Token)
		}
		sizes = append(sizes, h.Size())
		return true
	})
	// Version 2: the token's text in place of its kind, count and 32 bytes.
	if want := []int{len(v1), len(v2) - 34 + 64}; err != nil || !reflect.DeepEqual(sizes, want) {
		t.Fatalf("head sizes %v (%v), want %v", sizes, err, want)
	}

	hot := sampleToken()
	hot.DeviceFP = 0
	got, err = DecodeHot(hot.Key(), encodeHotV1(hot))
	if err != nil || got.DeviceFP != 0 || got.DeviceStamp != hot.DeviceStamp || got.UpdateTime != hot.UpdateTime {
		t.Fatalf("version 1 hot record: got %+v (%v), want %+v", got, err, hot)
	}
}

func TestHistoryRoundTrip(t *testing.T) {
	want := sampleToken()
	want.History = []Move{
		{To: ID{1}, Time: 1, Source: "register"},
		{From: ID{1}, To: ID{2}, Time: 2, Source: "import"},
		{From: ID{7}, To: ID{3}, Time: 3, Source: ""}, // from is not the previous "to"
		{From: ID{3}, To: ID{1}, Time: -4, Source: "android-sdk"},
	}
	got := &Token{}
	if err := DecodeFullDetails(got, EncodeDetails(nil, want)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.History, want.History) {
		t.Fatalf("got %+v, want %+v", got.History, want.History)
	}
}

func BenchmarkTokenPacking(b *testing.B) {
	for _, tt := range []struct{ name, token string }{
		{"APNs", strings.Repeat("0123456789abcdef", 4)},
		{"FCM", "dGVzdC1pbnN0YW5jZQ:APA91b" + strings.Repeat("Zm9vYmFy_-09", 11)},
	} {
		b.Run(tt.name+"/pack", func(b *testing.B) {
			buf := make([]byte, 0, 256)
			for b.Loop() {
				buf = appendToken(buf[:0], tt.token)
			}
		})
		b.Run(tt.name+"/unpack", func(b *testing.B) {
			enc := appendToken(nil, tt.token)
			buf := make([]byte, 0, 256)
			for b.Loop() {
				r := reader{b: enc}
				buf, _ = r.token(buf[:0])
			}
		})
	}
}
