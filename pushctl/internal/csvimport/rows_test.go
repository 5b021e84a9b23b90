package csvimport

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	profilev1 "github.com/pushmesh/pushmesh/gen/pushmesh/profile/v1"
)

func TestParseTimestamp(t *testing.T) {
	base := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"2024-05-01T10:00:00Z", base, ""},
		{"2024-05-01T12:00:00+02:00", base, ""},
		{"2024-05-01T10:00:00.123456789Z", base.Add(123456789), ""},
		{" 2024-05-01T10:00:00Z ", base, ""},
		{"1714557600", base, ""},
		{"1714557600.25", base.Add(250 * time.Millisecond), ""},
		{"1714557600000", base, ""},
		{"1714557600123", base.Add(123 * time.Millisecond), ""},
		{"99999999999", time.Unix(99999999999, 0), ""},     // just below the cut: seconds
		{"100000000000", time.UnixMilli(100000000000), ""}, // at the cut: milliseconds
		{"0", time.Unix(0, 0), ""},
		{"-86400", time.Unix(-86400, 0), ""},
		{"", time.Time{}, "is empty"},
		{"yesterday", time.Time{}, `cannot read "yesterday": want RFC 3339`},
		{"2024-05-01 10:00:00", time.Time{}, "want RFC 3339"},
		{"2024-05-01", time.Time{}, "want RFC 3339"},
		{"1714557600.", time.Time{}, "want RFC 3339"},
		{"1e9", time.Time{}, "want RFC 3339"},
		{"171455760000000000", time.Time{}, "out of range as unix milliseconds"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseTimestamp(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("got %v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v", err)
			}
			if !got.AsTime().Equal(tt.want) {
				t.Errorf("got %v, want %v", got.AsTime(), tt.want)
			}
		})
	}
}

