package delivery

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

func TestValidateMessage(t *testing.T) {
	now := time.Now()
	neg := int32(-1)
	for _, tc := range []struct {
		name   string
		change func(m *Message)
		field  string
	}{
		{"no target", func(m *Message) { m.Tokens = nil }, "messages[2].target"},
		{"both targets", func(m *Message) { m.Profile = &ProfileTarget{ProfileID: "p"} }, "messages[2].target"},
		{"profile id", func(m *Message) { m.Tokens, m.Profile = nil, &ProfileTarget{} }, "messages[2].profile.profile_id"},
		{"profile platform", func(m *Message) {
			m.Tokens, m.Profile = nil, &ProfileTarget{ProfileID: "p", Platforms: []commonv1.Platform{commonv1.Platform_PLATFORM_UNSPECIFIED}}
		}, "messages[2].profile.platforms[0]"},
		{"token", func(m *Message) { m.Tokens[0].Token = "" }, "messages[2].tokens.tokens[0].token"},
		{"token platform", func(m *Message) { m.Tokens[0].Platform = 0 }, "messages[2].tokens.tokens[0].platform"},
		{"token app", func(m *Message) { m.Tokens[0].AppID = "" }, "messages[2].tokens.tokens[0].app_id"},
		{"too many tokens", func(m *Message) { m.Tokens = make([]Target, 1001) }, "messages[2].tokens.tokens"},
		{"message id", func(m *Message) { m.MessageID = strings.Repeat("m", 300) }, "messages[2].message_id"},
		{"reserved data key", func(m *Message) { m.Notification.Data = map[string]string{"google.x": "1"} }, `messages[2].notification.data["google.x"]`},
		{"tracking data key", func(m *Message) { m.Notification.Data = map[string]string{"traceparent": "1"} }, `messages[2].notification.data["traceparent"]`},
		{"badge", func(m *Message) { m.Notification.Badge = &neg }, "messages[2].notification.badge"},
		{"image url", func(m *Message) { m.Notification.ImageURL = "not a url" }, "messages[2].notification.image_url"},
		{"apns priority", func(m *Message) { m.APNs.Priority = 7 }, "messages[2].apns.priority"},
		{"background priority 10", func(m *Message) {
			m.APNs.PushType, m.APNs.Priority = APNsPushTypeBackground, 10
		}, "messages[2].apns.priority"},
		{"collapse id", func(m *Message) { m.APNs.CollapseID = strings.Repeat("c", 65) }, "messages[2].apns.collapse_id"},
		{"past expiration", func(m *Message) { m.APNs.Expiration = now.Add(-time.Hour) }, "messages[2].apns.expiration"},
		{"push type", func(m *Message) { m.APNs.PushType = 9 }, "messages[2].apns.push_type"},
		{"fcm ttl", func(m *Message) { m.FCM.TTL = 30 * 24 * time.Hour }, "messages[2].fcm.ttl"},
		{"fcm priority", func(m *Message) { m.FCM.Priority = 5 }, "messages[2].fcm.priority"},
		{"ttl", func(m *Message) { m.TTL = -1 }, "messages[2].ttl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := msg("k", apnsTarget(1))
			tc.change(&m)
			err := ValidateMessage(&m, "messages[2]", now)
			var ve *fault.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("got %v, want a validation error on %s", err, tc.field)
			}
			if ve.Violations[0].Field != tc.field {
				t.Errorf("got field %q (%v), want %q", ve.Violations[0].Field, ve, tc.field)
			}
		})
	}
	m := msg("k", apnsTarget(1))
	if err := ValidateMessage(&m, "messages[0]", now); err != nil {
		t.Errorf("valid message: got %v", err)
	}
}

