// Package apns emulates Apple's APNs provider API (HTTP/2 over TLS) for tests
// and local runs: token (JWT) authentication, Apple's request validation and
// error bodies, per-token outcomes, inspection of what was received, and
// deterministic fault injection.
//
// Point github.com/sideshow/apns2 at it with client.Host = srv.URL() and
// client.HTTPClient = srv.CA().HTTP2Client().
package apns

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pushmesh/pushmesh/emulator/fault"
	"github.com/pushmesh/pushmesh/emulator/internal/httpsrv"
	"github.com/pushmesh/pushmesh/emulator/internal/ringlog"
	"github.com/pushmesh/pushmesh/emulator/tlsca"
)

// Faults configures injected failures; see package fault.
type Faults = fault.Faults

// Options configures Start. The zero value is usable.
type Options struct {
	// Addr is the listen address; default 127.0.0.1:0 (a free port).
	Addr string
	// CA issues the server certificate; default a new CA. Share one CA
	// between the APNs and FCM emulators so one CA file serves both.
	CA *tlsca.CA
	// Seed makes fault injection repeatable.
	Seed int64
	// Logger receives admin actions (info) and rejected pushes (debug);
	// default: discard. Tokens and credentials are never logged whole.
	Logger *slog.Logger
	// MaxLog bounds the inspection log; default 1,000,000 entries. Older
	// entries are dropped; Count stays exact.
	MaxLog int
	// MaxTokenUpdates is how many times one connection may switch to a
	// different provider token within 20 minutes; the next switch is
	// answered 429 TooManyProviderTokenUpdates. 0 means
	// DefaultMaxTokenUpdates (2); negative disables the check. apns2
	// renews its token every 50 minutes and never hits it; a client that
	// signs a new token per request does, as it would with Apple.
	MaxTokenUpdates int
	// MaxConcurrentStreams is the SETTINGS_MAX_CONCURRENT_STREAMS each
	// connection advertises; 0 means httpsrv.MaxConcurrentStreams (1,000,
	// Apple's usual value). Apple lowers it to 1 on a connection after a
	// rejected push, until a push is accepted; Go's HTTP/2 server cannot
	// change it on an open connection, so this emulator does not model
	// that, but a low value here tests how a client queues for streams.
	MaxConcurrentStreams int
}

// Delivery is one request received on /3/device/, accepted or not.
type Delivery struct {
	Time   time.Time
	ConnID uint64 // connection it arrived on, numbered from 1
	Token  string // device token from the path, as sent

	// Request headers, verbatim ("" when absent).
	Topic      string
	PushType   string
	Priority   string
	Expiration string
	CollapseID string
	// ApnsID is the apns-id answered: the client's, or one generated.
	ApnsID string

	// TeamID and KeyID come from the verified provider token ("" when
	// authentication failed).
	TeamID string
	KeyID  string

	Payload []byte

	// Status is the HTTP status answered, 0 when the connection was
	// dropped instead (Reason is then ReasonConnectionDropped).
	Status int
	// Reason is the APNs reason answered, "" on success.
	Reason string
}

// ReasonConnectionDropped marks a Delivery whose connection the fault
// injector closed instead of answering. It never appears on the wire.
const ReasonConnectionDropped = "EmulatorConnectionDropped"

// Counts summarises what the emulator answered since start or Reset. Counts
// are exact even when the log has dropped old entries.
type Counts struct {
	Received int64            // every request on /3/device/
	Accepted int64            // answered 200
	Rejected map[string]int64 // by reason
	Dropped  int64            // connection dropped instead of answering
}

// Server is a running APNs emulator. All methods are safe for concurrent use.
type Server struct {
	ca     *tlsca.CA
	logger *slog.Logger
	http   *httpsrv.Server
	admin  http.Handler

	mu     sync.RWMutex
	keys   map[keyRef]*ecdsa.PublicKey
	topics map[string]map[string]bool // team ID -> bundle IDs
	tokens map[string]tokenOutcome    // lower-case device token -> outcome

	// credGen changes whenever a key is registered, so connections
	// re-verify provider tokens they had cached.
	credGen atomic.Uint64

	faults          *fault.Injector
	available       atomic.Bool
	maxTokenUpdates int

	log      *ringlog.Log[Delivery]
	received atomic.Int64
	accepted atomic.Int64
	dropped  atomic.Int64
	rejMu    sync.Mutex
	rejected map[string]int64
}

