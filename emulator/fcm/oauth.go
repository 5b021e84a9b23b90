package fcm

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

const (
	jwtBearerGrant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	// googleTokenURL is also accepted as an audience, for assertions made
	// for Google and redirected here.
	googleTokenURL = "https://oauth2.googleapis.com/token"
	// accessTokenTTL is what Google grants service accounts.
	accessTokenTTL = time.Hour
	// Google refuses assertions valid for more than an hour.
	maxAssertionLifetime = time.Hour
	clockSkew            = 5 * time.Minute
)

// token serves the OAuth2 token endpoint: a form POST with a JWT-bearer
// grant, answered with an opaque access token, or with Google's
// {"error","error_description"} on failure.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "token endpoint accepts POST only")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "unreadable form body")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != jwtBearerGrant {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "Invalid grant_type: "+gt)
		return
	}
	assertion := r.PostForm.Get("assertion")
	if assertion == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "Missing required parameter: assertion")
		return
	}
	grant, errCode, desc := s.verifyAssertion(assertion, time.Now())
	if errCode != "" {
		s.logger.Debug("token request refused", "error", errCode, "description", desc)
		oauthError(w, http.StatusBadRequest, errCode, desc)
		return
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		oauthError(w, http.StatusInternalServerError, "internal_failure", "random source failed")
		return
	}
	tok := "ya29.emu." + base64.RawURLEncoding.EncodeToString(raw[:])
	now := time.Now()
	grant.expiry = now.Add(accessTokenTTL)
	s.mu.Lock()
	if len(s.access) >= 10_000 {
		// Keep the table bounded for long-running emulators.
		for k, v := range s.access {
			if now.After(v.expiry) {
				delete(s.access, k)
			}
		}
	}
	s.access[tok] = grant
	s.mu.Unlock()
	s.issued.Add(1)
	s.logger.Info("access token issued", "client_email", grant.email, "project", grant.project)

	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok,
		"expires_in":   int(accessTokenTTL / time.Second),
		"token_type":   "Bearer",
	})
}

// verifyAssertion checks an RS256 service-account assertion and returns the
// grant, or Google's OAuth2 error code and description.
func (s *Server) verifyAssertion(assertion string, now time.Time) (accessToken, string, string) {
	const badJWT = "invalid_grant"
	parts := strings.Split(assertion, ".")
	if len(parts) != 3 {
		return accessToken{}, badJWT, "Invalid JWT: not a compact JWS"
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	var claims struct {
		Iss   string `json:"iss"`
		Scope string `json:"scope"`
		Aud   string `json:"aud"`
		Exp   int64  `json:"exp"`
		Iat   int64  `json:"iat"`
	}
	if !decodeSegment(parts[0], &header) || !decodeSegment(parts[1], &claims) {
		return accessToken{}, badJWT, "Invalid JWT: cannot decode header or claims"
	}
	if header.Alg != "RS256" {
		return accessToken{}, badJWT, "Invalid JWT: algorithm must be RS256"
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return accessToken{}, badJWT, "Invalid JWT Signature."
	}
	s.mu.RLock()
	sa := s.accounts[claims.Iss]
	var keys []*rsa.PublicKey
	var project string
	if sa != nil {
		keys = append(keys, sa.keys...)
		project = sa.project
	}
	s.mu.RUnlock()
	if sa == nil {
		return accessToken{}, badJWT, "Invalid grant: account not found"
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	verified := false
	for _, k := range keys {
		if rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return accessToken{}, badJWT, "Invalid JWT Signature."
	}
	if claims.Aud != s.TokenURL() && claims.Aud != googleTokenURL {
		return accessToken{}, badJWT, "Invalid JWT: Failed audience check. The expected value was " + s.TokenURL() + " but the given value was " + claims.Aud
	}
	iat, exp := time.Unix(claims.Iat, 0), time.Unix(claims.Exp, 0)
	if claims.Iat == 0 || claims.Exp == 0 || iat.After(now.Add(clockSkew)) || !exp.After(now) ||
		exp.Sub(iat) > maxAssertionLifetime || exp.Before(iat) {
		return accessToken{}, badJWT, "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."
	}
	scopes := strings.Fields(claims.Scope)
	if len(scopes) == 0 {
		return accessToken{}, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
	}
	return accessToken{email: claims.Iss, project: project, scopes: scopes}, "", ""
}

func decodeSegment(seg string, v any) bool {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return false
	}
	return json.Unmarshal(b, v) == nil
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// authorize checks the bearer access token of a send to project.
func (s *Server) authorize(values []string, project string, now time.Time) (string, *reply) {
	const credsMsg = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
	if len(values) == 0 || values[0] == "" {
		return "", &reply{status: http.StatusUnauthorized, rpc: statusUnauthenticated, infoReason: "CREDENTIALS_MISSING",
			message: "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."}
	}
	v := values[0]
	if len(v) < 7 || !strings.EqualFold(v[:7], "bearer ") {
		return "", &reply{status: http.StatusUnauthorized, rpc: statusUnauthenticated, message: credsMsg, infoReason: "ACCESS_TOKEN_TYPE_UNSUPPORTED"}
	}
	s.mu.RLock()
	grant, ok := s.access[strings.TrimSpace(v[7:])]
	s.mu.RUnlock()
	if !ok {
		return "", &reply{status: http.StatusUnauthorized, rpc: statusUnauthenticated, message: credsMsg, infoReason: "ACCESS_TOKEN_TYPE_UNSUPPORTED"}
	}
	if now.After(grant.expiry) {
		return "", &reply{status: http.StatusUnauthorized, rpc: statusUnauthenticated, message: credsMsg, infoReason: "ACCESS_TOKEN_EXPIRED"}
	}
	scoped := false
	for _, sc := range grant.scopes {
		if sc == ScopeFirebaseMessaging || sc == ScopeCloudPlatform {
			scoped = true
			break
		}
	}
	if !scoped {
		return grant.email, &reply{status: http.StatusForbidden, rpc: statusPermissionDenied, message: "Request had insufficient authentication scopes.", infoReason: "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}
	}
	if grant.project != project {
		// The emulator does not model IAM grants across projects: a
		// service account may send for its own project only.
		return grant.email, &reply{status: http.StatusForbidden, rpc: statusPermissionDenied, infoReason: "IAM_PERMISSION_DENIED",
			message: "Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/" + project + "' (or it may not exist)."}
	}
	return grant.email, nil
}
