package fcm_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"google.golang.org/api/option"

	"github.com/pushmesh/pushmesh/emulator/fault"
	"github.com/pushmesh/pushmesh/emulator/fcm"
)

const project = "pushmesh-test"

func startServer(t *testing.T, opts fcm.Options) *fcm.Server {
	t.Helper()
	srv, err := fcm.Start(opts)
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

// tokenSource exchanges the service-account JSON for access tokens at the
// emulator's token_uri, over a client that trusts the emulator CA.
func tokenSource(t testing.TB, srv *fcm.Server, saJSON []byte) oauth2.TokenSource {
	t.Helper()
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, srv.CA().HTTPClient())
	creds, err := google.CredentialsFromJSONWithTypeAndParams(ctx, saJSON, google.ServiceAccount,
		google.CredentialsParams{Scopes: []string{fcm.ScopeFirebaseMessaging}})
	if err != nil {
		t.Fatalf("credentials from JSON: %v", err)
	}
	return creds.TokenSource
}

// newMessaging returns a firebase messaging client, in its own App, that
// sends to the emulator with OAuth2 tokens from a real token exchange.
func newMessaging(t testing.TB, srv *fcm.Server, saJSON []byte, projectID string) *messaging.Client {
	t.Helper()
	hc := &http.Client{Transport: &oauth2.Transport{
		Source: tokenSource(t, srv, saJSON),
		Base:   srv.CA().HTTPClient().Transport,
	}}
	return newMessagingWithHTTP(t, srv, hc, projectID)
}

func newMessagingWithHTTP(t testing.TB, srv *fcm.Server, hc *http.Client, projectID string) *messaging.Client {
	t.Helper()
	ctx := context.Background()
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: projectID},
		option.WithHTTPClient(hc), option.WithEndpoint(srv.URL()+"/v1"))
	if err != nil {
		t.Fatalf("firebase.NewApp: %v", err)
	}
	mc, err := app.Messaging(ctx)
	if err != nil {
		t.Fatalf("app.Messaging: %v", err)
	}
	return mc
}

func setup(t *testing.T, opts fcm.Options) (*fcm.Server, *messaging.Client, []byte) {
	t.Helper()
	srv := startServer(t, opts)
	saJSON, _, err := srv.NewServiceAccount(project)
	if err != nil {
		t.Fatalf("NewServiceAccount: %v", err)
	}
	return srv, newMessaging(t, srv, saJSON, project), saJSON
}

func msg(token string) *messaging.Message {
	return &messaging.Message{
		Token:        token,
		Data:         map[string]string{"journey": "j1", "message": "m1"},
		Notification: &messaging.Notification{Title: "Hi", Body: "there"},
	}
}

func TestSendDeliveredAfterRealTokenExchange(t *testing.T) {
	srv, mc, _ := setup(t, fcm.Options{})
	ttl := 3500 * time.Millisecond
	m := msg("device-1")
	m.Android = &messaging.AndroidConfig{Priority: "high", TTL: &ttl, CollapseKey: "score"}
	m.APNS = &messaging.APNSConfig{
		Headers: map[string]string{"apns-priority": "10"},
		Payload: &messaging.APNSPayload{Aps: &messaging.Aps{Alert: &messaging.ApsAlert{Title: "Hi"}}},
	}

	name, err := mc.Send(context.Background(), m)
	if err != nil {
		t.Fatalf("Send: %v", err)
	}
	if !strings.HasPrefix(name, "projects/"+project+"/messages/0:") {
		t.Errorf("got name %q, want projects/%s/messages/0:…", name, project)
	}
	if _, err := mc.Send(context.Background(), msg("device-1")); err != nil {
		t.Fatalf("second Send: %v", err)
	}

	got := srv.ReceivedFor("device-1")
	if len(got) != 2 {
		t.Fatalf("got %d deliveries, want 2", len(got))
	}
	d := got[0]
	if d.Status != 200 || d.Name != name || d.Project != project || d.ValidateOnly || !strings.HasPrefix(d.ClientEmail, "firebase-adminsdk-") {
		t.Errorf("got delivery %+v, want 200 with the name, project and service account", d)
	}
	var sent struct {
		Android struct{ Priority, TTL, CollapseKey string } `json:"android"`
		Data    map[string]string                           `json:"data"`
	}
	if err := json.Unmarshal(d.Message, &sent); err != nil {
		t.Fatalf("logged message is not JSON: %v: %s", err, d.Message)
	}
	if sent.Android.Priority != "high" || sent.Android.TTL != "3.500000000s" || sent.Data["journey"] != "j1" {
		t.Errorf("got logged message %s, want android priority high, ttl 3.5s and the data", d.Message)
	}
	c := srv.Count()
	if c.Delivered != 2 || c.TokensIssued != 1 {
		t.Errorf("got %d delivered, %d tokens issued, want 2 and 1 (the access token is reused)", c.Delivered, c.TokensIssued)
	}
}

