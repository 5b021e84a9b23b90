// Package creds parses and describes gateway credentials: APNs token
// authentication (.p8 key, key id, team id) and FCM service-account JSON.
// Parsing checks everything that can be checked offline; the gateways make
// the live check. Nothing here logs or prints key material.
package creds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"

	commonv1 "github.com/pushmesh/pushmesh/gen/pushmesh/common/v1"
	"github.com/pushmesh/pushmesh/servicekit/fault"
)

// Sentinels of credential checks.
var (
	// ErrRejected: the gateway refused the credentials (see RejectedError).
	ErrRejected = errors.New("credentials rejected by the gateway")
	// ErrUnavailable: the gateway could not be asked; try again later.
	ErrUnavailable = errors.New("gateway unavailable")
)

// RejectedError is a gateway's refusal of credentials, with its reason.
type RejectedError struct {
	Reason commonv1.FailureReason
	// Detail is the gateway's reason in its own words.
	Detail string
}

func (e *RejectedError) Error() string { return "credentials rejected by the gateway: " + e.Detail }

// Unwrap lets errors.Is(err, ErrRejected) match.
func (e *RejectedError) Unwrap() error { return ErrRejected }

// Credentials are one app's credentials: exactly one of APNs and FCM.
type Credentials struct {
	APNs *APNs
	FCM  *FCM
}

// APNs is token-based authentication with a .p8 signing key.
type APNs struct {
	KeyPEM string
	KeyID  string
	TeamID string
	// Key is KeyPEM parsed.
	Key *ecdsa.PrivateKey
}

// FCM is a Google service account.
type FCM struct {
	JSON        []byte
	ProjectID   string
	ClientEmail string
	TokenURI    string
	// Key is the service account's private key, parsed.
	Key *rsa.PrivateKey
}

// Info describes credentials without revealing them.
type Info struct {
	// Fingerprint is SHA-256 of the private key (PKCS #8 DER), hex, first
	// 16 bytes.
	Fingerprint string `json:"fingerprint"`
	KeyID       string `json:"key_id,omitempty"`
	TeamID      string `json:"team_id,omitempty"`
	ProjectID   string `json:"project_id,omitempty"`
	ClientEmail string `json:"client_email,omitempty"`
}

// Info describes c.
func (c Credentials) Info() Info {
	switch {
	case c.APNs != nil:
		return Info{Fingerprint: fingerprint(c.APNs.Key), KeyID: c.APNs.KeyID, TeamID: c.APNs.TeamID}
	case c.FCM != nil:
		return Info{Fingerprint: fingerprint(c.FCM.Key), ProjectID: c.FCM.ProjectID, ClientEmail: c.FCM.ClientEmail}
	}
	return Info{}
}

func fingerprint(key any) string {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:16])
}

// ParseAPNs checks APNs token credentials; field is their path, e.g.
// "credentials.apns_token". Errors are *fault.ValidationError.
func ParseAPNs(keyPEM, keyID, teamID, field string) (*APNs, error) {
	v := &fault.ValidationError{}
	var key *ecdsa.PrivateKey
	if keyPEM == "" {
		v.Add(field+".private_key_pem", "required: the content of the .p8 file")
	} else {
		var err error
		if key, err = parseP8(keyPEM); err != nil {
			v.Add(field+".private_key_pem", "%v", err)
		}
	}
	checkAppleID(v, field+".key_id", "Key ID", keyID)
	checkAppleID(v, field+".team_id", "Team ID", teamID)
	if err := v.Err(); err != nil {
		return nil, err
	}
	return &APNs{KeyPEM: keyPEM, KeyID: keyID, TeamID: teamID, Key: key}, nil
}

// parseP8 reads a .p8 file: a PEM "PRIVATE KEY" (PKCS #8) holding an ECDSA
// P-256 key. Errors never quote the key.
func parseP8(text string) (*ecdsa.PrivateKey, error) {
	block, rest := pem.Decode([]byte(text))
	if block == nil {
		return nil, errors.New("not a PEM file: expected the .p8 file's -----BEGIN PRIVATE KEY----- block")
	}
	if block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("PEM block is %q, want \"PRIVATE KEY\" (PKCS #8, as in Apple's .p8 files)", block.Type)
	}
	if next, _ := pem.Decode(rest); next != nil {
		return nil, errors.New("more than one PEM block: give the .p8 key only")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("not a valid PKCS #8 private key")
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, errors.New("the key must be an ECDSA P-256 key (Apple's token signing key)")
	}
	return key, nil
}

