package apns_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v4"
	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/token"

	"github.com/pushmesh/pushmesh/emulator/apns"
)

const (
	teamID   = "TEAM000001"
	keyID    = "KEY0000001"
	bundleID = "com.example.app"
)

// deviceToken returns a valid-looking 64-hex-digit token, distinct per n.
func deviceToken(n int) string { return fmt.Sprintf("%064x", n+1) }

func startServer(t *testing.T, opts apns.Options) *apns.Server {
	t.Helper()
	srv, err := apns.Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return srv
}

// setup starts an emulator with one team, key and app, and returns an apns2
// client for it with its own HTTP/2 connection.
func setup(t *testing.T, opts apns.Options) (*apns.Server, *apns2.Client) {
	t.Helper()
	srv := startServer(t, opts)
	_, key, err := srv.NewProviderKey(teamID, keyID)
	if err != nil {
		t.Fatalf("NewProviderKey: %v", err)
	}
	srv.RegisterTopic(teamID, bundleID)
	return srv, newClient(srv, key, teamID, keyID, srv.CA().HTTP2Client())
}

func newClient(srv *apns.Server, key *ecdsa.PrivateKey, team, kid string, hc *http.Client) *apns2.Client {
	c := apns2.NewTokenClient(&token.Token{AuthKey: key, KeyID: kid, TeamID: team})
	c.Host = srv.URL()
	c.HTTPClient = hc
	return c
}

func alert(tok string) *apns2.Notification {
	return &apns2.Notification{
		DeviceToken: tok,
		Topic:       bundleID,
		Payload:     []byte(`{"aps":{"alert":"hi"}}`),
	}
}

func push(t *testing.T, c *apns2.Client, n *apns2.Notification) *apns2.Response {
	t.Helper()
	res, err := c.Push(n)
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	return res
}

func TestPushAcceptedAndRecorded(t *testing.T) {
	srv, c := setup(t, apns.Options{})
	tok := deviceToken(1)
	n := alert(tok)
	n.ApnsID = "0a1b2c3d-0000-4000-8000-00000000abcd"
	n.CollapseID = "score"
	n.Priority = apns2.PriorityLow
	n.Expiration = time.Unix(2000000000, 0)
	n.PushType = apns2.PushTypeAlert

	res := push(t, c, n)
	if res.StatusCode != 200 || res.Reason != "" || !res.Sent() {
		t.Fatalf("got status %d reason %q, want 200 and no reason", res.StatusCode, res.Reason)
	}
	if res.ApnsID != n.ApnsID {
		t.Errorf("got apns-id %q, want the client's %q echoed", res.ApnsID, n.ApnsID)
	}

	// Without a client apns-id the emulator makes one up.
	res = push(t, c, alert(tok))
	if len(res.ApnsID) != 36 || res.ApnsID == n.ApnsID {
		t.Errorf("got generated apns-id %q, want a fresh UUID", res.ApnsID)
	}

	got := srv.ReceivedFor(tok)
	if len(got) != 2 {
		t.Fatalf("got %d deliveries for the token, want 2", len(got))
	}
	d := got[0]
	want := apns.Delivery{
		Time: d.Time, ConnID: d.ConnID, Token: tok, Topic: bundleID, PushType: "alert", Priority: "5",
		Expiration: "2000000000", CollapseID: "score", ApnsID: n.ApnsID, TeamID: teamID, KeyID: keyID,
		Payload: []byte(`{"aps":{"alert":"hi"}}`), Status: 200,
	}
	if fmt.Sprint(d) != fmt.Sprint(want) {
		t.Errorf("got delivery\n%+v\nwant\n%+v", d, want)
	}
	if d.ConnID == 0 || d.Time.IsZero() {
		t.Errorf("got conn %d time %v, want both set", d.ConnID, d.Time)
	}
	if got := srv.Count(); got.Accepted != 2 || got.Received != 2 || len(got.Rejected) != 0 {
		t.Errorf("got counts %+v, want 2 received, 2 accepted", got)
	}
}

