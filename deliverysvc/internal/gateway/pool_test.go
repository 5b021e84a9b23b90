package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pushmesh/pushmesh/deliverysvc/internal/delivery"
	"github.com/pushmesh/pushmesh/emulator/apns"
	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
)

// authRecorder records the authorization header of every request an apns2
// client makes, on top of the client's own transport. The emulator keeps
// neither the provider token nor a count of token changes in its log, so
// the wire is where the reuse of the JWT shows.
type authRecorder struct {
	base http.RoundTripper
	mu   *sync.Mutex
	seen map[string]int // authorization header -> requests
}

func (r *authRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.seen[req.Header.Get("Authorization")]++
	r.mu.Unlock()
	return r.base.RoundTrip(req)
}

func (r *authRecorder) CloseIdleConnections() {
	if c, ok := r.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// jwtIssuedAt returns the iat claim of a "bearer <JWT>" header.
func jwtIssuedAt(t *testing.T, header string) time.Time {
	t.Helper()
	parts := strings.Split(strings.TrimPrefix(header, "bearer "), ".")
	if len(parts) != 3 {
		t.Fatalf("authorization %q is not a bearer JWT", header)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Iat int64 `json:"iat"`
	}
	if err := json.Unmarshal(raw, &claims); err != nil {
		t.Fatal(err)
	}
	return time.Unix(claims.Iat, 0)
}

// An app's pushes spread round-robin over APNsConnections HTTP/2
// connections, no more, and every connection signs with one provider token.
func TestAPNsConnectionPool(t *testing.T) {
	e := start(t)
	for _, conns := range []int{1, 4} {
		t.Run(fmt.Sprintf("APNsConnections=%d", conns), func(t *testing.T) {
			e.apns.Reset()
			gw, err := New(Config{APNsURL: e.apns.URL(), ExtraCAPEM: e.gw.cfg.ExtraCAPEM, APNsConnections: conns})
			if err != nil {
				t.Fatal(err)
			}
			started := time.Now()
			s := openSender(t, gw, apnsKey, sandbox, e.apnsCreds(t, teamID, keyID, bundleID)).(*apnsSender)
			var mu sync.Mutex
			seen := map[string]int{}
			pool := s.pool(sandbox)
			if len(pool.clients) != conns {
				t.Fatalf("the pool has %d clients, want %d", len(pool.clients), conns)
			}
			for _, c := range pool.clients {
				c.HTTPClient.Transport = &authRecorder{base: c.HTTPClient.Transport, mu: &mu, seen: seen}
			}

			// Pushes in flight together (each held by the emulator for a
			// moment), in two bursts: the second reuses the connections and
			// the token of the first.
			if err := e.apns.SetFaults(apns.Faults{Latency: 20 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			defer e.apns.SetFaults(apns.Faults{})
			const perBurst = 200
			for burst := 0; burst < 2; burst++ {
				pushes := make([]delivery.Push, perBurst)
				for i := range pushes {
					pushes[i] = apnsPush(fmt.Sprintf("%064x", 0xb0000000+burst*perBurst+i))
				}
				for _, a := range s.Send(context.Background(), pushes) {
					if a.Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
						t.Fatalf("burst %d: got %v %q, want every push accepted", burst, a.Reason, a.Detail)
					}
				}
			}

			byConn := map[uint64]int{}
			for _, d := range e.apns.Received() {
				if d.Status != 200 {
					t.Errorf("APNs answered %d %s, want every push accepted", d.Status, d.Reason)
				}
				byConn[d.ConnID]++
			}
			if len(byConn) != conns {
				t.Errorf("pushes arrived on %d connections %v, want %d", len(byConn), byConn, conns)
			}
			for id, n := range byConn {
				if n != 2*perBurst/conns {
					t.Errorf("connection %d carried %d pushes, want %d (round-robin)", id, n, 2*perBurst/conns)
				}
			}

			mu.Lock()
			defer mu.Unlock()
			if len(seen) != 1 {
				t.Fatalf("the pushes carried %d different provider tokens, want one JWT reused", len(seen))
			}
			for header, n := range seen {
				if n != 2*perBurst {
					t.Errorf("the provider token was sent %d times, want %d", n, 2*perBurst)
				}
				if iat := jwtIssuedAt(t, header); iat.Before(started.Truncate(time.Second)) || iat.After(time.Now()) {
					t.Errorf("the provider token was issued at %v, want while the test ran (from %v)", iat, started)
				}
			}
		})
	}
}

// signES256 signs an APNs provider token (ES256 JWT) issued at iat.
func signES256(t *testing.T, key *ecdsa.PrivateKey, team, kid string, iat time.Time) string {
	t.Helper()
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": kid})
	claims, _ := json.Marshal(map[string]any{"iss": team, "iat": iat.Unix()})
	signed := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + enc.EncodeToString(sig)
}

// Apple judges a provider token's age by its own clock. With ours behind
// it, apns2's 50-minute reuse reaches the hour Apple allows and Apple
// answers ExpiredProviderToken: the sender signs a fresh token once and
// resends, rather than the app being suspended over a clock.
func TestAPNsRenewsAProviderTokenAppleFindsExpired(t *testing.T) {
	e := start(t)
	c := e.apnsCreds(t, teamID, keyID, bundleID)
	s := openSender(t, e.gw, apnsKey, sandbox, c).(*apnsSender)
	// A token Apple finds 61 minutes old, which apns2 believes fresh.
	s.token.Lock()
	s.token.Bearer = signES256(t, c.APNs.Key, teamID, keyID, time.Now().Add(-61*time.Minute))
	s.token.IssuedAt = time.Now().Unix()
	s.token.Unlock()

	tok := fmt.Sprintf("%064x", 42)
	a := s.Send(context.Background(), []delivery.Push{apnsPush(tok)})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_UNSPECIFIED {
		t.Fatalf("push: %v %s, want sent with a fresh provider token", a.Reason, a.Detail)
	}
	got := e.apns.ReceivedFor(tok)
	if len(got) != 2 || got[0].Reason != apns.ReasonExpiredProviderToken || got[1].Status != http.StatusOK {
		t.Errorf("APNs saw %+v, want one ExpiredProviderToken then one 200", got)
	}
	// Still expired with a fresh token: a credential error, once.
	e.apns.Reset()
	if err := e.apns.SetTokenOutcome(tok, apns.ReasonExpiredProviderToken); err != nil {
		t.Fatal(err)
	}
	a = s.Send(context.Background(), []delivery.Push{apnsPush(tok)})[0]
	if a.Reason != commonv1.FailureReason_FAILURE_REASON_INVALID_CREDENTIALS || len(e.apns.ReceivedFor(tok)) != 2 {
		t.Errorf("refused again with a fresh token: %v after %d requests, want INVALID_CREDENTIALS after 2", a.Reason, len(e.apns.ReceivedFor(tok)))
	}
}