func TestAttributeValue(t *testing.T) {
	tests := []struct {
		in   string
		want *structpb.Value
	}{
		{"gold", structpb.NewStringValue("gold")},
		{"true", structpb.NewBoolValue(true)},
		{"FALSE", structpb.NewBoolValue(false)},
		{"42", structpb.NewNumberValue(42)},
		{"-7.25", structpb.NewNumberValue(-7.25)},
		{"0", structpb.NewNumberValue(0)},
		{"0.5", structpb.NewNumberValue(0.5)},
		{"1e3", structpb.NewNumberValue(1000)},
		{"02134", structpb.NewStringValue("02134")},
		{"+33612345678", structpb.NewStringValue("+33612345678")},
		{"1234567890123456", structpb.NewStringValue("1234567890123456")},
		{"123456789012345", structpb.NewNumberValue(123456789012345)},
		{"1.", structpb.NewStringValue("1.")},
		{".5", structpb.NewStringValue(".5")},
		{"NaN", structpb.NewStringValue("NaN")},
		{"Inf", structpb.NewStringValue("Inf")},
		{"0x1F", structpb.NewStringValue("0x1F")},
		{"1e999", structpb.NewStringValue("1e999")},
		{"yes", structpb.NewStringValue("yes")},
	}
	for _, tt := range tests {
		if got := AttributeValue(tt.in); !proto.Equal(got, tt.want) {
			t.Errorf("AttributeValue(%q): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParsePlatformAndEnvironment(t *testing.T) {
	platforms := map[string]commonv1.Platform{
		"apns": commonv1.Platform_PLATFORM_APNS, "APNS": commonv1.Platform_PLATFORM_APNS, "ios": commonv1.Platform_PLATFORM_APNS,
		"PLATFORM_APNS": commonv1.Platform_PLATFORM_APNS, "fcm": commonv1.Platform_PLATFORM_FCM, "Android": commonv1.Platform_PLATFORM_FCM,
	}
	for in, want := range platforms {
		if got, err := ParsePlatform(in); err != nil || got != want {
			t.Errorf("ParsePlatform(%q): got %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "web", "unspecified", "PLATFORM_UNSPECIFIED"} {
		if _, err := ParsePlatform(in); err == nil {
			t.Errorf("ParsePlatform(%q): got no error", in)
		}
	}
	envs := map[string]commonv1.ApnsEnvironment{
		"": 0, "sandbox": commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX, "development": commonv1.ApnsEnvironment_APNS_ENVIRONMENT_SANDBOX,
		"production": commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION, "prod": commonv1.ApnsEnvironment_APNS_ENVIRONMENT_PRODUCTION,
	}
	for in, want := range envs {
		if got, err := ParseApnsEnvironment(in); err != nil || got != want {
			t.Errorf("ParseApnsEnvironment(%q): got %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseApnsEnvironment("staging"); err == nil {
		t.Error(`ParseApnsEnvironment("staging"): got no error`)
	}
}

func TestParseHeader(t *testing.T) {
	cols, err := ParseHeader(Record{Line: 1, Fields: []string{"Customer ID", "firstName", "TOKEN", "app-id", " platform ", "timestamp", "deviceId", "Tier"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cols.Attributes(), ","), "firstName,Tier"; got != want {
		t.Errorf("attributes: got %q, want %q", got, want)
	}
	row, rej := cols.Row(Record{Line: 2, Fields: []string{" C-1 ", "Ada", " tok ", "com.acme", "fcm", "1714557600", "d-1", ""}})
	if rej != nil {
		t.Fatalf("rejected: %+v", rej)
	}
	want := &profilev1.ImportRow{
		Token: "tok", Platform: commonv1.Platform_PLATFORM_FCM, AppId: "com.acme", CustomerId: "C-1", DeviceId: "d-1",
		SourceTime: timestamppb.New(time.Unix(1714557600, 0)),
		Attributes: &structpb.Struct{Fields: map[string]*structpb.Value{"firstName": structpb.NewStringValue("Ada")}},
	}
	if !proto.Equal(row, want) {
		t.Errorf("row:\n got %v\nwant %v", row, want)
	}

	errs := []struct {
		fields []string
		want   string
	}{
		{[]string{"token", "platform"}, "lacks column(s) app_id, customer_id, timestamp"},
		{[]string{"token", "platform", "app_id", "customer_id", "timestamp", "Token"}, `column "token" appears twice`},
		{[]string{"token", "platform", "app_id", "customer_id", "timestamp", "x", "x"}, `column "x" appears twice`},
		{[]string{"token", " ", "app_id"}, "column 2 of the header has no name"},
	}
	for _, e := range errs {
		_, err := ParseHeader(Record{Line: 1, Fields: e.fields})
		var fe *FileError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), e.want) {
			t.Errorf("ParseHeader(%q): got %v, want FileError %q", e.fields, err, e.want)
		}
	}
}

func TestRowRejections(t *testing.T) {
	cols, err := ParseHeader(Record{Line: 1, Fields: []string{"token", "platform", "app_id", "customer_id", "timestamp", "apns_environment"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		fields    []string
		wantField string
		wantMsg   string
	}{
		{[]string{"t", "apns", "a", "c", "1714557600"}, "", "has 5 fields, the header has 6"},
		{[]string{"t", "", "a", "c", "1714557600", ""}, "platform", "is empty; want apns or fcm"},
		{[]string{"t", "webpush", "a", "c", "1714557600", ""}, "platform", `"webpush" is not one of apns, fcm`},
		{[]string{"t", "apns", "a", "c", "", ""}, "timestamp", "is empty"},
		{[]string{"t", "apns", "a", "c", "soon", ""}, "timestamp", `cannot read "soon"`},
		{[]string{"t", "apns", "a", "c", "1714557600", "qa"}, "apns_environment", `"qa" is not one of sandbox, production`},
	}
	for _, tt := range tests {
		row, rej := cols.Row(Record{Line: 9, Fields: tt.fields})
		if rej == nil {
			t.Errorf("%q: got row %v, want a rejection", tt.fields, row)
			continue
		}
		if rej.Line != 9 || rej.Field != tt.wantField || !strings.Contains(rej.Reason, tt.wantMsg) {
			t.Errorf("%q: got %+v, want line 9, field %q, reason %q", tt.fields, rej, tt.wantField, tt.wantMsg)
		}
		if strings.Contains(rej.Reason, "t,") {
			t.Errorf("reason echoes the row: %q", rej.Reason)
		}
	}
}