func TestRejectionsSeenByApns2(t *testing.T) {
	srv, c := setup(t, apns.Options{})
	if err := srv.SetTokenOutcome(deviceToken(100), apns.ReasonBadDeviceToken); err != nil {
		t.Fatal(err)
	}
	for tok, reason := range map[int]string{
		101: apns.ReasonDeviceTokenNotForTopic,
		102: apns.ReasonTooManyRequests,
		103: apns.ReasonInternalServerError,
		104: apns.ReasonShutdown,
		105: apns.ReasonForbidden,
	} {
		if err := srv.SetTokenOutcome(deviceToken(tok), reason); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.SetTokenOutcome(deviceToken(1), "NoSuchReason"); err == nil {
		t.Error("SetTokenOutcome with an unknown reason: got nil error, want one")
	}

	big := `{"aps":{"alert":"` + strings.Repeat("x", 4096) + `"}}`
	voip := `{"aps":{},"x":"` + strings.Repeat("x", 5000) + `"}`
	tests := []struct {
		name       string
		edit       func(n *apns2.Notification)
		wantStatus int
		wantReason string
	}{
		{"accepted", func(n *apns2.Notification) {}, 200, ""},
		{"token not hex", func(n *apns2.Notification) { n.DeviceToken = strings.Repeat("zz", 32) }, 400, apns2.ReasonBadDeviceToken},
		{"token too short", func(n *apns2.Notification) { n.DeviceToken = "abcdef" }, 400, apns2.ReasonBadDeviceToken},
		{"token marked bad", func(n *apns2.Notification) { n.DeviceToken = deviceToken(100) }, 400, apns2.ReasonBadDeviceToken},
		{"token not for topic", func(n *apns2.Notification) { n.DeviceToken = deviceToken(101) }, 400, apns2.ReasonDeviceTokenNotForTopic},
		{"token throttled", func(n *apns2.Notification) { n.DeviceToken = deviceToken(102) }, 429, apns2.ReasonTooManyRequests},
		{"token internal error", func(n *apns2.Notification) { n.DeviceToken = deviceToken(103) }, 500, apns2.ReasonInternalServerError},
		{"token shutdown", func(n *apns2.Notification) { n.DeviceToken = deviceToken(104) }, 503, apns2.ReasonShutdown},
		{"token forbidden", func(n *apns2.Notification) { n.DeviceToken = deviceToken(105) }, 403, apns2.ReasonForbidden},
		{"missing topic", func(n *apns2.Notification) { n.Topic = "" }, 400, apns2.ReasonMissingTopic},
		{"topic of another team", func(n *apns2.Notification) { n.Topic = "com.other.app" }, 400, apns2.ReasonTopicDisallowed},
		{"voip without .voip topic", func(n *apns2.Notification) { n.PushType = apns2.PushTypeVOIP }, 400, apns2.ReasonBadTopic},
		{"voip with .voip topic", func(n *apns2.Notification) { n.PushType = apns2.PushTypeVOIP; n.Topic = bundleID + ".voip" }, 200, ""},
		{"live activity topic", func(n *apns2.Notification) {
			n.PushType = apns2.PushTypeLiveActivity
			n.Topic = bundleID + ".push-type.liveactivity"
		}, 200, ""},
		{"unknown push type", func(n *apns2.Notification) { n.PushType = "carrier-pigeon" }, 400, apns2.ReasonInvalidPushType},
		{"priority 7", func(n *apns2.Notification) { n.Priority = 7 }, 400, apns2.ReasonBadPriority},
		{"priority 10 background", func(n *apns2.Notification) {
			n.PushType = apns2.PushTypeBackground
			n.Priority = apns2.PriorityHigh
		}, 400, apns2.ReasonBadPriority},
		{"priority 5 background", func(n *apns2.Notification) {
			n.PushType = apns2.PushTypeBackground
			n.Priority = apns2.PriorityLow
		}, 200, ""},
		{"collapse id 64 bytes", func(n *apns2.Notification) { n.CollapseID = strings.Repeat("c", 64) }, 200, ""},
		{"collapse id 65 bytes", func(n *apns2.Notification) { n.CollapseID = strings.Repeat("c", 65) }, 400, apns2.ReasonBadCollapseID},
		{"apns-id not a UUID", func(n *apns2.Notification) { n.ApnsID = "not-a-uuid" }, 400, apns2.ReasonBadMessageID},
		{"payload 4097 bytes", func(n *apns2.Notification) { n.Payload = big }, 413, apns2.ReasonPayloadTooLarge},
		{"voip payload 5000 bytes", func(n *apns2.Notification) {
			n.PushType = apns2.PushTypeVOIP
			n.Topic = bundleID + ".voip"
			n.Payload = voip
		}, 200, ""},
		{"alert payload 5000 bytes", func(n *apns2.Notification) { n.Payload = voip }, 413, apns2.ReasonPayloadTooLarge},
		{"payload not an object", func(n *apns2.Notification) { n.Payload = `[1,2]` }, 400, apns.ReasonBadPayload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := alert(deviceToken(1))
			tt.edit(n)
			res := push(t, c, n)
			if res.StatusCode != tt.wantStatus || res.Reason != tt.wantReason {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, res.Reason, tt.wantStatus, tt.wantReason)
			}
			if res.ApnsID == "" {
				t.Error("got no apns-id, want one on every answer")
			}
		})
	}
}

