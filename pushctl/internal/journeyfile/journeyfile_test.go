package journeyfile

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	deliveryv1 "github.com/pushmesh/pushmesh/gen/pushmesh/delivery/v1"
)

// exampleJourney is what examples/journey.yaml describes.
func exampleJourney() *deliveryv1.Journey {
	return &deliveryv1.Journey{
		Name:   "Spring sale, gold customers",
		AppIds: []string{"com.acme.shop"},
		Audience: &deliveryv1.Audience{
			Condition: `attributes.tier == "gold" && attributes.locale.startsWith("en")`,
			Platforms: []commonv1.Platform{commonv1.Platform_PLATFORM_APNS, commonv1.Platform_PLATFORM_FCM},
		},
		Template: &deliveryv1.MessageTemplate{
			Title:    `Hi {{firstName | default "there"}}`,
			Body:     "Our spring sale starts today, 20% off for {{tier | title}} members.",
			DeepLink: "acme://sale/spring",
			Sound:    "default",
			Data:     map[string]string{"campaign": "spring-sale"},
		},
		Variants: []*deliveryv1.TemplateVariant{{
			Locale: "fr",
			Template: &deliveryv1.MessageTemplate{
				Title:    `Bonjour {{firstName | default ""}}`,
				Body:     "Les soldes de printemps commencent aujourd'hui.",
				DeepLink: "acme://sale/spring",
			},
		}},
		Delivery: &deliveryv1.DeliveryOptions{
			Ttl:                  durationpb.New(24 * time.Hour),
			Priority:             deliveryv1.FcmPriority_FCM_PRIORITY_HIGH,
			MaxMessagesPerSecond: 2000,
			ApnsPushType:         deliveryv1.ApnsPushType_APNS_PUSH_TYPE_ALERT,
		},
	}
}

func TestExampleFileParses(t *testing.T) {
	data, err := os.ReadFile("../../examples/journey.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("journey.yaml", data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if want := exampleJourney(); !proto.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

func TestJSONAndYAMLShareOneSchema(t *testing.T) {
	// The protojson of a journey (what `journey get --json` prints) reads
	// back as JSON and, being YAML too, as YAML.
	want := exampleJourney()
	want.StartTime = timestamppb.New(time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC))
	want.Template.Badge = proto.Int32(1)
	doc, err := protojson.MarshalOptions{Multiline: true}.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"journey.json", "journey.yaml", "journey"} {
		got, err := Parse(name, doc)
		if err != nil {
			t.Fatalf("Parse(%s): %v", name, err)
		}
		if !proto.Equal(got, want) {
			t.Errorf("Parse(%s):\n got %v\nwant %v", name, got, want)
		}
	}
}