// checkAppleID checks a Key ID or Team ID: 10 characters, A-Z and 0-9.
func checkAppleID(v *fault.ValidationError, field, name, id string) {
	if id == "" {
		v.Add(field, "required: the 10-character %s from the Apple developer account", name)
		return
	}
	if len(id) != 10 {
		v.Add(field, "an Apple %s has 10 characters, got %d", name, len(id))
		return
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			v.Add(field, "an Apple %s is upper-case letters and digits, got %q at %d", name, c, i)
			return
		}
	}
}

// serviceAccount is the part of a service-account key file pushmesh reads.
type serviceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

// ParseFCM checks a service-account JSON file; field is its path, e.g.
// "credentials.fcm_service_account.service_account_json". Errors are
// *fault.ValidationError and never quote the key.
func ParseFCM(saJSON, field string) (*FCM, error) {
	if saJSON == "" {
		return nil, fault.Invalid(field, "required: the service account's JSON key file")
	}
	var sa serviceAccount
	if err := json.Unmarshal([]byte(saJSON), &sa); err != nil {
		return nil, fault.Invalid(field, "not a JSON object: %s", jsonErrorWithoutContent(err))
	}
	v := &fault.ValidationError{}
	if sa.Type != "service_account" {
		v.Add(field, `"type" must be "service_account", got %q`, truncate(sa.Type, 40))
	}
	if sa.ProjectID == "" {
		v.Add(field, `"project_id" is required`)
	} else if err := checkProjectID(sa.ProjectID); err != nil {
		v.Add(field, `"project_id": %v`, err)
	}
	if sa.ClientEmail == "" {
		v.Add(field, `"client_email" is required`)
	}
	if sa.TokenURI == "" {
		v.Add(field, `"token_uri" is required`)
	} else if err := checkTokenURI(sa.TokenURI); err != nil {
		v.Add(field, `"token_uri": %v`, err)
	}
	var key *rsa.PrivateKey
	if sa.PrivateKey == "" {
		v.Add(field, `"private_key" is required`)
	} else {
		var err error
		if key, err = parseRSAKey(sa.PrivateKey); err != nil {
			v.Add(field, `"private_key": %v`, err)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	return &FCM{JSON: []byte(saJSON), ProjectID: sa.ProjectID, ClientEmail: sa.ClientEmail, TokenURI: sa.TokenURI, Key: key}, nil
}

// maxProjectIDLen bounds a project id: Google's are at most 30 characters,
// older domain-scoped ones ("example.com:project") a little more.
const maxProjectIDLen = 128

// checkProjectID accepts what Google project ids are made of: letters,
// digits and '-' (and '.', ':' in older domain-scoped ids; '_' is harmless),
// beginning with a letter or digit. firebase puts the id into the send's
// URL unescaped (<endpoint>/projects/<id>/messages:send): a '/', '?', '#'
// or '%' in it would let whoever registers an app choose another path or
// query on the FCM host for deliverysvc to POST to with its access token,
// and read the answer in the live check's error.
func checkProjectID(id string) error {
	if len(id) > maxProjectIDLen {
		return fmt.Errorf("is %d bytes, more than %d", len(id), maxProjectIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		letterOrDigit := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !letterOrDigit && (i == 0 || (c != '-' && c != '.' && c != ':' && c != '_')) {
			return fmt.Errorf("byte %d is %q: a project id is letters, digits, '-', '.', ':' and '_', beginning with a letter or digit", i, c)
		}
	}
	return nil
}

// checkTokenURI accepts https URLs, and http only on loopback (a local
// emulator), since the exchange sends a signed assertion.
func checkTokenURI(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return errors.New("must be an absolute URL")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if ip := net.ParseIP(u.Hostname()); (ip != nil && ip.IsLoopback()) || u.Hostname() == "localhost" {
			return nil
		}
		return errors.New("must use https (http is allowed on loopback only)")
	}
	return fmt.Errorf("must use https, got %q", u.Scheme)
}

func parseRSAKey(text string) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode([]byte(text))
	if block == nil {
		return nil, errors.New("not a PEM private key")
	}
	var parsed any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want \"PRIVATE KEY\"", block.Type)
	}
	if err != nil {
		return nil, errors.New("not a valid private key")
	}
	key, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("the key must be an RSA key")
	}
	return key, nil
}

// jsonErrorWithoutContent describes a JSON syntax error by position only, so
// no part of a secret ends up in an error message or a log.
func jsonErrorWithoutContent(err error) string {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		return fmt.Sprintf("syntax error at byte %d", syn.Offset)
	}
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		return fmt.Sprintf("field %q has the wrong type", typ.Field)
	}
	return "cannot be decoded"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
