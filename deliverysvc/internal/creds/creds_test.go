package creds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/pushmesh/pushmesh/servicekit/fault"
)

func pkcs8PEM(t *testing.T, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// violations returns the fields of a validation error.
func violations(t *testing.T, err error) map[string]string {
	t.Helper()
	var ve *fault.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v (%T), want a *fault.ValidationError", err, err)
	}
	out := map[string]string{}
	for _, v := range ve.Violations {
		out[v.Field] = v.Description
	}
	return out
}

func TestParseAPNs(t *testing.T) {
	good := pkcs8PEM(t, p256(t))
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	ecDER, _ := x509.MarshalECPrivateKey(p256(t))
	sec1 := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))

	c, err := ParseAPNs(good, "ABCDE12345", "TEAM123456", "credentials.apns_token")
	if err != nil {
		t.Fatalf("valid credentials: %v", err)
	}
	if c.Key == nil || c.KeyID != "ABCDE12345" || c.TeamID != "TEAM123456" {
		t.Errorf("got %+v, want the parsed key and ids", c)
	}

	for _, tc := range []struct {
		name, pem, keyID, teamID string
		field                    string
	}{
		{"missing key", "", "ABCDE12345", "TEAM123456", "credentials.apns_token.private_key_pem"},
		{"not PEM", "hello", "ABCDE12345", "TEAM123456", "credentials.apns_token.private_key_pem"},
		{"SEC 1 instead of PKCS 8", sec1, "ABCDE12345", "TEAM123456", "credentials.apns_token.private_key_pem"},
		{"P-384", pkcs8PEM(t, p384), "ABCDE12345", "TEAM123456", "credentials.apns_token.private_key_pem"},
		{"RSA", pkcs8PEM(t, rsaKey), "ABCDE12345", "TEAM123456", "credentials.apns_token.private_key_pem"},
		{"two blocks", good + good, "ABCDE12345", "TEAM123456", "credentials.apns_token.private_key_pem"},
		{"missing key id", good, "", "TEAM123456", "credentials.apns_token.key_id"},
		{"short key id", good, "ABC", "TEAM123456", "credentials.apns_token.key_id"},
		{"lower-case team id", good, "ABCDE12345", "team123456", "credentials.apns_token.team_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAPNs(tc.pem, tc.keyID, tc.teamID, "credentials.apns_token")
			got := violations(t, err)
			if _, ok := got[tc.field]; !ok || len(got) != 1 {
				t.Errorf("got violations %v, want exactly %s", got, tc.field)
			}
			// A refusal must never quote the key.
			if body := pemBody(good); strings.Contains(err.Error(), body[:20]) {
				t.Errorf("error quotes the key: %v", err)
			}
		})
	}
}

func pemBody(p string) string {
	lines := strings.Split(strings.TrimSpace(p), "\n")
	return strings.Join(lines[1:len(lines)-1], "")
}