// predicates are firebase's error classifiers; for each FcmError code
// exactly the matching one must be true.
var predicates = map[string]func(error) bool{
	fcm.ErrUnregistered:        messaging.IsUnregistered,
	fcm.ErrInvalidArgument:     messaging.IsInvalidArgument,
	fcm.ErrSenderIDMismatch:    messaging.IsSenderIDMismatch,
	fcm.ErrQuotaExceeded:       messaging.IsQuotaExceeded,
	fcm.ErrUnavailable:         messaging.IsUnavailable,
	fcm.ErrInternal:            messaging.IsInternal,
	fcm.ErrThirdPartyAuthError: messaging.IsThirdPartyAuthError,
}

func checkOnly(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", want)
	}
	for code, is := range predicates {
		if got := is(err); got != (code == want) {
			t.Errorf("%s predicate on %q: got %v, want %v", code, err, got, code == want)
		}
	}
}

func TestErrorsSeenByFirebase(t *testing.T) {
	srv, mc, _ := setup(t, fcm.Options{})
	// firebase retries 503 unless Retry-After exceeds two minutes: make it
	// give up at once so the UNAVAILABLE case is a single request.
	if err := srv.SetFaults(fcm.Faults{RetryAfter: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		code       string
		httpStatus int
		platform   func(error) bool // firebase's platform-level classifier
	}{
		{fcm.ErrUnregistered, 404, errorutils.IsNotFound},
		{fcm.ErrInvalidArgument, 400, errorutils.IsInvalidArgument},
		{fcm.ErrSenderIDMismatch, 403, errorutils.IsPermissionDenied},
		{fcm.ErrQuotaExceeded, 429, errorutils.IsResourceExhausted},
		{fcm.ErrUnavailable, 503, errorutils.IsUnavailable},
		{fcm.ErrInternal, 500, errorutils.IsInternal},
		{fcm.ErrThirdPartyAuthError, 401, errorutils.IsUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			tok := "tok-" + strings.ToLower(tt.code)
			if err := srv.SetTokenOutcome(tok, tt.code); err != nil {
				t.Fatal(err)
			}
			_, err := mc.Send(context.Background(), msg(tok))
			checkOnly(t, err, tt.code)
			if !tt.platform(err) {
				t.Errorf("platform classifier on %v: got false, want true", err)
			}
			if res := errorutils.HTTPResponse(err); res == nil || res.StatusCode != tt.httpStatus {
				t.Errorf("got HTTP response %v, want status %d", res, tt.httpStatus)
			}
		})
	}
	if err := srv.SetTokenOutcome("x", "NOT_A_CODE"); err == nil {
		t.Error("SetTokenOutcome with an unknown code: got nil error, want one")
	}

	t.Run("payload over 4096 bytes", func(t *testing.T) {
		m := msg("device-1")
		m.Data = map[string]string{"blob": strings.Repeat("x", 4100)}
		_, err := mc.Send(context.Background(), m)
		checkOnly(t, err, fcm.ErrInvalidArgument)
	})
	t.Run("ttl over four weeks", func(t *testing.T) {
		m := msg("device-1")
		ttl := 29 * 24 * time.Hour
		m.Android = &messaging.AndroidConfig{TTL: &ttl}
		_, err := mc.Send(context.Background(), m)
		checkOnly(t, err, fcm.ErrInvalidArgument)
	})
	t.Run("marked unregistered", func(t *testing.T) {
		srv.MarkUnregistered("gone-1")
		_, err := mc.Send(context.Background(), msg("gone-1"))
		checkOnly(t, err, fcm.ErrUnregistered)
		if err := srv.SetTokenOutcome("gone-1", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := mc.Send(context.Background(), msg("gone-1")); err != nil {
			t.Errorf("after clearing the outcome: got %v, want success", err)
		}
	})
}

func TestValidateOnly(t *testing.T) {
	srv, mc, _ := setup(t, fcm.Options{})
	name, err := mc.SendDryRun(context.Background(), msg("device-1"))
	if err != nil {
		t.Fatalf("SendDryRun: %v", err)
	}
	if want := "projects/" + project + "/messages/fake_message_id"; name != want {
		t.Errorf("got name %q, want %q", name, want)
	}
	br, err := mc.SendEachDryRun(context.Background(), []*messaging.Message{msg("device-2"), msg("device-3")})
	if err != nil || br.SuccessCount != 2 {
		t.Fatalf("SendEachDryRun: got %v %+v, want 2 successes", err, br)
	}
	// A dry run still reports dead tokens.
	srv.MarkUnregistered("gone")
	_, err = mc.SendDryRun(context.Background(), msg("gone"))
	checkOnly(t, err, fcm.ErrUnregistered)

	c := srv.Count()
	if c.Validated != 3 || c.Delivered != 0 {
		t.Errorf("got %d validated, %d delivered, want 3 and 0", c.Validated, c.Delivered)
	}
	for _, d := range srv.Received() {
		if !d.ValidateOnly {
			t.Errorf("got delivery %q not flagged validate-only", d.Token)
		}
	}
}

func TestSendEachBatch(t *testing.T) {
	srv, mc, _ := setup(t, fcm.Options{})
	msgs := make([]*messaging.Message, 500)
	for i := range msgs {
		msgs[i] = msg(fmt.Sprintf("device-%d", i))
		if i%100 == 7 {
			srv.MarkUnregistered(msgs[i].Token)
		}
	}
	br, err := mc.SendEach(context.Background(), msgs)
	if err != nil {
		t.Fatalf("SendEach: %v", err)
	}
	if br.SuccessCount != 495 || br.FailureCount != 5 {
		t.Errorf("got %d successes, %d failures, want 495 and 5", br.SuccessCount, br.FailureCount)
	}
	for i, r := range br.Responses {
		if dead := i%100 == 7; dead != messaging.IsUnregistered(r.Error) {
			t.Errorf("message %d: got error %v, want unregistered=%v", i, r.Error, dead)
		}
	}
	if c := srv.Count(); c.Delivered != 495 || c.Rejected[fcm.ErrUnregistered] != 5 || c.TokensIssued != 1 {
		t.Errorf("got counts %+v, want 495 delivered, 5 UNREGISTERED, 1 token", c)
	}
}

func TestAuthentication(t *testing.T) {
	srv, mc, _ := setup(t, fcm.Options{})
	ctx := context.Background()

	t.Run("no bearer token", func(t *testing.T) {
		plain := newMessagingWithHTTP(t, srv, srv.CA().HTTPClient(), project)
		_, err := plain.Send(ctx, msg("device-1"))
		if !errorutils.IsUnauthenticated(err) {
			t.Errorf("got %v, want UNAUTHENTICATED", err)
		}
		checkNone(t, err)
	})
	t.Run("revoked access token", func(t *testing.T) {
		if _, err := mc.Send(ctx, msg("device-1")); err != nil {
			t.Fatal(err)
		}
		srv.RevokeAccessTokens()
		_, err := mc.Send(ctx, msg("device-1"))
		if !errorutils.IsUnauthenticated(err) {
			t.Errorf("got %v, want UNAUTHENTICATED", err)
		}
	})
	t.Run("service account of another project", func(t *testing.T) {
		other, _, err := srv.NewServiceAccount("other-project")
		if err != nil {
			t.Fatal(err)
		}
		_, err = newMessaging(t, srv, other, project).Send(ctx, msg("device-1"))
		if !errorutils.IsPermissionDenied(err) {
			t.Errorf("got %v, want PERMISSION_DENIED", err)
		}
		checkNone(t, err)
	})
	t.Run("key not registered", func(t *testing.T) {
		saJSON, _, err := srv.NewServiceAccount(project)
		if err != nil {
			t.Fatal(err)
		}
		// Ask the token source directly: through firebase the failure is
		// retried as a network error for seven seconds.
		_, err = tokenSource(t, srv, replaceKey(t, saJSON)).Token()
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || string(re.Body) != `{"error":"invalid_grant","error_description":"Invalid JWT Signature."}`+"\n" {
			t.Errorf("got %v, want oauth2 invalid_grant: Invalid JWT Signature.", err)
		}
	})
	t.Run("unknown client email", func(t *testing.T) {
		saJSON, _, err := srv.NewServiceAccount(project)
		if err != nil {
			t.Fatal(err)
		}
		var sa map[string]string
		if err := json.Unmarshal(saJSON, &sa); err != nil {
			t.Fatal(err)
		}
		sa["client_email"] = "nobody@" + project + ".iam.gserviceaccount.com"
		b, _ := json.Marshal(sa)
		_, err = tokenSource(t, srv, b).Token()
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || !strings.Contains(string(re.Body), `"error_description":"Invalid grant: account not found"`) {
			t.Errorf("got %v, want oauth2 invalid_grant", err)
		}
	})
}

func checkNone(t *testing.T, err error) {
	t.Helper()
	for code, is := range predicates {
		if is(err) {
			t.Errorf("%s predicate true on %v, want false (no FcmError detail)", code, err)
		}
	}
}

// replaceKey swaps the private key of a service-account JSON for a fresh,
// unregistered one.
func replaceKey(t *testing.T, saJSON []byte) []byte {
	t.Helper()
	var sa map[string]string
	if err := json.Unmarshal(saJSON, &sa); err != nil {
		t.Fatal(err)
	}
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	sa["private_key"] = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	b, _ := json.Marshal(sa)
	return b
}

// assertion signs a token-endpoint assertion by hand, to control each claim.
func assertion(t *testing.T, key *rsa.PrivateKey, alg string, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": alg, "typ": "JWT"}) + "." + enc(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, 5, sum[:]) // 5 = crypto.SHA256
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestTokenEndpoint(t *testing.T) {
	srv := startServer(t, fcm.Options{})
	saJSON, key, err := srv.NewServiceAccount(project)
	if err != nil {
		t.Fatal(err)
	}
	var sa2 map[string]string
	_ = json.Unmarshal(saJSON, &sa2)
	email := sa2["client_email"]
	if sa2["token_uri"] != srv.TokenURL() || sa2["type"] != "service_account" || sa2["project_id"] != project || sa2["private_key_id"] == "" {
		t.Fatalf("got service account %v, want token_uri %s and the standard fields", sa2, srv.TokenURL())
	}
	now := time.Now().Unix()
	claims := func(edit func(map[string]any)) map[string]any {
		c := map[string]any{"iss": email, "scope": fcm.ScopeFirebaseMessaging, "aud": srv.TokenURL(), "iat": now, "exp": now + 3600}
		edit(c)
		return c
	}
	tests := []struct {
		name      string
		grant     string
		assertion string
		wantCode  int
		wantError string
	}{
		{"valid", "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion(t, key, "RS256", claims(func(map[string]any) {})), 200, ""},
		{"wrong grant type", "client_credentials", assertion(t, key, "RS256", claims(func(map[string]any) {})), 400, "unsupported_grant_type"},
		{"expired", "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion(t, key, "RS256", claims(func(c map[string]any) { c["iat"], c["exp"] = now-7200, now-3600 })), 400, "invalid_grant"},
		{"lives two hours", "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion(t, key, "RS256", claims(func(c map[string]any) { c["exp"] = now + 7200 })), 400, "invalid_grant"},
		{"wrong audience", "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion(t, key, "RS256", claims(func(c map[string]any) { c["aud"] = "https://elsewhere/token" })), 400, "invalid_grant"},
		{"no scope", "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion(t, key, "RS256", claims(func(c map[string]any) { delete(c, "scope") })), 400, "invalid_scope"},
		{"alg none", "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion(t, key, "none", claims(func(map[string]any) {})), 400, "invalid_grant"},
		{"garbage", "urn:ietf:params:oauth:grant-type:jwt-bearer", "a.b.c", 400, "invalid_grant"},
	}
	hc := srv.CA().HTTPClient()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := hc.PostForm(srv.TokenURL(), url.Values{"grant_type": {tt.grant}, "assertion": {tt.assertion}})
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var body struct {
				AccessToken string `json:"access_token"`
				ExpiresIn   int    `json:"expires_in"`
				TokenType   string `json:"token_type"`
				Error       string `json:"error"`
			}
			if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != tt.wantCode || body.Error != tt.wantError {
				t.Errorf("got %d %q, want %d %q", res.StatusCode, body.Error, tt.wantCode, tt.wantError)
			}
			if tt.wantCode == 200 && (body.AccessToken == "" || body.ExpiresIn != 3600 || body.TokenType != "Bearer") {
				t.Errorf("got %+v, want an access token, expires_in 3600, Bearer", body)
			}
		})
	}
	if got := srv.Count().TokensIssued; got != 1 {
		t.Errorf("got %d tokens issued, want 1", got)
	}
}

// rawSend posts body to messages:send with a real access token.
func rawSend(t *testing.T, srv *fcm.Server, ts oauth2.TokenSource, method, path, body string) (int, http.Header, string) {
	t.Helper()
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(method, srv.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := srv.CA().HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

type googleError struct {
	Error struct {
		Code    int
		Message string
		Status  string
		Details []map[string]any
	}
}

func (g googleError) fcmCode() string {
	for _, d := range g.Error.Details {
		if d["@type"] == "type.googleapis.com/google.firebase.fcm.v1.FcmError" {
			return d["errorCode"].(string)
		}
	}
	return ""
}

func TestMessageValidation(t *testing.T) {
	srv := startServer(t, fcm.Options{})
	saJSON, _, err := srv.NewServiceAccount(project)
	if err != nil {
		t.Fatal(err)
	}
	ts := tokenSource(t, srv, saJSON)
	sendPath := "/v1/projects/" + project + "/messages:send"
	big := strings.Repeat("x", 4090)
	tests := []struct {
		name       string
		body       string
		wantStatus int
		wantFcm    string // FcmError code; "" when none is expected
	}{
		{"token", `{"message":{"token":"d1","data":{"k":"v"}}}`, 200, ""},
		{"topic", `{"message":{"topic":"news","notification":{"title":"t"}}}`, 200, ""},
		{"topic with prefix", `{"message":{"topic":"/topics/news"}}`, 200, ""},
		{"condition", `{"message":{"condition":"'a' in topics && ('b' in topics || 'c' in topics)"}}`, 200, ""},
		{"no target", `{"message":{"data":{"k":"v"}}}`, 400, "INVALID_ARGUMENT"},
		{"two targets", `{"message":{"token":"d1","topic":"news"}}`, 400, "INVALID_ARGUMENT"},
		{"no message", `{"validate_only":true}`, 400, "INVALID_ARGUMENT"},
		{"bad topic", `{"message":{"topic":"bad topic!"}}`, 400, "INVALID_ARGUMENT"},
		{"six topics", `{"message":{"condition":"'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics"}}`, 400, "INVALID_ARGUMENT"},
		{"token with spaces", `{"message":{"token":"not a token"}}`, 400, "INVALID_ARGUMENT"},
		{"number in data", `{"message":{"token":"d1","data":{"n":1}}}`, 400, ""},
		{"reserved data key", `{"message":{"token":"d1","data":{"from":"me"}}}`, 400, "INVALID_ARGUMENT"},
		{"google data key", `{"message":{"token":"d1","data":{"google.x":"y"}}}`, 400, "INVALID_ARGUMENT"},
		{"data 4096 bytes", `{"message":{"token":"d1","data":{"abcdef":"` + big + `"}}}`, 200, ""},
		{"data 4097 bytes", `{"message":{"token":"d1","data":{"abcdefg":"` + big + `"}}}`, 400, "INVALID_ARGUMENT"},
		{"unknown field", `{"message":{"token":"d1","colour":"red"}}`, 400, ""},
		{"unknown top-level field", `{"msg":{"token":"d1"}}`, 400, ""},
		{"malformed JSON", `{"message":`, 400, ""},
		{"android priority lower case", `{"message":{"token":"d1","android":{"priority":"high","ttl":"3.5s","collapse_key":"c"}}}`, 200, ""},
		{"android priority upper case", `{"message":{"token":"d1","android":{"priority":"NORMAL","ttl":"86400s"}}}`, 200, ""},
		{"android camelCase fields", `{"message":{"token":"d1","android":{"collapseKey":"c","directBootOk":true}}}`, 200, ""},
		{"android priority urgent", `{"message":{"token":"d1","android":{"priority":"urgent"}}}`, 400, ""},
		{"android ttl without s", `{"message":{"token":"d1","android":{"ttl":"3.5"}}}`, 400, ""},
		{"android ttl ten fraction digits", `{"message":{"token":"d1","android":{"ttl":"1.0123456789s"}}}`, 400, ""},
		{"android ttl five weeks", `{"message":{"token":"d1","android":{"ttl":"3024000s"}}}`, 400, "INVALID_ARGUMENT"},
		{"android data number", `{"message":{"token":"d1","android":{"data":{"n":2}}}}`, 400, ""},
		{"apns ok", `{"message":{"token":"d1","apns":{"headers":{"apns-priority":"5"},"payload":{"aps":{"alert":"x"}}}}}`, 200, ""},
		{"apns priority 7", `{"message":{"token":"d1","apns":{"headers":{"apns-priority":"7"}}}}`, 400, "INVALID_ARGUMENT"},
		{"apns payload array", `{"message":{"token":"d1","apns":{"payload":[1]}}}`, 400, ""},
		{"apns aps string", `{"message":{"token":"d1","apns":{"payload":{"aps":"x"}}}}`, 400, "INVALID_ARGUMENT"},
		{"webpush ok", `{"message":{"token":"d1","webpush":{"headers":{"TTL":"60"},"data":{"k":"v"},"notification":{"title":"t"}}}}`, 200, ""},
		{"webpush notification string", `{"message":{"token":"d1","webpush":{"notification":"x"}}}`, 400, ""},
		{"validateOnly camelCase", `{"validateOnly":true,"message":{"token":"d1"}}`, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, body := rawSend(t, srv, ts, "POST", sendPath, tt.body)
			if status != tt.wantStatus {
				t.Fatalf("got %d %s, want %d", status, body, tt.wantStatus)
			}
			if status == 200 {
				return
			}
			var ge googleError
			if err := json.Unmarshal([]byte(body), &ge); err != nil {
				t.Fatalf("error body is not Google's envelope: %v: %s", err, body)
			}
			if ge.Error.Code != status || ge.Error.Status != "INVALID_ARGUMENT" || ge.Error.Message == "" {
				t.Errorf("got envelope %+v, want code %d, status INVALID_ARGUMENT, a message", ge.Error, status)
			}
			if got := ge.fcmCode(); got != tt.wantFcm {
				t.Errorf("got FcmError %q, want %q (body %s)", got, tt.wantFcm, body)
			}
		})
	}
	if d := srv.ReceivedFor("d1"); len(d) == 0 || !d[len(d)-1].ValidateOnly {
		t.Errorf("the camelCase validateOnly send was not flagged as a dry run")
	}

	t.Run("exact UNREGISTERED body", func(t *testing.T) {
		srv.MarkUnregistered("gone")
		status, hdr, body := rawSend(t, srv, ts, "POST", sendPath, `{"message":{"token":"gone"}}`)
		want := `{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}`
		if status != 404 || body != want {
			t.Errorf("got %d %s\nwant 404 %s", status, body, want)
		}
		if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("got Content-Type %q, want JSON", ct)
		}
	})
	t.Run("success body", func(t *testing.T) {
		_, _, body := rawSend(t, srv, ts, "POST", sendPath, `{"message":{"token":"d1"}}`)
		var ok struct{ Name string }
		if err := json.Unmarshal([]byte(body), &ok); err != nil || !strings.HasPrefix(ok.Name, "projects/"+project+"/messages/") {
			t.Errorf("got %s, want {\"name\":\"projects/%s/messages/…\"}", body, project)
		}
	})
	t.Run("unknown paths and methods", func(t *testing.T) {
		for _, c := range []struct{ method, path string }{
			{"GET", sendPath}, {"POST", "/v1/projects/" + project + "/messages:batchSend"}, {"POST", "/v2/nothing"},
		} {
			if status, _, _ := rawSend(t, srv, ts, c.method, c.path, `{}`); status != 404 {
				t.Errorf("%s %s: got %d, want 404", c.method, c.path, status)
			}
		}
	})
}

func TestQuotaPerProject(t *testing.T) {
	// The quota is per clock minute: start well inside one.
	if s := time.Now().Second(); s >= 55 {
		time.Sleep(time.Duration(61-s) * time.Second)
	}
	srv, mc, saJSON := setup(t, fcm.Options{QuotaPerMinute: 3})
	for i := 0; i < 3; i++ {
		if _, err := mc.Send(context.Background(), msg("device-1")); err != nil {
			t.Fatalf("send %d within quota: %v", i+1, err)
		}
	}
	_, err := mc.Send(context.Background(), msg("device-1"))
	checkOnly(t, err, fcm.ErrQuotaExceeded)
	if !errorutils.IsResourceExhausted(err) {
		t.Errorf("got %v, want RESOURCE_EXHAUSTED", err)
	}
	res := errorutils.HTTPResponse(err)
	if res == nil || res.Header.Get("Retry-After") == "" {
		t.Errorf("got response %v, want a Retry-After header", res)
	}

	// Another project has its own quota.
	other, _, err := srv.NewServiceAccount("project-two")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newMessaging(t, srv, other, "project-two").Send(context.Background(), msg("device-1")); err != nil {
		t.Errorf("other project: got %v, want success", err)
	}
	srv.SetQuota(100)
	if _, err := mc.Send(context.Background(), msg("device-1")); err != nil {
		t.Errorf("after raising the quota: got %v, want success", err)
	}
	_ = saJSON
}

func TestAvailabilitySwitch(t *testing.T) {
	srv, mc, _ := setup(t, fcm.Options{})
	if err := srv.SetFaults(fcm.Faults{RetryAfter: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	srv.SetAvailable(false)
	_, err := mc.Send(context.Background(), msg("device-1"))
	checkOnly(t, err, fcm.ErrUnavailable)

	// With a short Retry-After, firebase retries the 503 itself and gets
	// through once the gateway is back.
	if err := srv.SetFaults(fcm.Faults{}); err != nil {
		t.Fatal(err)
	}
	go func() {
		// Well before firebase's retry, which waits the 1 s Retry-After.
		time.Sleep(500 * time.Millisecond)
		srv.SetAvailable(true)
	}()
	if _, err := mc.Send(context.Background(), msg("device-1")); err != nil {
		t.Errorf("send while coming back: got %v, want success after a retry", err)
	}
	c := srv.Count()
	if c.Delivered != 1 || c.Rejected[fcm.ErrUnavailable] < 2 {
		t.Errorf("got counts %+v, want 1 delivered after at least 2 UNAVAILABLE", c)
	}
}

func TestFaultsDeterministic(t *testing.T) {
	run := func(seed int64) (string, fcm.Counts) {
		srv, mc, _ := setup(t, fcm.Options{Seed: seed})
		// No 503 here: firebase would retry it and blur the sequence.
		if err := srv.SetFaults(fcm.Faults{TooManyRequestsRate: 0.2, InternalErrorRate: 0.2}); err != nil {
			t.Fatal(err)
		}
		var out []string
		for i := 0; i < 100; i++ {
			_, err := mc.Send(context.Background(), msg("device-1"))
			switch {
			case err == nil:
				out = append(out, "ok")
			case messaging.IsQuotaExceeded(err):
				out = append(out, "429")
			case messaging.IsInternal(err):
				out = append(out, "500")
			default:
				out = append(out, err.Error())
			}
		}
		return strings.Join(out, ","), srv.Count()
	}
	a, counts := run(7)
	b, _ := run(7)
	c, _ := run(8)
	if a != b {
		t.Errorf("same seed, different outcomes:\n%s\n%s", a, b)
	}
	if a == c {
		t.Errorf("seeds 7 and 8 gave the same outcomes %s", a)
	}
	if counts.Rejected[fcm.ErrQuotaExceeded] == 0 || counts.Rejected[fcm.ErrInternal] == 0 || counts.Delivered < 40 {
		t.Errorf("got counts %+v, want some of each and mostly delivered", counts)
	}
}

func TestConnectionDropsRecover(t *testing.T) {
	for _, mode := range []string{"goaway", "close"} {
		t.Run(mode, func(t *testing.T) {
			srv, mc, _ := setup(t, fcm.Options{})
			if err := srv.SetFaults(fcm.Faults{DropEvery: 3, DropMode: fault.DropMode(mode)}); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 9; i++ {
				if _, err := mc.Send(context.Background(), msg("device-1")); err != nil {
					t.Fatalf("send %d: got %v, want success (firebase retries network errors)", i+1, err)
				}
			}
			c := srv.Count()
			conns := map[uint64]bool{}
			for _, d := range srv.Received() {
				conns[d.ConnID] = true
			}
			if c.Delivered != 9 || len(conns) < 3 {
				t.Errorf("got %d delivered on %d connections (%d dropped), want 9 on at least 3", c.Delivered, len(conns), c.Dropped)
			}
			if mode == "close" && c.Dropped == 0 {
				t.Errorf("got no dropped requests, want some")
			}
		})
	}
}

func TestInspectionAndReset(t *testing.T) {
	srv, mc, _ := setup(t, fcm.Options{MaxLog: 3})
	for i := 0; i < 5; i++ {
		if _, err := mc.Send(context.Background(), msg(fmt.Sprintf("device-%d", i%2))); err != nil {
			t.Fatal(err)
		}
	}
	if got := srv.Received(); len(got) != 3 || got[0].Token != "device-0" || got[2].Token != "device-0" {
		t.Errorf("got %d retained (%v), want the last 3 in order", len(got), got)
	}
	if got := len(srv.ReceivedFor("device-1")); got != 1 {
		t.Errorf("got %d retained for device-1, want 1", got)
	}
	if c := srv.Count(); c.Delivered != 5 {
		t.Errorf("got %d delivered, want 5 despite the bounded log", c.Delivered)
	}
	srv.Reset()
	if got, c := srv.Received(), srv.Count(); len(got) != 0 || c.Received != 0 || c.Delivered != 0 {
		t.Errorf("after Reset got %d retained and %+v, want nothing", len(got), c)
	}
}

func TestAdminAPI(t *testing.T) {
	srv := startServer(t, fcm.Options{})
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
	status, saJSON := call("POST", "/_emulator/service-accounts", `{"project_id":"`+project+`"}`)
	if status != 200 {
		t.Fatalf("create service account: got %d %s", status, saJSON)
	}
	calls := []struct {
		method, path, body string
		wantStatus         int
	}{
		{"POST", "/_emulator/service-accounts", `{}`, 400},
		{"POST", "/_emulator/service-accounts", `{"project_id":"p","client_email":"x@y"}`, 400},
		{"POST", "/_emulator/service-accounts", `{"project_id":"p","client_email":"x@y","public_key_pem":"junk"}`, 400},
		{"POST", "/_emulator/tokens/unregistered", `{"token":"gone"}`, 200},
		{"POST", "/_emulator/tokens/unregistered", `{}`, 400},
		{"POST", "/_emulator/tokens/outcome", `{"token":"mismatch","error_code":"SENDER_ID_MISMATCH"}`, 200},
		{"POST", "/_emulator/tokens/outcome", `{"token":"x","error_code":"NOPE"}`, 400},
		{"PUT", "/_emulator/quota", `{"per_minute":0}`, 400},
		{"PUT", "/_emulator/quota", `{"per_minute":1000}`, 200},
		{"PUT", "/_emulator/faults", `{"unavailable_rate":-1}`, 400},
		{"PUT", "/_emulator/faults", `{"latency":"1ms"}`, 200},
		{"PUT", "/_emulator/available", `{"available":true}`, 200},
		{"GET", "/_emulator/", ``, 200},
	}
	for _, cl := range calls {
		if status, body := call(cl.method, cl.path, cl.body); status != cl.wantStatus {
			t.Errorf("%s %s %s: got %d %s, want %d", cl.method, cl.path, cl.body, status, body, cl.wantStatus)
		}
	}
	if got := srv.Quota(); got != 1000 {
		t.Errorf("got quota %d, want 1000", got)
	}

	mc := newMessaging(t, srv, []byte(saJSON), project)
	ctx := context.Background()
	if _, err := mc.Send(ctx, msg("device-1")); err != nil {
		t.Errorf("send with the admin-made service account: %v", err)
	}
	_, err := mc.Send(ctx, msg("gone"))
	checkOnly(t, err, fcm.ErrUnregistered)
	_, err = mc.Send(ctx, msg("mismatch"))
	checkOnly(t, err, fcm.ErrSenderIDMismatch)

	status, body := call("GET", "/_emulator/received?token=device-1", ``)
	var received []struct {
		Token   string
		Status  int
		Message map[string]any
	}
	if err := json.Unmarshal([]byte(body), &received); status != 200 || err != nil || len(received) != 1 {
		t.Fatalf("received: got %d %s (%v), want one delivery", status, body, err)
	}
	if received[0].Status != 200 || received[0].Message["token"] != "device-1" {
		t.Errorf("got %+v, want the message as JSON", received[0])
	}
	status, body = call("GET", "/_emulator/counts", ``)
	var counts struct {
		Received, Delivered int64
		TokensIssued        int64 `json:"tokens_issued"`
		Rejected            map[string]int64
	}
	if err := json.Unmarshal([]byte(body), &counts); status != 200 || err != nil {
		t.Fatalf("counts: %d %s %v", status, body, err)
	}
	if counts.Received != 3 || counts.Delivered != 1 || counts.TokensIssued != 1 || counts.Rejected["UNREGISTERED"] != 1 {
		t.Errorf("got counts %+v, want 3 received, 1 delivered, 1 token, 1 UNREGISTERED", counts)
	}
	if status, _ := call("POST", "/_emulator/access-tokens/revoke", ``); status != 200 {
		t.Errorf("revoke: got %d, want 200", status)
	}
	if _, err := mc.Send(ctx, msg("device-1")); !errorutils.IsUnauthenticated(err) {
		t.Errorf("after revoking: got %v, want UNAUTHENTICATED", err)
	}
}
