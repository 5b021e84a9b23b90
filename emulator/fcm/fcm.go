// Package fcm emulates Firebase Cloud Messaging's HTTP v1 API for tests and
// local runs: the OAuth2 token endpoint a service-account JSON points at, the
// messages:send endpoint with FCM's validation and error bodies (including
// the FcmError detail firebase's messaging.IsUnregistered & co. read),
// per-token outcomes, a per-project quota, inspection, and deterministic
// fault injection.
//
// Point firebase.google.com/go/v4 at it with option.WithEndpoint(srv.URL() +
// "/v1") and an HTTP client that trusts srv.CA(), wrapped with oauth2 using a
// service-account JSON from NewServiceAccount.
package fcm

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
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

// DefaultQuotaPerMinute is FCM's default send quota per project.
const DefaultQuotaPerMinute = 600_000

// Scopes that allow sending: FCM accepts either.
const (
	ScopeFirebaseMessaging = "https://www.googleapis.com/auth/firebase.messaging"
	ScopeCloudPlatform     = "https://www.googleapis.com/auth/cloud-platform"
)

// Options configures Start. The zero value is usable.
type Options struct {
	// Addr is the listen address; default 127.0.0.1:0 (a free port).
	Addr string
	// CA issues the server certificate; default a new CA. Share one CA
	// between the APNs and FCM emulators so one CA file serves both.
	CA *tlsca.CA
	// Seed makes fault injection repeatable.
	Seed int64
	// Logger receives admin actions (info) and rejected sends (debug);
	// default: discard. Tokens and credentials are never logged whole.
	Logger *slog.Logger
	// QuotaPerMinute is the number of sends each project may make per
	// clock minute; default 600,000, FCM's default.
	QuotaPerMinute int
	// MaxLog bounds the inspection log; default 1,000,000 entries. Older
	// entries are dropped; Count stays exact.
	MaxLog int
}

// Delivery is one request received on messages:send, accepted or not.
type Delivery struct {
	Time    time.Time
	ConnID  uint64 // connection it arrived on, numbered from 1
	Project string // from the URL

	// Target, as sent: exactly one is set on a valid message.
	Token     string
	Topic     string
	Condition string

	// ValidateOnly marks a dry run: validated, never delivered.
	ValidateOnly bool
	// Message is the "message" object as sent (the whole body when it did
	// not parse).
	Message []byte
	// ClientEmail is the service account behind the access token.
	ClientEmail string

	// Status is the HTTP status answered, 0 when the connection was
	// dropped instead (ErrorCode is then ErrorConnectionDropped).
	Status int
	// ErrorCode is the FcmError errorCode answered (UNREGISTERED, …), or
	// the RPC status for errors without one (UNAUTHENTICATED,
	// PERMISSION_DENIED, INVALID_ARGUMENT for malformed JSON); "" on
	// success.
	ErrorCode string
	// Name is the message name answered on success.
	Name string
}

// ErrorConnectionDropped marks a Delivery whose connection the fault
// injector closed instead of answering. It never appears on the wire.
const ErrorConnectionDropped = "EMULATOR_CONNECTION_DROPPED"

// Counts summarises what the emulator did since start or Reset. Counts are
// exact even when the log has dropped old entries.
type Counts struct {
	Received     int64            // every request on messages:send
	Delivered    int64            // accepted and not validate_only
	Validated    int64            // accepted validate_only (dry run) requests
	Rejected     map[string]int64 // by ErrorCode
	Dropped      int64            // connection dropped instead of answering
	TokensIssued int64            // OAuth2 access tokens granted
}

// Server is a running FCM emulator. All methods are safe for concurrent use.
type Server struct {
	ca     *tlsca.CA
	logger *slog.Logger
	http   *httpsrv.Server
	admin  http.Handler

	mu       sync.RWMutex
	accounts map[string]*serviceAccount // client email -> account
	access   map[string]accessToken     // access token -> grant
	tokens   map[string]string          // registration token -> FcmError code

	quotaMu  sync.Mutex
	quota    int
	windows  map[string]*quotaWindow // project -> current minute
	faults   *fault.Injector
	up       atomic.Bool
	msgSeq   atomic.Uint64
	log      *ringlog.Log[Delivery]
	received atomic.Int64
	deliver  atomic.Int64
	validate atomic.Int64
	dropped  atomic.Int64
	issued   atomic.Int64
	rejMu    sync.Mutex
	rejected map[string]int64
}

type serviceAccount struct {
	project string
	email   string
	keys    []*rsa.PublicKey
}

type accessToken struct {
	email   string
	project string
	scopes  []string
	expiry  time.Time
}

type quotaWindow struct {
	minute int64
	used   int
}