type keyRef struct{ team, kid string }

type tokenOutcome struct {
	status    int
	reason    string
	timestamp int64 // ms, for 410
}

// Start starts an emulator listening on opts.Addr.
func Start(opts Options) (*Server, error) {
	ca := opts.CA
	if ca == nil {
		var err error
		if ca, err = tlsca.New(); err != nil {
			return nil, fmt.Errorf("apns: %w", err)
		}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		ca:       ca,
		logger:   logger.With("emulator", "apns"),
		keys:     make(map[keyRef]*ecdsa.PublicKey),
		topics:   make(map[string]map[string]bool),
		tokens:   make(map[string]tokenOutcome),
		faults:   fault.NewInjector(opts.Seed),
		log:      ringlog.New[Delivery](opts.MaxLog),
		rejected: make(map[string]int64),

		maxTokenUpdates: opts.MaxTokenUpdates,
	}
	if s.maxTokenUpdates == 0 {
		s.maxTokenUpdates = DefaultMaxTokenUpdates
	}
	s.available.Store(true)
	s.admin = s.adminHandler()
	hs, err := httpsrv.Start(httpsrv.Config{
		Addr:     opts.Addr,
		CA:       ca,
		Handler:  s,
		Logger:   s.logger,
		NewLocal: func() any { return new(connState) },

		MaxConcurrentStreams: opts.MaxConcurrentStreams,
	})
	if err != nil {
		return nil, fmt.Errorf("apns: %w", err)
	}
	s.http = hs
	s.logger.Info("APNs emulator listening", "url", hs.URL())
	return s, nil
}

// URL returns the base URL, https://127.0.0.1:PORT, for apns2's Client.Host.
func (s *Server) URL() string { return s.http.URL() }

// CA returns the CA whose certificate clients must trust.
func (s *Server) CA() *tlsca.CA { return s.ca }

// Close stops the emulator at once; requests in flight fail.
func (s *Server) Close() error { return s.http.Close() }

// Shutdown stops the emulator gracefully: HTTP/2 clients get a GOAWAY and
// in-flight requests may finish until ctx is done.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// RegisterKey registers a provider token signing key (the public half of a
// .p8 key) for a team. Registering the same team and key ID again replaces
// the key.
func (s *Server) RegisterKey(teamID, keyID string, pub *ecdsa.PublicKey) {
	s.mu.Lock()
	s.keys[keyRef{teamID, keyID}] = pub
	s.mu.Unlock()
	s.credGen.Add(1)
	s.logger.Info("registered provider key", "team", teamID, "key_id", keyID)
}

// RegisterTopic registers an app (bundle ID) as belonging to a team, which
// lets the team's provider tokens push to the bundle ID and its push-type
// suffixed topics (.voip, .complication, .push-type.liveactivity, …).
func (s *Server) RegisterTopic(teamID, bundleID string) {
	s.mu.Lock()
	if s.topics[teamID] == nil {
		s.topics[teamID] = make(map[string]bool)
	}
	s.topics[teamID][bundleID] = true
	s.mu.Unlock()
	s.logger.Info("registered topic", "team", teamID, "topic", bundleID)
}

// NewProviderKey generates a P-256 signing key (GenerateProviderKey),
// registers it for teamID and keyID, and returns it with its .p8 encoding.
func (s *Server) NewProviderKey(teamID, keyID string) (p8 []byte, key *ecdsa.PrivateKey, err error) {
	p8, key, err = GenerateProviderKey()
	if err != nil {
		return nil, nil, err
	}
	s.RegisterKey(teamID, keyID, &key.PublicKey)
	return p8, key, nil
}

// GenerateProviderKey generates a P-256 signing key and returns it with its
// .p8 (PKCS #8 PEM) encoding, which apns2's token.AuthKeyFromBytes reads:
// what Apple's developer portal hands out.
func GenerateProviderKey() (p8 []byte, key *ecdsa.PrivateKey, err error) {
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("apns: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("apns: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), key, nil
}