func TestAPNsPayload(t *testing.T) {
	badge := int32(3)
	m := Message{IdempotencyKey: "k", Notification: Notification{
		Title: "Hi \"Ada\"", Subtitle: "sub", Body: "line1\nline2 \u2028 \xff", Sound: "default", Badge: &badge,
		Category: "OFFER", ThreadID: "t1", DeepLink: "app://x", ImageURL: "https://img/x.png",
		Data: map[string]string{"b": "2", "a": "1"},
	}, APNs: APNsOptions{MutableContent: true}}
	tr := tracking{journeyID: "j", messageID: "m", traceParent: "00-x-y-01"}
	push, err := buildAPNs(&m, "com.example.app", tr, time.Unix(2_000_000_000, 0), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(push.Payload, &got); err != nil {
		t.Fatalf("payload is not JSON: %v\n%s", err, push.Payload)
	}
	aps := got["aps"].(map[string]any)
	alert := aps["alert"].(map[string]any)
	if alert["title"] != "Hi \"Ada\"" || alert["body"] != "line1\nline2 \u2028 \ufffd" || alert["subtitle"] != "sub" {
		t.Errorf("alert: got %v", alert)
	}
	if aps["badge"] != 3.0 || aps["sound"] != "default" || aps["category"] != "OFFER" || aps["thread-id"] != "t1" || aps["mutable-content"] != 1.0 {
		t.Errorf("aps: got %v", aps)
	}
	if _, ok := aps["content-available"]; ok {
		t.Errorf("alert push has content-available: %v", aps)
	}
	pm := got["pm"].(map[string]any)
	if pm["j"] != "j" || pm["m"] != "m" || pm["tp"] != "00-x-y-01" {
		t.Errorf("pm: got %v", pm)
	}
	if got["a"] != "1" || got["b"] != "2" || got["deep_link"] != "app://x" || got["image_url"] != "https://img/x.png" {
		t.Errorf("custom keys: got %v", got)
	}
	if push.Topic != "com.example.app" || push.PushType != "alert" || push.Priority != 0 || push.CollapseID != "m" || push.Expiration.Unix() != 2_000_000_000 {
		t.Errorf("request: got %+v", push)
	}

	// A silent push is a background push, priority 5, content-available.
	silent := Message{IdempotencyKey: "k", Notification: Notification{Data: map[string]string{"sync": "1"}}}
	push, _ = buildAPNs(&silent, "com.example.app", tr, time.Now().Add(time.Hour), time.Now())
	if push.PushType != "background" || push.Priority != 5 || !strings.Contains(string(push.Payload), `"content-available":1`) {
		t.Errorf("silent push: got %s priority %d %s", push.PushType, push.Priority, push.Payload)
	}
	// VoIP and Live Activity pushes use their topic suffixes.
	voip := Message{IdempotencyKey: "k", APNs: APNsOptions{PushType: APNsPushTypeVoIP}}
	if push, _ = buildAPNs(&voip, "com.example.app", tr, time.Now().Add(time.Hour), time.Now()); push.Topic != "com.example.app.voip" {
		t.Errorf("VoIP topic: got %q", push.Topic)
	}
	live := Message{IdempotencyKey: "k", APNs: APNsOptions{PushType: APNsPushTypeLiveActivity}, Notification: Notification{Data: map[string]string{"score": "2-1"}}}
	push, _ = buildAPNs(&live, "com.example.app", tr, time.Now().Add(time.Hour), time.Now())
	if push.Topic != "com.example.app.push-type.liveactivity" || !strings.Contains(string(push.Payload), `"content-state":{"score":"2-1"}`) {
		t.Errorf("Live Activity: got topic %q payload %s", push.Topic, push.Payload)
	}
}

func TestCollapseID(t *testing.T) {
	long := strings.Repeat("m", 80)
	for _, tc := range []struct{ explicit, messageID, want string }{
		{"", "m1", "m1"},
		{"c", "m1", "c"},
		{"", strings.Repeat("m", 64), strings.Repeat("m", 64)},
	} {
		if got := collapseID(tc.explicit, tc.messageID); got != tc.want {
			t.Errorf("collapseID(%q, %q): got %q, want %q", tc.explicit, tc.messageID, got, tc.want)
		}
	}
	if a, b := collapseID("", long), collapseID("", long+"x"); a == b || len(a) != 64 {
		t.Errorf("hashed collapse ids: got %q and %q, want two distinct 64-character ids", a, b)
	}
}

func TestFCMMessage(t *testing.T) {
	badge := int32(2)
	m := Message{IdempotencyKey: "k", Notification: Notification{Title: "Hi", Body: "b", Sound: "ding", Badge: &badge, Category: "OPEN", ThreadID: "t", DeepLink: "app://x", Data: map[string]string{"k": "v"}},
		FCM: FCMOptions{Priority: FCMPriorityHigh, ChannelID: "news", TTL: time.Minute}}
	msg, err := buildFCM(&m, tracking{messageID: "m", traceParent: "tp"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Data["k"] != "v" || msg.Data["deep_link"] != "app://x" || msg.Data["pm_message_id"] != "m" || msg.Data["traceparent"] != "tp" {
		t.Errorf("data: got %v", msg.Data)
	}
	if _, ok := msg.Data["pm_journey_id"]; ok {
		t.Errorf("data has pm_journey_id without a journey: %v", msg.Data)
	}
	a := msg.Android
	if a.Priority != "high" || *a.TTL != time.Minute || a.CollapseKey != "m" || a.Notification.ChannelID != "news" ||
		a.Notification.Sound != "ding" || *a.Notification.NotificationCount != 2 || a.Notification.ClickAction != "OPEN" || a.Notification.Tag != "m" {
		t.Errorf("android: got %+v / %+v", a, a.Notification)
	}
	if _, err := json.Marshal(msg); err != nil {
		t.Errorf("marshal: %v", err)
	}
}

// TestFCMTagIsTheCollapseKey: a resend (same message id) must replace the
// notification an Android device already shows, which only the tag does;
// a data-only message gets no android.notification at all (it would show
// an empty notification).
func TestFCMTagIsTheCollapseKey(t *testing.T) {
	for _, tc := range []struct {
		name     string
		n        Notification
		collapse string
		wantTag  string
	}{
		{"message id", Notification{Title: "Hi", ThreadID: "thread"}, "", "msg-1"},
		{"explicit collapse key", Notification{Body: "b"}, "score", "score"},
		{"image only", Notification{ImageURL: "https://img/x.png"}, "", "msg-1"},
		{"data only", Notification{Data: map[string]string{"k": "v"}}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := Message{IdempotencyKey: "k", Notification: tc.n, FCM: FCMOptions{CollapseKey: tc.collapse}}
			msg, err := buildFCM(&m, tracking{messageID: "msg-1"}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			var tag string
			if an := msg.Android.Notification; an != nil {
				tag = an.Tag
			}
			if tag != tc.wantTag {
				t.Errorf("tag: got %q, want %q", tag, tc.wantTag)
			}
			if tc.wantTag == "" && msg.Android.Notification != nil {
				t.Errorf("data-only message has android.notification %+v", msg.Android.Notification)
			}
		})
	}
}

func TestClassOf(t *testing.T) {
	for reason, want := range map[commonv1.FailureReason]Class{
		commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED:                ClassNone,
		commonv1.FailureReason_FAILURE_REASON_UNREGISTERED:               ClassToken,
		commonv1.FailureReason_FAILURE_REASON_EXPIRED_TOKEN:              ClassToken,
		commonv1.FailureReason_FAILURE_REASON_PAYLOAD_TOO_LARGE:          ClassMessage,
		commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS:        ClassCredentials,
		commonv1.FailureReason_FAILURE_REASON_SENDER_MISMATCH:            ClassCredentials,
		commonv1.FailureReason_FAILURE_REASON_RATE_LIMITED:               ClassRetryable,
		commonv1.FailureReason_FAILURE_REASON_NETWORK:                    ClassRetryable,
		commonv1.FailureReason_FAILURE_REASON_GATEWAY_UNAVAILABLE:        ClassRetryable,
		commonv1.FailureReason_FAILURE_REASON_APP_SUSPENDED:              ClassFinal,
		commonv1.FailureReason_FAILURE_REASON_TTL_EXPIRED:                ClassFinal,
		commonv1.FailureReason_FAILURE_REASON_CANCELLED:                  ClassFinal,
		commonv1.FailureReason_FAILURE_REASON_DEVICE_TOKEN_NOT_FOR_TOPIC: ClassToken,
	} {
		if got := ClassOf(reason); got != want {
			t.Errorf("ClassOf(%v): got %d, want %d", reason, got, want)
		}
	}
}

// CheckPayloadSize answers as the send would: for every size around the
// limits, with text that JSON escaping grows (quotes, control characters,
// U+2028, invalid UTF-8) and every field and push type set, it refuses
// exactly the messages whose APNs or FCM payload building fails.
func TestCheckPayloadSizeAgreesWithTheSend(t *testing.T) {
	badge := int32(12345)
	now := time.Now()
	tr := tracking{journeyID: "jrn_0123456789", messageID: "msg_0123456789", traceParent: strings.Repeat("f", traceParentLen)}
	fillers := []string{"a", `"`, "\x01", "\u2028", "\xff", "é", "🎉"}
	for _, pushType := range []APNsPushType{APNsPushTypeUnspecified, APNsPushTypeAlert, APNsPushTypeBackground, APNsPushTypeVoIP, APNsPushTypeLiveActivity} {
		for _, filler := range fillers {
			for size := 2000; size <= 8000; size += 37 {
				body := strings.Repeat(filler, size/len(filler)/2)
				m := Message{
					IdempotencyKey: "k", MessageID: tr.messageID, JourneyID: tr.journeyID,
					Notification: Notification{
						Title: "T", Subtitle: "S", Body: body, Sound: "default", Category: "c", ThreadID: "t", Badge: &badge,
						ImageURL: "https://cdn.example.com/" + body[:len(body)/4], DeepLink: "acme://x",
						Data: map[string]string{"a": "1", "b": body[:len(body)/8]},
					},
					APNs: APNsOptions{PushType: pushType, MutableContent: true, ContentAvailable: true},
				}
				_, sendErr := buildAPNs(&m, "com.example.app", tr, now.Add(time.Hour), now)
				checkErr := CheckPayloadSize(&m, commonv1.Platform_PLATFORM_APNS, now)
				if (sendErr != nil) != (checkErr != nil) || sendErr != nil && sendErr.Error() != checkErr.Error() {
					t.Fatalf("APNs %v, %d × %q: send %v, check %v", pushType, size, filler, sendErr, checkErr)
				}
				_, sendErr = buildFCM(&m, tr, time.Hour)
				checkErr = CheckPayloadSize(&m, commonv1.Platform_PLATFORM_FCM, now)
				if (sendErr != nil) != (checkErr != nil) || sendErr != nil && sendErr.Error() != checkErr.Error() {
					t.Fatalf("FCM, %d × %q: send %v, check %v", size, filler, sendErr, checkErr)
				}
			}
		}
	}
	// The cheap bound is a bound.
	m := Message{MessageID: tr.messageID, JourneyID: tr.journeyID, Notification: Notification{
		Title: "\x01", Subtitle: "\x01", Body: "\x01", Sound: "\x01", Category: "\x01", ThreadID: "\x01", Badge: &badge,
		ImageURL: "\x01", DeepLink: "\x01", Data: map[string]string{"\x01": "\x01", "\x02": "\x02"},
	}, APNs: APNsOptions{PushType: APNsPushTypeLiveActivity, MutableContent: true, ContentAvailable: true}}
	for _, pt := range []string{"alert", "liveactivity"} {
		if got, bound := len(apnsPayload(&m, pt, tr, now)), apnsPayloadBound(&m, tr); got > bound {
			t.Errorf("%s: payload %d bytes, bound %d", pt, got, bound)
		}
	}
}