func TestUnregisteredTimestamp(t *testing.T) {
	srv, c := setup(t, apns.Options{})
	at := time.UnixMilli(1_700_000_123_456)
	srv.MarkUnregistered(deviceToken(7), at)
	if err := srv.SetTokenOutcome(deviceToken(8), apns.ReasonExpiredToken); err != nil {
		t.Fatal(err)
	}

	res := push(t, c, alert(deviceToken(7)))
	if res.StatusCode != 410 || res.Reason != apns2.ReasonUnregistered {
		t.Fatalf("got %d %q, want 410 Unregistered", res.StatusCode, res.Reason)
	}
	// apns2 keeps whole seconds of the millisecond timestamp.
	if want := time.Unix(at.Unix(), 0); !res.Timestamp.Equal(want) {
		t.Errorf("got timestamp %v, want %v", res.Timestamp.Time, want)
	}

	res = push(t, c, alert(deviceToken(8)))
	if res.StatusCode != 410 || res.Reason != apns2.ReasonExpiredToken || res.Timestamp.IsZero() {
		t.Errorf("got %d %q timestamp %v, want 410 ExpiredToken with a timestamp", res.StatusCode, res.Reason, res.Timestamp.Time)
	}

	// An upper-case token is the same device.
	res = push(t, c, alert(strings.ToUpper(deviceToken(7))))
	if res.Reason != apns2.ReasonUnregistered {
		t.Errorf("upper-case token: got %q, want Unregistered", res.Reason)
	}

	// Clearing the outcome makes the token deliverable again.
	if err := srv.SetTokenOutcome(deviceToken(7), ""); err != nil {
		t.Fatal(err)
	}
	if res := push(t, c, alert(deviceToken(7))); res.StatusCode != 200 {
		t.Errorf("after clearing: got %d %q, want 200", res.StatusCode, res.Reason)
	}
	if got := srv.Count().Rejected[apns.ReasonUnregistered]; got != 2 {
		t.Errorf("got %d Unregistered in counts, want 2", got)
	}
}

// signJWT makes a provider token by hand, to control iat and the key.
func signJWT(t *testing.T, key *ecdsa.PrivateKey, team, kid string, iat time.Time) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": team, "iat": iat.Unix()})
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// clientWithBearer returns an apns2 client that sends exactly bearer (it is
// marked fresh, so apns2 does not regenerate it).
func clientWithBearer(srv *apns.Server, bearer string) *apns2.Client {
	c := newClient(srv, nil, teamID, keyID, srv.CA().HTTP2Client())
	c.Token.Bearer = bearer
	c.Token.IssuedAt = time.Now().Unix()
	return c
}

func TestProviderTokenChecks(t *testing.T) {
	srv, _ := setup(t, apns.Options{})
	otherKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// The key registered in setup is unknown to the test; register one it
	// knows under a second key ID of the same team.
	goodKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterKey(teamID, "KEY0000002", &goodKey.PublicKey)

	now := time.Now()
	tests := []struct {
		name       string
		bearer     string
		wantStatus int
		wantReason string
	}{
		{"valid", signJWT(t, goodKey, teamID, "KEY0000002", now), 200, ""},
		{"59 minutes old", signJWT(t, goodKey, teamID, "KEY0000002", now.Add(-59*time.Minute)), 200, ""},
		{"61 minutes old", signJWT(t, goodKey, teamID, "KEY0000002", now.Add(-61*time.Minute)), 403, apns2.ReasonExpiredProviderToken},
		{"issued in the future", signJWT(t, goodKey, teamID, "KEY0000002", now.Add(10*time.Minute)), 403, apns2.ReasonInvalidProviderToken},
		{"wrong signing key", signJWT(t, otherKey, teamID, "KEY0000002", now), 403, apns2.ReasonInvalidProviderToken},
		{"unknown key id", signJWT(t, goodKey, teamID, "NOSUCHKEY1", now), 403, apns2.ReasonInvalidProviderToken},
		{"key of another team", signJWT(t, goodKey, "TEAM000009", "KEY0000002", now), 403, apns2.ReasonInvalidProviderToken},
		{"garbage", "not.a.jwt", 403, apns2.ReasonInvalidProviderToken},
		{"tampered claims", tamper(signJWT(t, goodKey, teamID, "KEY0000002", now)), 403, apns2.ReasonInvalidProviderToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := clientWithBearer(srv, tt.bearer) // a new connection per case
			res := push(t, c, alert(deviceToken(1)))
			if res.StatusCode != tt.wantStatus || res.Reason != tt.wantReason {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, res.Reason, tt.wantStatus, tt.wantReason)
			}
		})
	}

	t.Run("missing", func(t *testing.T) {
		c := &apns2.Client{Host: srv.URL(), HTTPClient: srv.CA().HTTP2Client()} // no Token: no authorization header
		res := push(t, c, alert(deviceToken(1)))
		if res.StatusCode != 403 || res.Reason != apns2.ReasonMissingProviderToken {
			t.Errorf("got %d %q, want 403 MissingProviderToken", res.StatusCode, res.Reason)
		}
	})
}