func testServiceAccount(t *testing.T, change func(map[string]any)) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sa := map[string]any{
		"type":           "service_account",
		"project_id":     "proj-1",
		"private_key_id": "abc",
		"private_key":    pkcs8PEM(t, key),
		"client_email":   "sender@proj-1.iam.gserviceaccount.com",
		"token_uri":      "https://oauth2.googleapis.com/token",
	}
	if change != nil {
		change(sa)
	}
	b, err := json.Marshal(sa)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseFCM(t *testing.T) {
	const field = "credentials.fcm_service_account.service_account_json"
	c, err := ParseFCM(testServiceAccount(t, nil), field)
	if err != nil {
		t.Fatalf("valid service account: %v", err)
	}
	if c.ProjectID != "proj-1" || c.ClientEmail != "sender@proj-1.iam.gserviceaccount.com" || c.Key == nil {
		t.Errorf("got %+v, want the project, email and key", c)
	}
	if _, err := ParseFCM(testServiceAccount(t, func(m map[string]any) { m["token_uri"] = "http://127.0.0.1:9443/token" }), field); err != nil {
		t.Errorf("http token_uri on loopback: got %v, want accepted", err)
	}
	for _, id := range []string{"p", "acme-push-7", "example.com:legacy-project", "Demo_Project"} {
		if _, err := ParseFCM(testServiceAccount(t, func(m map[string]any) { m["project_id"] = id }), field); err != nil {
			t.Errorf("project id %q: got %v, want accepted", id, err)
		}
	}

	ecKey := pkcs8PEM(t, p256(t))
	for _, tc := range []struct {
		name   string
		json   string
		phrase string
	}{
		{"empty", "", "required"},
		{"not JSON", "{not json", "not a JSON object"},
		{"wrong type", testServiceAccount(t, func(m map[string]any) { m["type"] = "authorized_user" }), `"type"`},
		{"no project", testServiceAccount(t, func(m map[string]any) { delete(m, "project_id") }), `"project_id" is required`},
		{"project id with a path", testServiceAccount(t, func(m map[string]any) { m["project_id"] = "p/../../_emulator/faults" }), `"project_id": byte 1 is '/'`},
		{"project id with a query", testServiceAccount(t, func(m map[string]any) { m["project_id"] = "p?x=" }), `"project_id": byte 1 is '?'`},
		{"project id with an escape", testServiceAccount(t, func(m map[string]any) { m["project_id"] = "p%2F.." }), `"project_id": byte 1 is '%'`},
		{"project id as a dot segment", testServiceAccount(t, func(m map[string]any) { m["project_id"] = ".." }), `"project_id": byte 0 is '.'`},
		{"project id too long", testServiceAccount(t, func(m map[string]any) { m["project_id"] = strings.Repeat("p", 129) }), `"project_id": is 129 bytes`},
		{"no email", testServiceAccount(t, func(m map[string]any) { delete(m, "client_email") }), `"client_email" is required`},
		{"no token uri", testServiceAccount(t, func(m map[string]any) { delete(m, "token_uri") }), `"token_uri" is required`},
		{"http token uri", testServiceAccount(t, func(m map[string]any) { m["token_uri"] = "http://example.com/token" }), "https"},
		{"no key", testServiceAccount(t, func(m map[string]any) { delete(m, "private_key") }), `"private_key" is required`},
		{"EC key", testServiceAccount(t, func(m map[string]any) { m["private_key"] = ecKey }), "RSA"},
		{"garbage key", testServiceAccount(t, func(m map[string]any) {
			m["private_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
		}), "not a valid private key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFCM(tc.json, field)
			got := violations(t, err)
			desc, ok := got[field]
			if !ok || !strings.Contains(err.Error(), tc.phrase) {
				t.Errorf("got %v (%q), want a violation of %s containing %q", got, desc, field, tc.phrase)
			}
		})
	}
}

func TestInfoFingerprint(t *testing.T) {
	k1, k2 := p256(t), p256(t)
	a1, err := ParseAPNs(pkcs8PEM(t, k1), "ABCDE12345", "TEAM123456", "c")
	if err != nil {
		t.Fatal(err)
	}
	a1again, _ := ParseAPNs(pkcs8PEM(t, k1), "ABCDE12345", "TEAM123456", "c")
	a2, _ := ParseAPNs(pkcs8PEM(t, k2), "ABCDE12345", "TEAM123456", "c")
	i1, i1again, i2 := Credentials{APNs: a1}.Info(), Credentials{APNs: a1again}.Info(), Credentials{APNs: a2}.Info()
	if len(i1.Fingerprint) != 32 {
		t.Errorf("fingerprint %q: got %d hex digits, want 32", i1.Fingerprint, len(i1.Fingerprint))
	}
	if i1.Fingerprint != i1again.Fingerprint {
		t.Errorf("same key: got fingerprints %s and %s, want equal", i1.Fingerprint, i1again.Fingerprint)
	}
	if i1.Fingerprint == i2.Fingerprint {
		t.Errorf("different keys: got the same fingerprint %s", i1.Fingerprint)
	}
	if i1.KeyID != "ABCDE12345" || i1.TeamID != "TEAM123456" {
		t.Errorf("got %+v, want the key and team ids", i1)
	}
}