// MarkUnregistered makes pushes to token answer 410 Unregistered with the
// given time as the timestamp (milliseconds); a zero time means now.
func (s *Server) MarkUnregistered(token string, at time.Time) {
	if at.IsZero() {
		at = time.Now()
	}
	s.setOutcome(token, tokenOutcome{status: http.StatusGone, reason: ReasonUnregistered, timestamp: at.UnixMilli()})
}

// SetTokenOutcome makes pushes to token answer with an APNs reason, e.g.
// BadDeviceToken, DeviceTokenNotForTopic, ExpiredToken, TooManyRequests; the
// HTTP status follows from the reason as Apple documents it. An empty reason
// clears the token's outcome (and a MarkUnregistered). Outcomes apply only to
// pushes that passed authentication and validation.
func (s *Server) SetTokenOutcome(token, reason string) error {
	if reason == "" {
		s.mu.Lock()
		delete(s.tokens, strings.ToLower(token))
		s.mu.Unlock()
		return nil
	}
	status, ok := reasonStatus[reason]
	if !ok {
		return fmt.Errorf("apns: unknown reason %q", reason)
	}
	o := tokenOutcome{status: status, reason: reason}
	if status == http.StatusGone {
		o.timestamp = time.Now().UnixMilli()
	}
	s.setOutcome(token, o)
	return nil
}

func (s *Server) setOutcome(token string, o tokenOutcome) {
	s.mu.Lock()
	s.tokens[strings.ToLower(token)] = o
	s.mu.Unlock()
	s.logger.Info("token outcome set", "token", shortToken(token), "reason", o.reason)
}

// SetFaults replaces the injected faults and restarts their sequence.
func (s *Server) SetFaults(f Faults) error {
	if err := s.faults.Set(f); err != nil {
		return fmt.Errorf("apns: %w", err)
	}
	s.logger.Info("faults set", "faults", f)
	return nil
}

// Faults returns the faults in force.
func (s *Server) Faults() Faults { return s.faults.Faults() }

// SetAvailable switches the gateway off (false) and on again. While off,
// every push is answered 503 ServiceUnavailable with a Retry-After header;
// the listener stays up, so clients keep their connections and recover as
// soon as it is switched on again. The admin API keeps working.
func (s *Server) SetAvailable(up bool) {
	s.available.Store(up)
	s.logger.Info("availability set", "available", up)
}

// Received returns a copy of the retained log, oldest first. The Payload
// byte slices are shared with the log: read them, do not modify them. On a
// full log this copies up to MaxLog entries under the log's lock; prefer
// ReceivedFor (or the admin API's limit) while traffic is flowing.
func (s *Server) Received() []Delivery { return s.log.Snapshot(nil, 0) }

// ReceivedFor returns the retained requests for one device token (compared
// case-insensitively), oldest first.
func (s *Server) ReceivedFor(token string) []Delivery {
	return s.log.Snapshot(func(d *Delivery) bool { return strings.EqualFold(d.Token, token) }, 0)
}

// Count returns the counters since start or Reset.
func (s *Server) Count() Counts {
	c := Counts{
		Received: s.received.Load(),
		Accepted: s.accepted.Load(),
		Dropped:  s.dropped.Load(),
		Rejected: make(map[string]int64),
	}
	s.rejMu.Lock()
	for k, v := range s.rejected {
		c.Rejected[k] = v
	}
	s.rejMu.Unlock()
	return c
}

// Reset empties the log and zeroes the counters. Keys, topics, token
// outcomes, faults and availability are kept.
func (s *Server) Reset() {
	s.log.Reset()
	s.received.Store(0)
	s.accepted.Store(0)
	s.dropped.Store(0)
	s.rejMu.Lock()
	clear(s.rejected)
	s.rejMu.Unlock()
}

// record logs d and counts it.
func (s *Server) record(d Delivery) {
	s.received.Add(1)
	switch {
	case d.Status == http.StatusOK:
		s.accepted.Add(1)
	case d.Status == 0:
		s.dropped.Add(1)
	default:
		s.rejMu.Lock()
		s.rejected[d.Reason]++
		s.rejMu.Unlock()
		s.logger.Debug("push rejected", "token", shortToken(d.Token), "status", d.Status, "reason", d.Reason)
	}
	s.log.Append(d)
}

// shortToken keeps logs useful without writing whole device tokens.
func shortToken(t string) string {
	if len(t) <= 8 {
		return t
	}
	return t[:8] + "…"
}
