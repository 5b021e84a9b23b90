package profile

import (
	"reflect"
	"testing"
)

func sampleProfile() *Profile {
	return &Profile{
		ID: ID{1, 2, 3}, CreateTime: 1, UpdateTime: 2, Consent: ConsentOptedIn, ConsentTime: 3,
		Identities: []Identity{{"customer_id", "C1"}, {"email", "ada@example.com"}},
		Attributes: []Attribute{
			{Key: "age", Value: 41.5, Time: 5},
			{Key: "gone", Value: nil, Time: 6},
			{Key: "list", Value: []any{"a", true, 2.0, nil, map[string]any{"k": "v"}}, Time: 7},
			{Key: "tier", Value: "gold", Time: 8},
			{Key: "vip", Value: false, Time: 9},
		},
	}
}

func sampleToken() *Token {
	return &Token{
		Owner: ID{9}, Platform: PlatformAPNS, AppID: "com.example", Token: "abcdef",
		SourceStamp: Stamp{100, 7}, DeactivatedAt: 50, Reason: ReasonUnregistered, Replaced: true,
		Env: EnvSandbox, EnvStamp: Stamp{90, 1},
		DeviceID: "dev-1", Device: Device{"iPhone15,2", "17.4", "3.2.1", "en-GB", "Europe/London"}, DeviceFP: 12345, DeviceStamp: Stamp{100, 7},
		CreateTime: 10, UpdateTime: 11,
		History: []Move{{To: ID{8}, Time: 20, Source: "import"}, {From: ID{8}, To: ID{9}, Time: 100, Source: "ios-sdk"}},
		Full:    true,
	}
}

func TestProfileRoundTrip(t *testing.T) {
	p := sampleProfile()
	got, err := DecodeProfile(p.ID, EncodeProfile(nil, p))
	if err != nil {
		t.Fatal(err)
	}
	// Decoding measures the attributes that are set from their encoding;
	// measuring the values must agree.
	p.AttributeBytes()
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("got %+v, want %+v", got, p)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	noDevice := sampleToken()
	noDevice.DeviceID, noDevice.Device, noDevice.DeviceFP = "", Device{}, 0
	fcm := sampleToken()
	fcm.Platform, fcm.Token = PlatformFCM, "dGVzdA:APA91bZm9v"
	for _, want := range []*Token{sampleToken(), noDevice, fcm} {
		got, err := DecodeHot(want.Key(), EncodeHot(nil, want))
		if err != nil {
			t.Fatal(err)
		}
		if err := DecodeDetails(got, EncodeDetails(nil, want)); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v, want %+v", got, want)
		}
		if o, _ := HotOwner(EncodeHot(nil, want)); o != want.Owner {
			t.Fatalf("HotOwner: got %s, want %s", o, want.Owner)
		}
	}
}

func TestViewReadsWhatScansNeed(t *testing.T) {
	p := sampleProfile()
	active := sampleToken()
	active.Replaced, active.DeactivatedAt = false, 0
	inactive := sampleToken()
	inactive.Token = "ff"
	v, err := ParseView(EncodeProfile(nil, p), [][]byte{EncodeDetails(nil, active), EncodeDetails(nil, inactive)})
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := v.Attributes()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(attrs, p.VisibleAttributes()) {
		t.Fatalf("got attributes %v, want %v", attrs, p.VisibleAttributes())
	}
	var heads []string
	err = v.EachTokenHead(func(h *TokenHead) bool {
		tok, _ := h.Full()
		heads = append(heads, tok.Token+map[bool]string{true: "+", false: "-"}[h.Active])
		return true
	})
	if err != nil || !reflect.DeepEqual(heads, []string{"abcdef+", "ff-"}) {
		t.Fatalf("got heads %q (%v), want [abcdef+ ff-]", heads, err)
	}
}

// TestDecodeNeverPanics feeds every truncation and many corruptions of
// valid records to the decoders: they must fail cleanly, not panic or
// allocate wildly.
func TestDecodeNeverPanics(t *testing.T) {
	records := [][]byte{EncodeProfile(nil, sampleProfile()), EncodeHot(nil, sampleToken()), EncodeDetails(nil, sampleToken())}
	for _, rec := range records {
		for n := 0; n < len(rec); n++ {
			tryDecode(rec[:n])
		}
		for i := range rec {
			for _, b := range []byte{0x00, 0xFF, 0x7F, 0x80} {
				c := append([]byte(nil), rec...)
				c[i] = b
				tryDecode(c)
			}
		}
	}
}

func tryDecode(b []byte) {
	_, _ = DecodeProfile(ID{}, b)
	_, _ = DecodeHot(TokenKey{}, b)
	_ = DecodeDetails(&Token{}, b)
	if v, err := ParseView(b, [][]byte{b}); err == nil {
		_, _ = v.Attributes()
		_, _ = v.Identities()
		_ = v.EachTokenHead(func(h *TokenHead) bool { _, _ = h.Full(); _ = h.Size(); return true })
	}
}

func TestLookupAttribute(t *testing.T) {
	p := sampleProfile()
	v, err := ParseView(EncodeProfile(nil, p), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range p.Attributes {
		got, found, err := v.LookupAttribute(a.Key)
		if err != nil || found != (a.Value != nil) || !reflect.DeepEqual(got, a.Value) {
			t.Errorf("LookupAttribute(%q): got %v, %v, %v; want %v", a.Key, got, found, err, a.Value)
		}
	}
	if _, found, _ := v.LookupAttribute("absent"); found {
		t.Errorf("LookupAttribute(absent): got found")
	}
	if n, err := v.AttributeCount(); err != nil || n != len(p.VisibleAttributes()) {
		t.Errorf("AttributeCount: got %d, %v; want %d (tombstones not counted)", n, err, len(p.VisibleAttributes()))
	}
}

// AttributesNamed is Attributes restricted to the named keys: every set
// attribute named, nothing else (tombstones and absent names included).
func TestAttributesNamed(t *testing.T) {
	p := sampleProfile()
	v, err := ParseView(EncodeProfile(nil, p), nil)
	if err != nil {
		t.Fatal(err)
	}
	all, err := v.Attributes()
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]struct{}{"absent": {}, "gone": {}} // gone is a tombstone
	want := map[string]any{}
	for i, a := range p.Attributes {
		if i%2 == 0 {
			keys[a.Key] = struct{}{}
			if val, ok := all[a.Key]; ok {
				want[a.Key] = val
			}
		}
	}
	got, err := v.AttributesNamed(keys)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("AttributesNamed(%v) = %v, %v; want %v", keys, got, err, want)
	}
	if got, err := v.AttributesNamed(nil); err != nil || len(got) != 0 {
		t.Errorf("AttributesNamed(nil) = %v, %v; want nothing", got, err)
	}
}