// tamper swaps the claims for others signed by nobody.
func tamper(jwtString string) string {
	parts := strings.Split(jwtString, ".")
	parts[1] = "eyJpc3MiOiJURUFNMDAwMDAyIiwiaWF0IjoxfQ" // {"iss":"TEAM000002","iat":1}
	return strings.Join(parts, ".")
}

func TestOneTeamPerConnection(t *testing.T) {
	srv, _ := setup(t, apns.Options{})
	_, keyB, err := srv.NewProviderKey("TEAM000002", "KEYB000001")
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterTopic("TEAM000002", "com.b.app")
	_, keyA, err := srv.NewProviderKey(teamID, "KEYA000001")
	if err != nil {
		t.Fatal(err)
	}

	shared := srv.CA().HTTP2Client() // one HTTP/2 connection for both clients
	a := newClient(srv, keyA, teamID, "KEYA000001", shared)
	b := newClient(srv, keyB, "TEAM000002", "KEYB000001", shared)
	nb := alert(deviceToken(2))
	nb.Topic = "com.b.app"

	if res := push(t, a, alert(deviceToken(1))); res.StatusCode != 200 {
		t.Fatalf("team A first: got %d %q, want 200", res.StatusCode, res.Reason)
	}
	if res := push(t, b, nb); res.StatusCode != 403 || res.Reason != apns2.ReasonInvalidProviderToken {
		t.Errorf("team B on team A's connection: got %d %q, want 403 InvalidProviderToken", res.StatusCode, res.Reason)
	}
	// Team B on its own connection is fine.
	b.HTTPClient = srv.CA().HTTP2Client()
	if res := push(t, b, nb); res.StatusCode != 200 {
		t.Errorf("team B on its own connection: got %d %q, want 200", res.StatusCode, res.Reason)
	}
	// A topic of team B is refused to team A's token.
	if res := push(t, a, nb); res.StatusCode != 400 || res.Reason != apns2.ReasonTopicDisallowed {
		t.Errorf("team A to team B's topic: got %d %q, want 400 TopicDisallowed", res.StatusCode, res.Reason)
	}
}

func TestKeyReplacementInvalidatesCachedToken(t *testing.T) {
	srv, c := setup(t, apns.Options{})
	if res := push(t, c, alert(deviceToken(1))); res.StatusCode != 200 {
		t.Fatalf("got %d %q, want 200", res.StatusCode, res.Reason)
	}
	// Same team and key ID, new key: the JWT cached on the connection was
	// signed by the old key and must be verified again, and fail.
	if _, _, err := srv.NewProviderKey(teamID, keyID); err != nil {
		t.Fatal(err)
	}
	if res := push(t, c, alert(deviceToken(1))); res.StatusCode != 403 || res.Reason != apns2.ReasonInvalidProviderToken {
		t.Errorf("after key rotation: got %d %q, want 403 InvalidProviderToken", res.StatusCode, res.Reason)
	}
}