// Start starts an emulator listening on opts.Addr.
func Start(opts Options) (*Server, error) {
	ca := opts.CA
	if ca == nil {
		var err error
		if ca, err = tlsca.New(); err != nil {
			return nil, fmt.Errorf("fcm: %w", err)
		}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	quota := opts.QuotaPerMinute
	if quota <= 0 {
		quota = DefaultQuotaPerMinute
	}
	s := &Server{
		ca:       ca,
		logger:   logger.With("emulator", "fcm"),
		accounts: make(map[string]*serviceAccount),
		access:   make(map[string]accessToken),
		tokens:   make(map[string]string),
		quota:    quota,
		windows:  make(map[string]*quotaWindow),
		faults:   fault.NewInjector(opts.Seed),
		log:      ringlog.New[Delivery](opts.MaxLog),
		rejected: make(map[string]int64),
	}
	s.up.Store(true)
	s.admin = s.adminHandler()
	hs, err := httpsrv.Start(httpsrv.Config{Addr: opts.Addr, CA: ca, Handler: s, Logger: s.logger})
	if err != nil {
		return nil, fmt.Errorf("fcm: %w", err)
	}
	s.http = hs
	s.logger.Info("FCM emulator listening", "url", hs.URL())
	return s, nil
}

// URL returns the base URL, https://127.0.0.1:PORT. The messaging endpoint
// to give firebase (option.WithEndpoint) is URL() + "/v1".
func (s *Server) URL() string { return s.http.URL() }

// TokenURL returns the OAuth2 token endpoint, the token_uri of the
// service-account JSON files this emulator accepts.
func (s *Server) TokenURL() string { return s.http.URL() + "/token" }

// CA returns the CA whose certificate clients must trust.
func (s *Server) CA() *tlsca.CA { return s.ca }

// Close stops the emulator at once; requests in flight fail.
func (s *Server) Close() error { return s.http.Close() }

// Shutdown stops the emulator gracefully: HTTP/2 clients get a GOAWAY and
// in-flight requests may finish until ctx is done.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// RegisterServiceAccount lets clientEmail obtain access tokens for projectID
// with assertions signed by the private half of pub. A service account
// belongs to one project; registering it again adds a key (as rotating keys
// on Google does) and keeps the first project.
func (s *Server) RegisterServiceAccount(projectID, clientEmail string, pub *rsa.PublicKey) {
	s.mu.Lock()
	sa := s.accounts[clientEmail]
	if sa == nil {
		sa = &serviceAccount{project: projectID, email: clientEmail}
		s.accounts[clientEmail] = sa
	}
	sa.keys = append(sa.keys, pub)
	s.mu.Unlock()
	s.logger.Info("registered service account", "project", projectID, "client_email", clientEmail)
}

// NewServiceAccount generates an RSA key, registers a service account for
// projectID with it, and returns a complete service-account JSON file whose
// token_uri is this emulator, ready for google.CredentialsFromJSON.
func (s *Server) NewServiceAccount(projectID string) (saJSON []byte, key *rsa.PrivateKey, err error) {
	if projectID == "" {
		return nil, nil, fmt.Errorf("fcm: project ID is required")
	}
	key, err = rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, fmt.Errorf("fcm: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("fcm: encode key: %w", err)
	}
	var kid [20]byte
	if _, err := rand.Read(kid[:]); err != nil {
		return nil, nil, fmt.Errorf("fcm: key ID: %w", err)
	}
	clientID, err := rand.Int(rand.Reader, new(big.Int).Exp(big.NewInt(10), big.NewInt(21), nil))
	if err != nil {
		return nil, nil, fmt.Errorf("fcm: client ID: %w", err)
	}
	suffix := hex.EncodeToString(kid[:3])[:5]
	email := "firebase-adminsdk-" + suffix + "@" + projectID + ".iam.gserviceaccount.com"
	sa := map[string]string{
		"type":                        "service_account",
		"project_id":                  projectID,
		"private_key_id":              hex.EncodeToString(kid[:]),
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                email,
		"client_id":                   fmt.Sprintf("%021s", clientID.String()),
		"auth_uri":                    "https://accounts.google.com/o/oauth2/auth",
		"token_uri":                   s.TokenURL(),
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
		"client_x509_cert_url":        "https://www.googleapis.com/robot/v1/metadata/x509/" + strings.ReplaceAll(email, "@", "%40"),
		"universe_domain":             "googleapis.com",
	}
	saJSON, err = json.MarshalIndent(sa, "", "  ")
	if err != nil {
		return nil, nil, fmt.Errorf("fcm: encode service account: %w", err)
	}
	s.RegisterServiceAccount(projectID, email, &key.PublicKey)
	return saJSON, key, nil
}

// RevokeAccessTokens invalidates every access token issued so far: the next
// send with one is answered 401 UNAUTHENTICATED, as after a key is deleted.
func (s *Server) RevokeAccessTokens() {
	s.mu.Lock()
	clear(s.access)
	s.mu.Unlock()
	s.logger.Info("access tokens revoked")
}

// MarkUnregistered makes sends to token answer 404 NOT_FOUND with the
// FcmError code UNREGISTERED.
func (s *Server) MarkUnregistered(token string) {
	_ = s.SetTokenOutcome(token, ErrUnregistered)
}

// SetTokenOutcome makes sends to token answer with an FcmError code:
// UNREGISTERED, INVALID_ARGUMENT, SENDER_ID_MISMATCH, QUOTA_EXCEEDED,
// UNAVAILABLE, INTERNAL or THIRD_PARTY_AUTH_ERROR (the HTTP status and RPC
// status follow from the code). An empty code clears the token's outcome.
// Outcomes apply to sends, dry runs included, that passed authentication and
// validation.
func (s *Server) SetTokenOutcome(token, errorCode string) error {
	if errorCode != "" {
		if _, ok := fcmErrors[errorCode]; !ok {
			return fmt.Errorf("fcm: unknown error code %q", errorCode)
		}
	}
	s.mu.Lock()
	if errorCode == "" {
		delete(s.tokens, token)
	} else {
		s.tokens[token] = errorCode
	}
	s.mu.Unlock()
	s.logger.Info("token outcome set", "token", shortToken(token), "error_code", errorCode)
	return nil
}

// SetQuota changes the per-project sends per minute (0 restores the
// default). The current minute's usage is kept.
func (s *Server) SetQuota(perMinute int) {
	if perMinute <= 0 {
		perMinute = DefaultQuotaPerMinute
	}
	s.quotaMu.Lock()
	s.quota = perMinute
	s.quotaMu.Unlock()
	s.logger.Info("quota set", "per_minute", perMinute)
}

// Quota returns the per-project sends per minute.
func (s *Server) Quota() int {
	s.quotaMu.Lock()
	defer s.quotaMu.Unlock()
	return s.quota
}

// takeQuota counts one send against project's current minute and returns
// the seconds until the next minute when the quota is exhausted.
func (s *Server) takeQuota(project string, now time.Time) (retryAfter int64, ok bool) {
	minute := now.Unix() / 60
	s.quotaMu.Lock()
	defer s.quotaMu.Unlock()
	w := s.windows[project]
	if w == nil {
		w = &quotaWindow{}
		s.windows[project] = w
	}
	if w.minute != minute {
		w.minute, w.used = minute, 0
	}
	if w.used >= s.quota {
		return (minute+1)*60 - now.Unix(), false
	}
	w.used++
	return 0, true
}

// SetFaults replaces the injected faults and restarts their sequence.
func (s *Server) SetFaults(f Faults) error {
	if err := s.faults.Set(f); err != nil {
		return fmt.Errorf("fcm: %w", err)
	}
	s.logger.Info("faults set", "faults", f)
	return nil
}

// Faults returns the faults in force.
func (s *Server) Faults() Faults { return s.faults.Faults() }

// SetAvailable switches the gateway off (false) and on again. While off,
// every send is answered 503 UNAVAILABLE with a Retry-After header (see
// Faults.RetryAfter); the token endpoint and the admin API keep working.
func (s *Server) SetAvailable(up bool) {
	s.up.Store(up)
	s.logger.Info("availability set", "available", up)
}

// Received returns a copy of the retained log, oldest first. The Message
// byte slices are shared with the log: read them, do not modify them. On a
// full log this copies up to MaxLog entries under the log's lock; prefer
// ReceivedFor (or the admin API's limit) while traffic is flowing.
func (s *Server) Received() []Delivery { return s.log.Snapshot(nil, 0) }

// ReceivedFor returns the retained requests for one registration token,
// oldest first.
func (s *Server) ReceivedFor(token string) []Delivery {
	return s.log.Snapshot(func(d *Delivery) bool { return d.Token == token }, 0)
}

// Count returns the counters since start or Reset.
func (s *Server) Count() Counts {
	c := Counts{
		Received:     s.received.Load(),
		Delivered:    s.deliver.Load(),
		Validated:    s.validate.Load(),
		Dropped:      s.dropped.Load(),
		TokensIssued: s.issued.Load(),
		Rejected:     make(map[string]int64),
	}
	s.rejMu.Lock()
	for k, v := range s.rejected {
		c.Rejected[k] = v
	}
	s.rejMu.Unlock()
	return c
}

// Reset empties the log and zeroes the counters and the quota usage.
// Service accounts, access tokens, token outcomes, faults and availability
// are kept.
func (s *Server) Reset() {
	s.log.Reset()
	s.received.Store(0)
	s.deliver.Store(0)
	s.validate.Store(0)
	s.dropped.Store(0)
	s.issued.Store(0)
	s.rejMu.Lock()
	clear(s.rejected)
	s.rejMu.Unlock()
	s.quotaMu.Lock()
	clear(s.windows)
	s.quotaMu.Unlock()
}

func (s *Server) record(d Delivery) {
	s.received.Add(1)
	switch {
	case d.Status == http.StatusOK && d.ValidateOnly:
		s.validate.Add(1)
	case d.Status == http.StatusOK:
		s.deliver.Add(1)
	case d.Status == 0:
		s.dropped.Add(1)
	default:
		s.rejMu.Lock()
		s.rejected[d.ErrorCode]++
		s.rejMu.Unlock()
		s.logger.Debug("send rejected", "project", d.Project, "token", shortToken(d.Token), "status", d.Status, "error_code", d.ErrorCode)
	}
	s.log.Append(d)
}

// shortToken keeps logs useful without writing whole tokens.
func shortToken(t string) string {
	if len(t) <= 8 {
		return t
	}
	return t[:8] + "…"
}
