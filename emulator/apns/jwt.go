package apns

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// connState is what the emulator remembers about one HTTP/2 connection.
type connState struct {
	mu   sync.Mutex
	team string // bound on the first valid provider token; Apple serves one team per connection

	// updates holds when the connection switched to a different provider
	// token, for TooManyProviderTokenUpdates; guarded by mu.
	updates []time.Time

	// last is the provider token most recently verified on this
	// connection. apns2 sends the same JWT for about 50 minutes, so almost
	// every request is a string comparison instead of an ECDSA verify.
	last atomic.Pointer[verifiedToken]
}

type verifiedToken struct {
	raw  string
	team string
	kid  string
	iat  int64
	gen  uint64 // Server.credGen at verification
}

// authenticate checks the authorization header values and returns the
// verified token, or the APNs reason to refuse the request with.
func (s *Server) authenticate(cs *connState, values []string, now time.Time) (*verifiedToken, string) {
	switch len(values) {
	case 0:
		return nil, ReasonMissingProviderToken
	case 1:
	default:
		return nil, ReasonDuplicateHeaders
	}
	raw := values[0]
	if len(raw) < 7 || !strings.EqualFold(raw[:7], "bearer ") {
		return nil, ReasonMissingProviderToken
	}
	raw = strings.TrimSpace(raw[7:])
	if raw == "" {
		return nil, ReasonMissingProviderToken
	}

	v := cs.last.Load()
	if v == nil || v.raw != raw || v.gen != s.credGen.Load() {
		var reason string
		if v, reason = s.verifyJWT(raw, now); reason != "" {
			return nil, reason
		}
		cs.mu.Lock()
		if cs.team != "" && cs.team != v.team {
			cs.mu.Unlock()
			// Apple answers a second team's token on a connection with
			// 403 InvalidProviderToken.
			return nil, ReasonInvalidProviderToken
		}
		if prev := cs.last.Load(); prev != nil && prev.raw != v.raw && s.maxTokenUpdates >= 0 {
			// Apple: "APNs reports an error if you recreate your tokens
			// more than once every 20 minutes"; in practice a few
			// switches are tolerated, then the connection is refused
			// new tokens for a while.
			recent := cs.updates[:0]
			for _, t := range cs.updates {
				if now.Sub(t) < tokenUpdateWindow {
					recent = append(recent, t)
				}
			}
			cs.updates = recent
			if len(recent) >= s.maxTokenUpdates {
				cs.mu.Unlock()
				return nil, ReasonTooManyProviderTokenUpdates
			}
			cs.updates = append(cs.updates, now)
		}
		cs.team = v.team
		cs.last.Store(v)
		cs.mu.Unlock()
	}
	// Checked on every request: a cached token goes stale after an hour.
	if now.Unix()-v.iat > maxTokenAge {
		return nil, ReasonExpiredProviderToken
	}
	return v, ""
}

// verifyJWT fully verifies an ES256 provider token against the registered
// keys. It runs once per token per connection.
func (s *Server) verifyJWT(raw string, now time.Time) (*verifiedToken, string) {
	gen := s.credGen.Load() // before reading keys: a concurrent change re-verifies next time
	h, rest, ok1 := strings.Cut(raw, ".")
	c, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(sig, ".") {
		return nil, ReasonInvalidProviderToken
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	var claims struct {
		Iss string          `json:"iss"`
		Iat json.RawMessage `json:"iat"`
	}
	if !decodeSegment(h, &header) || !decodeSegment(c, &claims) {
		return nil, ReasonInvalidProviderToken
	}
	if header.Alg != "ES256" || header.Kid == "" || claims.Iss == "" {
		return nil, ReasonInvalidProviderToken
	}
	var iat int64
	if err := json.Unmarshal(claims.Iat, &iat); err != nil {
		return nil, ReasonInvalidProviderToken
	}
	sigBytes, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || len(sigBytes) != 64 {
		return nil, ReasonInvalidProviderToken
	}
	s.mu.RLock()
	pub := s.keys[keyRef{claims.Iss, header.Kid}]
	s.mu.RUnlock()
	if pub == nil {
		return nil, ReasonInvalidProviderToken
	}
	digest := sha256.Sum256([]byte(raw[:len(h)+1+len(c)]))
	r := new(big.Int).SetBytes(sigBytes[:32])
	sv := new(big.Int).SetBytes(sigBytes[32:])
	if !ecdsa.Verify(pub, digest[:], r, sv) {
		return nil, ReasonInvalidProviderToken
	}
	if iat > now.Unix()+maxTokenSkew {
		return nil, ReasonInvalidProviderToken
	}
	return &verifiedToken{raw: raw, team: claims.Iss, kid: header.Kid, iat: iat, gen: gen}, ""
}

func decodeSegment(seg string, v any) bool {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return false
	}
	return json.Unmarshal(b, v) == nil
}