// rawPush sends a hand-made request over HTTP/2, for what apns2 cannot send.
func rawPush(t *testing.T, hc *http.Client, method, url string, hdr http.Header, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

func TestRawRequestsAndExactBodies(t *testing.T) {
	srv := startServer(t, apns.Options{})
	_, key, err := srv.NewProviderKey(teamID, keyID)
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterTopic(teamID, bundleID)
	srv.MarkUnregistered(deviceToken(9), time.UnixMilli(1_600_000_000_123))
	bearer := "bearer " + signJWT(t, key, teamID, keyID, time.Now())
	hc := srv.CA().HTTP2Client()
	good := func() http.Header {
		return http.Header{"Authorization": {bearer}, "Apns-Topic": {bundleID}}
	}
	with := func(k string, v ...string) http.Header {
		h := good()
		h[k] = v
		return h
	}
	url := srv.URL() + "/3/device/" + deviceToken(1)
	tests := []struct {
		name       string
		method     string
		url        string
		hdr        http.Header
		body       string
		wantStatus int
		wantBody   string
	}{
		{"ok", "POST", url, good(), `{"aps":{}}`, 200, ``},
		{"empty body", "POST", url, good(), ``, 400, `{"reason":"PayloadEmpty"}`},
		{"not JSON", "POST", url, good(), `{"aps":`, 400, `{"reason":"BadPayload"}`},
		{"bad path", "POST", srv.URL() + "/3/devices/" + deviceToken(1), good(), `{}`, 404, `{"reason":"BadPath"}`},
		{"GET", "GET", url, good(), ``, 405, `{"reason":"MethodNotAllowed"}`},
		{"no token in path", "POST", srv.URL() + "/3/device/", good(), `{}`, 400, `{"reason":"MissingDeviceToken"}`},
		{"no authorization", "POST", url, http.Header{"Apns-Topic": {bundleID}}, `{}`, 403, `{"reason":"MissingProviderToken"}`},
		{"duplicate topic", "POST", url, with("Apns-Topic", bundleID, bundleID), `{}`, 400, `{"reason":"DuplicateHeaders"}`},
		{"bad expiration", "POST", url, with("Apns-Expiration", "tomorrow"), `{}`, 400, `{"reason":"BadExpirationDate"}`},
		{"unregistered", "POST", srv.URL() + "/3/device/" + deviceToken(9), good(), `{}`, 410, `{"reason":"Unregistered","timestamp":1600000000123}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, hdr, body := rawPush(t, hc, tt.method, tt.url, tt.hdr, tt.body)
			if status != tt.wantStatus || body != tt.wantBody {
				t.Errorf("got %d %s, want %d %s", status, body, tt.wantStatus, tt.wantBody)
			}
			if id := hdr.Get("apns-id"); len(id) != 36 {
				t.Errorf("got apns-id %q, want a UUID", id)
			}
		})
	}

	t.Run("HTTP/1.1 refused", func(t *testing.T) {
		h1 := srv.CA().HTTPClient()
		h1.Transport.(*http.Transport).ForceAttemptHTTP2 = false
		h1.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"http/1.1"}
		status, _, body := rawPush(t, h1, "POST", url, good(), `{}`)
		if status != 505 || body != `{"reason":"HTTPVersionNotSupported"}` {
			t.Errorf("got %d %s, want 505 HTTPVersionNotSupported", status, body)
		}
	})
}

func TestAvailabilitySwitch(t *testing.T) {
	srv, c := setup(t, apns.Options{})
	srv.SetAvailable(false)
	res := push(t, c, alert(deviceToken(1)))
	if res.StatusCode != 503 || res.Reason != apns2.ReasonServiceUnavailable {
		t.Errorf("while down: got %d %q, want 503 ServiceUnavailable", res.StatusCode, res.Reason)
	}
	srv.SetAvailable(true)
	if res := push(t, c, alert(deviceToken(1))); res.StatusCode != 200 {
		t.Errorf("back up: got %d %q, want 200", res.StatusCode, res.Reason)
	}
}

// outcomes pushes n notifications one after the other and returns the
// statuses, "E" for a transport error.
func outcomes(t *testing.T, c *apns2.Client, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		res, err := c.Push(alert(deviceToken(i)))
		if err != nil {
			out[i] = "E"
			continue
		}
		out[i] = fmt.Sprint(res.StatusCode)
	}
	return out
}

func TestFaultsAreDeterministic(t *testing.T) {
	faults := apns.Faults{TooManyRequestsRate: 0.2, InternalErrorRate: 0.1, UnavailableRate: 0.1, RetryAfter: 3 * time.Second}
	run := func(seed int64) ([]string, apns.Counts) {
		srv, c := setup(t, apns.Options{Seed: seed})
		if err := srv.SetFaults(faults); err != nil {
			t.Fatal(err)
		}
		return outcomes(t, c, 200), srv.Count()
	}
	a, counts := run(42)
	b, _ := run(42)
	other, _ := run(43)
	if strings.Join(a, ",") != strings.Join(b, ",") {
		t.Errorf("same seed, different outcomes:\n%v\n%v", a, b)
	}
	if strings.Join(a, ",") == strings.Join(other, ",") {
		t.Errorf("seeds 42 and 43 gave identical outcomes %v, want different", a)
	}
	// 200 draws at 20/10/10 %: each kind must show up, and not absurdly often.
	for reason, max := range map[string]int64{apns2.ReasonTooManyRequests: 70, apns2.ReasonInternalServerError: 45, apns2.ReasonServiceUnavailable: 45} {
		if got := counts.Rejected[reason]; got == 0 || got > max {
			t.Errorf("got %d %s in 200 pushes, want 1..%d", got, reason, max)
		}
	}
	if counts.Accepted < 80 {
		t.Errorf("got %d accepted of 200, want at least 80", counts.Accepted)
	}
}

func TestRetryAfterAndFaultsAdmin(t *testing.T) {
	srv := startServer(t, apns.Options{})
	_, key, err := srv.NewProviderKey(teamID, keyID)
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterTopic(teamID, bundleID)
	if err := srv.SetFaults(apns.Faults{TooManyRequestsRate: 1, RetryAfter: 2500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	hdr := http.Header{"Authorization": {"bearer " + signJWT(t, key, teamID, keyID, time.Now())}, "Apns-Topic": {bundleID}}
	status, h, body := rawPush(t, srv.CA().HTTP2Client(), "POST", srv.URL()+"/3/device/"+deviceToken(1), hdr, `{}`)
	if status != 429 || body != `{"reason":"TooManyRequests"}` || h.Get("Retry-After") != "3" {
		t.Errorf("got %d %s Retry-After %q, want 429 TooManyRequests Retry-After 3", status, body, h.Get("Retry-After"))
	}
	if err := srv.SetFaults(apns.Faults{InternalErrorRate: 0.7, UnavailableRate: 0.7}); err == nil {
		t.Error("SetFaults with rates adding up to 1.4: got nil error, want one")
	}
	if err := srv.SetFaults(apns.Faults{DropMode: "explode"}); err == nil {
		t.Error("SetFaults with an unknown drop mode: got nil error, want one")
	}
}

func TestLatency(t *testing.T) {
	srv, c := setup(t, apns.Options{})
	if err := srv.SetFaults(apns.Faults{Latency: 30 * time.Millisecond, Jitter: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res := push(t, c, alert(deviceToken(1)))
	if took := time.Since(start); took < 30*time.Millisecond {
		t.Errorf("push took %v, want at least the 30ms latency", took)
	}
	if res.StatusCode != 200 {
		t.Errorf("got %d %q, want 200", res.StatusCode, res.Reason)
	}
}

func TestConnectionDropsRecover(t *testing.T) {
	t.Run("goaway every 3rd", func(t *testing.T) {
		srv, c := setup(t, apns.Options{})
		if err := srv.SetFaults(apns.Faults{DropEvery: 3, DropMode: "goaway"}); err != nil {
			t.Fatal(err)
		}
		got := outcomes(t, c, 9)
		if want := strings.Repeat("200,", 8) + "200"; strings.Join(got, ",") != want {
			t.Errorf("got %v, want every push answered 200 (GOAWAY is graceful)", got)
		}
		conns := map[uint64]bool{}
		for _, d := range srv.Received() {
			conns[d.ConnID] = true
		}
		if len(conns) != 3 {
			t.Errorf("got pushes on %d connections, want 3 (a new one after each GOAWAY)", len(conns))
		}
	})
	t.Run("hard close every 3rd", func(t *testing.T) {
		srv, c := setup(t, apns.Options{})
		if err := srv.SetFaults(apns.Faults{DropEvery: 3, DropMode: "close"}); err != nil {
			t.Fatal(err)
		}
		got := outcomes(t, c, 7)
		if want := "200,200,E,200,200,E,200"; strings.Join(got, ",") != want {
			t.Errorf("got %v, want %s: the 3rd and 6th fail, the client reconnects", got, want)
		}
		counts := srv.Count()
		if counts.Dropped != 2 || counts.Accepted != 5 {
			t.Errorf("got %d dropped, %d accepted, want 2 and 5", counts.Dropped, counts.Accepted)
		}
	})
}

func TestInspectionBoundedAndReset(t *testing.T) {
	srv, c := setup(t, apns.Options{MaxLog: 5})
	for i := 0; i < 8; i++ {
		push(t, c, alert(deviceToken(i%2)))
	}
	got := srv.Received()
	if len(got) != 5 {
		t.Fatalf("got %d retained, want 5 (MaxLog)", len(got))
	}
	if got[0].Token != deviceToken(1) || got[4].Token != deviceToken(1) {
		t.Errorf("got oldest %s newest %s, want pushes 4..8 in order", got[0].Token[60:], got[4].Token[60:])
	}
	if n := len(srv.ReceivedFor(deviceToken(0))); n != 2 {
		t.Errorf("got %d retained for token 0, want 2", n)
	}
	if c := srv.Count(); c.Accepted != 8 || c.Received != 8 {
		t.Errorf("got counts %+v, want 8 accepted despite the bounded log", c)
	}
	srv.Reset()
	if n, c := len(srv.Received()), srv.Count(); n != 0 || c.Received != 0 || c.Accepted != 0 {
		t.Errorf("after Reset got %d retained, counts %+v, want nothing", n, c)
	}
}

func TestAdminAPI(t *testing.T) {
	srv := startServer(t, apns.Options{})
	hc := srv.CA().HTTPClient()
	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}

	status, body := call("POST", "/_emulator/keys", `{"team_id":"`+teamID+`","key_id":"`+keyID+`"}`)
	if status != 200 {
		t.Fatalf("generate key: got %d %s, want 200", status, body)
	}
	var gen struct{ P8 string }
	if err := json.Unmarshal([]byte(body), &gen); err != nil {
		t.Fatal(err)
	}
	key, err := token.AuthKeyFromBytes([]byte(gen.P8))
	if err != nil {
		t.Fatalf("p8 from the admin API: %v", err)
	}

	calls := []struct {
		method, path, body string
		wantStatus         int
	}{
		{"POST", "/_emulator/topics", `{"team_id":"` + teamID + `","bundle_id":"` + bundleID + `"}`, 200},
		{"POST", "/_emulator/topics", `{"team_id":"` + teamID + `"}`, 400},
		{"POST", "/_emulator/topics", `{"team_id":"x","bundle_id":"y","extra":1}`, 400},
		{"POST", "/_emulator/tokens/unregistered", `{"token":"` + deviceToken(3) + `","timestamp_ms":1600000000000}`, 200},
		{"POST", "/_emulator/tokens/outcome", `{"token":"` + deviceToken(4) + `","reason":"DeviceTokenNotForTopic"}`, 200},
		{"POST", "/_emulator/tokens/outcome", `{"token":"` + deviceToken(4) + `","reason":"Nope"}`, 400},
		{"POST", "/_emulator/keys", `{"team_id":"T","key_id":"K","public_key_pem":"junk"}`, 400},
		{"PUT", "/_emulator/faults", `{"latency":"1ms","drop_mode":"goaway"}`, 200},
		{"PUT", "/_emulator/faults", `{"latency":"soon"}`, 400},
		{"PUT", "/_emulator/faults", `{"internal_error_rate":2}`, 400},
		{"PUT", "/_emulator/faults", `{}`, 200},
		{"PUT", "/_emulator/available", `{}`, 400},
		{"PUT", "/_emulator/available", `{"available":true}`, 200},
		{"GET", "/_emulator/received?limit=-1", ``, 400},
		{"GET", "/_emulator/", ``, 200},
	}
	for _, cl := range calls {
		if status, body := call(cl.method, cl.path, cl.body); status != cl.wantStatus {
			t.Errorf("%s %s %s: got %d %s, want %d", cl.method, cl.path, cl.body, status, body, cl.wantStatus)
		}
	}

	c := newClient(srv, key, teamID, keyID, srv.CA().HTTP2Client())
	if res := push(t, c, alert(deviceToken(1))); res.StatusCode != 200 {
		t.Errorf("push with the admin-generated key: got %d %q, want 200", res.StatusCode, res.Reason)
	}
	if res := push(t, c, alert(deviceToken(3))); res.Reason != apns2.ReasonUnregistered {
		t.Errorf("admin-marked token: got %q, want Unregistered", res.Reason)
	}
	if res := push(t, c, alert(deviceToken(4))); res.Reason != apns2.ReasonDeviceTokenNotForTopic {
		t.Errorf("admin-outcome token: got %q, want DeviceTokenNotForTopic", res.Reason)
	}

	status, body = call("GET", "/_emulator/received?token="+deviceToken(1), ``)
	var received []map[string]any
	if err := json.Unmarshal([]byte(body), &received); status != 200 || err != nil || len(received) != 1 {
		t.Fatalf("received: got %d %s (%v), want one delivery", status, body, err)
	}
	if received[0]["payload"] != `{"aps":{"alert":"hi"}}` || received[0]["topic"] != bundleID {
		t.Errorf("got delivery %v, want payload and topic as sent", received[0])
	}
	status, body = call("GET", "/_emulator/counts", ``)
	var counts struct {
		Received, Accepted int64
		Rejected           map[string]int64
	}
	if err := json.Unmarshal([]byte(body), &counts); status != 200 || err != nil {
		t.Fatalf("counts: got %d %s (%v)", status, body, err)
	}
	if counts.Received != 3 || counts.Accepted != 1 || counts.Rejected["Unregistered"] != 1 {
		t.Errorf("got counts %+v, want 3 received, 1 accepted, 1 Unregistered", counts)
	}
	if status, _ := call("POST", "/_emulator/reset", ``); status != 200 || srv.Count().Received != 0 {
		t.Errorf("reset: got %d and %d received after, want 200 and 0", status, srv.Count().Received)
	}
}

func mustKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func TestTooManyProviderTokenUpdates(t *testing.T) {
	srv := startServer(t, apns.Options{})
	_, key, err := srv.NewProviderKey(teamID, keyID)
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterTopic(teamID, bundleID)
	shared := srv.CA().HTTP2Client() // one connection for every token below
	now := time.Now()
	var got []string
	for i := 0; i < 5; i++ {
		// A fresh JWT each time (different iat), as a client that signs a
		// token per request would send.
		c := clientWithBearer(srv, signJWT(t, key, teamID, keyID, now.Add(-time.Duration(i)*time.Second)))
		c.HTTPClient = shared
		got = append(got, push(t, c, alert(deviceToken(1))).Reason)
	}
	want := []string{"", "", "", apns2.ReasonTooManyProviderTokenUpdates, apns2.ReasonTooManyProviderTokenUpdates}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("got reasons %q, want %q: two switches allowed, then 429", got, want)
	}

	// The check can be switched off.
	srv2 := startServer(t, apns.Options{MaxTokenUpdates: -1})
	_, key2, err := srv2.NewProviderKey(teamID, keyID)
	if err != nil {
		t.Fatal(err)
	}
	srv2.RegisterTopic(teamID, bundleID)
	shared2 := srv2.CA().HTTP2Client()
	for i := 0; i < 5; i++ {
		c := clientWithBearer(srv2, signJWT(t, key2, teamID, keyID, now.Add(-time.Duration(i)*time.Second)))
		c.HTTPClient = shared2
		if res := push(t, c, alert(deviceToken(1))); res.StatusCode != 200 {
			t.Errorf("with the check off, token %d: got %d %q, want 200", i, res.StatusCode, res.Reason)
		}
	}
}

// TestEveryReasonReachesApns2 sets each reason Apple documents as a token
// outcome and checks apns2 reports exactly that status and reason.
func TestEveryReasonReachesApns2(t *testing.T) {
	srv, c := setup(t, apns.Options{})
	reasons := []string{
		apns2.ReasonBadCollapseID, apns2.ReasonBadDeviceToken, apns2.ReasonBadExpirationDate, apns2.ReasonBadMessageID,
		apns2.ReasonBadPriority, apns2.ReasonBadTopic, apns2.ReasonDeviceTokenNotForTopic, apns2.ReasonDuplicateHeaders,
		apns2.ReasonIdleTimeout, apns2.ReasonInvalidPushType, apns2.ReasonMissingDeviceToken, apns2.ReasonMissingTopic,
		apns2.ReasonPayloadEmpty, apns2.ReasonTopicDisallowed, apns2.ReasonBadCertificate, apns2.ReasonBadCertificateEnvironment,
		apns2.ReasonExpiredProviderToken, apns2.ReasonForbidden, apns2.ReasonInvalidProviderToken, apns2.ReasonMissingProviderToken,
		apns2.ReasonBadPath, apns2.ReasonMethodNotAllowed, apns2.ReasonExpiredToken, apns2.ReasonUnregistered,
		apns2.ReasonPayloadTooLarge, apns2.ReasonTooManyProviderTokenUpdates, apns2.ReasonTooManyRequests,
		apns2.ReasonInternalServerError, apns2.ReasonServiceUnavailable, apns2.ReasonShutdown,
	}
	wantStatus := func(reason string) int {
		switch reason {
		case apns2.ReasonBadCertificate, apns2.ReasonBadCertificateEnvironment, apns2.ReasonExpiredProviderToken,
			apns2.ReasonForbidden, apns2.ReasonInvalidProviderToken, apns2.ReasonMissingProviderToken:
			return 403
		case apns2.ReasonBadPath:
			return 404
		case apns2.ReasonMethodNotAllowed:
			return 405
		case apns2.ReasonExpiredToken, apns2.ReasonUnregistered:
			return 410
		case apns2.ReasonPayloadTooLarge:
			return 413
		case apns2.ReasonTooManyProviderTokenUpdates, apns2.ReasonTooManyRequests:
			return 429
		case apns2.ReasonInternalServerError:
			return 500
		case apns2.ReasonServiceUnavailable, apns2.ReasonShutdown:
			return 503
		}
		return 400
	}
	for i, reason := range reasons {
		t.Run(reason, func(t *testing.T) {
			tok := deviceToken(1000 + i)
			if err := srv.SetTokenOutcome(tok, reason); err != nil {
				t.Fatal(err)
			}
			res := push(t, c, alert(tok))
			if res.StatusCode != wantStatus(reason) || res.Reason != reason {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, res.Reason, wantStatus(reason), reason)
			}
			if got := res.StatusCode == 410; got == res.Timestamp.IsZero() {
				t.Errorf("got timestamp %v with status %d, want one exactly on 410", res.Timestamp.Time, res.StatusCode)
			}
		})
	}
}