func TestFriendlyForms(t *testing.T) {
	yaml := `
name: 12345
app_ids: [com.acme.shop]
audience: {platforms: [PLATFORM_FCM, ios-is-not-a-word-here]}
`
	// The unknown enum word is an error; fix it and check the rest.
	if _, err := Parse("j.yaml", []byte(yaml)); err == nil || !strings.Contains(err.Error(), "audience.platforms[1]") {
		t.Fatalf("got %v, want an error at audience.platforms[1]", err)
	}
	yaml = `
name: 12345                 # a number where a string is expected: its text
app_ids: [com.acme.shop]    # snake_case field names work
audience: {platforms: [PLATFORM_FCM, Apns]}
delivery: {ttl: 90, priority: FCM_PRIORITY_NORMAL, apns_push_type: 2, collapseId: null}
`
	got, err := Parse("j.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	want := &deliveryv1.Journey{
		Name: "12345", AppIds: []string{"com.acme.shop"},
		Audience: &deliveryv1.Audience{Platforms: []commonv1.Platform{commonv1.Platform_PLATFORM_FCM, commonv1.Platform_PLATFORM_APNS}},
		Delivery: &deliveryv1.DeliveryOptions{Ttl: durationpb.New(90 * time.Second), Priority: deliveryv1.FcmPriority_FCM_PRIORITY_NORMAL, ApnsPushType: deliveryv1.ApnsPushType_APNS_PUSH_TYPE_BACKGROUND},
	}
	if !proto.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

func TestErrorsNameLineAndField(t *testing.T) {
	tests := []struct {
		name, file, content string
		want                string
	}{
		{"unknown field with suggestion", "j.yaml", "name: x\ntemplate:\n  titel: hi\n",
			"j.yaml:3: template.titel: unknown field, did you mean title? (fields: title, body, subtitle, imageUrl, deepLink, data, sound, badge, category, threadId)"},
		{"unknown top-level field", "j.yaml", "name: x\naudiance: {}\n", "j.yaml:2: audiance: unknown field, did you mean audience?"},
		{"far-off field has no suggestion", "j.yaml", "zzzzzz: 1\n", "j.yaml:1: zzzzzz: unknown field (fields: journeyId, name"},
		{"list expected", "j.yaml", "appIds: com.acme.shop\n", "j.yaml:1: appIds: want a list, got a string"},
		{"object expected", "j.yaml", "audience: gold\n", "j.yaml:1: audience: want an object with fields condition, platforms, requireExplicitConsent, got a string"},
		{"bad enum in a list", "j.yaml", "audience:\n  platforms:\n    - apns\n    - webpush\n", `j.yaml:4: audience.platforms[1]: "webpush" is not one of apns, fcm`},
		{"bad enum number", "j.yaml", "delivery: {priority: 7}\n", "j.yaml:1: delivery.priority: 7 is not a value of FcmPriority; use one of normal, high"},
		{"bad duration", "j.yaml", "delivery:\n  ttl: one day\n", `j.yaml:2: delivery.ttl: want a duration such as "24h", "90m" or "3600s", got "one day"`},
		{"bad timestamp", "j.yaml", "startTime: tomorrow\n", `j.yaml:1: startTime: want an RFC 3339 time such as 2024-05-01T10:00:00Z, got "tomorrow"`},
		{"bad bool", "j.yaml", "audience: {requireExplicitConsent: maybe}\n", `j.yaml:1: audience.requireExplicitConsent: want true or false, got "maybe"`},
		{"number quoted as written", "j.yaml", "audience: {requireExplicitConsent: 0123}\n", `j.yaml:1: audience.requireExplicitConsent: want true or false, got "0123"`},
		{"fraction for an integer", "j.yaml", "delivery: {maxMessagesPerSecond: 1.5}\n", `j.yaml:1: delivery.maxMessagesPerSecond: want a whole number, got "1.5"`},
		{"integer out of range", "j.yaml", "delivery: {maxMessagesPerSecond: 99999999999}\n", "j.yaml:1: delivery.maxMessagesPerSecond: 99999999999 is out of range"},
		{"map value", "j.yaml", "template:\n  data:\n    a: [1]\n", `j.yaml:3: template.data["a"]: want a string, got a list`},
		{"nested in a list", "j.yaml", "variants:\n  - locale: fr\n    template: {body: ok, tilte: x}\n", "j.yaml:3: variants[0].template.tilte: unknown field, did you mean title?"},
		{"field given twice", "j.yaml", "appIds: [a]\napp_ids: [b]\n", "j.yaml:2: app_ids: field given twice (as appIds and app_ids)"},
		{"duplicate YAML key", "j.yaml", "name: a\nname: b\n", `key "name" appears twice`},
		{"YAML syntax", "j.yaml", "name: [a\n", "j.yaml: yaml: line 1"},
		{"empty file", "j.yaml", "", "j.yaml: the file is empty"},
		{"not an object", "j.yaml", "- a\n- b\n", "j.yaml:1: want an object with fields journeyId"},
		{"JSON unknown field", "j.json", "{\n  \"name\": \"x\",\n  \"templat\": {}\n}\n", "j.json:3: templat: unknown field, did you mean template?"},
		{"JSON syntax", "j.json", "{\n  \"name\": \"x\",\n  \"appIds\": [\"a\",]\n}\n", "j.json: line 3: invalid character ']'"},
		{"JSON duplicate key", "j.json", `{"name": "a", "name": "b"}`, `key "name" appears twice`},
		{"JSON trailing content", "j.json", `{"name": "a"} {}`, "unexpected content after the journey object"},
		{"JSON truncated", "j.json", `{"name": "a"`, "the file ends too early"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.file, []byte(tt.content))
			if err == nil {
				t.Fatalf("got no error, want %q", tt.want)
			}
			var fe *Error
			if !errors.As(err, &fe) {
				t.Errorf("got %T, want *Error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got  %q\nwant %q", err.Error(), tt.want)
			}
		})
	}
}

func TestProtoDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{24 * time.Hour, "86400s"},
		{1500 * time.Millisecond, "1.5s"},
		{time.Nanosecond, "0.000000001s"},
		{-2 * time.Second, "-2s"},
	}
	for _, tt := range tests {
		if got := protoDuration(tt.d); got != tt.want {
			t.Errorf("protoDuration(%v): got %q, want %q", tt.d, got, tt.want)
		}
	}
}

// A string field gets the text in the file, even when YAML would read it as
// a number or a boolean: coupon codes, phone numbers and prices are not
// rewritten (0123 is not octal 83, +336… keeps its plus, 19.90 its zero).
func TestStringFieldsKeepTheTextAsWritten(t *testing.T) {
	for _, text := range []string{
		"1.10", "007", "0123", "+33612345678", "19.90", "0x1F", "1e3", "0o17", "1_000", "-0", "12345",
		".5", "1.", ".inf", "-.Inf", ".nan", "True", "false", "99999999999999999999999",
	} {
		t.Run(text, func(t *testing.T) {
			src := "name: " + text + "\nappIds: [" + text + "]\ntemplate:\n  title: " + text + "\n  data:\n    code: " + text + "\n    " + text + ": key\n"
			j, err := Parse("j.yaml", []byte(src))
			if err != nil {
				t.Fatalf("Parse:\n%s\n%v", src, err)
			}
			got := []string{j.GetName(), j.GetAppIds()[0], j.GetTemplate().GetTitle(), j.GetTemplate().GetData()["code"], j.GetTemplate().GetData()[text]}
			want := []string{text, text, text, text, "key"}
			if !slices.Equal(got, want) {
				t.Errorf("name, appIds[0], title, data.code, data[%s]: got %q, want %q", text, got, want)
			}
		})
	}
	// JSON numbers and booleans in string fields keep their literal too.
	j, err := Parse("j.json", []byte(`{"name": 1.10, "template": {"title": true, "data": {"price": 19.90, "sci": 1e3}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := []string{j.GetName(), j.GetTemplate().GetTitle(), j.GetTemplate().GetData()["price"], j.GetTemplate().GetData()["sci"]}, []string{"1.10", "true", "19.90", "1e3"}; !slices.Equal(got, want) {
		t.Errorf("JSON: got %q, want %q", got, want)
	}
}

// Numeric fields still read YAML's numbers as numbers.
func TestNumericFieldsReadNumbers(t *testing.T) {
	j, err := Parse("j.yaml", []byte("template: {badge: 0x1F}\ndelivery: {maxMessagesPerSecond: 1e3, ttl: 1.5}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if j.GetTemplate().GetBadge() != 31 || j.GetDelivery().GetMaxMessagesPerSecond() != 1000 || j.GetDelivery().GetTtl().AsDuration() != 1500*time.Millisecond {
		t.Errorf("got badge %d, maxMessagesPerSecond %d, ttl %v", j.GetTemplate().GetBadge(), j.GetDelivery().GetMaxMessagesPerSecond(), j.GetDelivery().GetTtl().AsDuration())
	}
}
