package fcm

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"time"

	"github.com/pushmesh/pushmesh/emulator/internal/adminapi"
)

// adminHandler serves the admin API; see README.md for the reference.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_emulator/{$}", func(w http.ResponseWriter, r *http.Request) {
		adminapi.JSON(w, http.StatusOK, map[string]any{
			"emulator":  "fcm",
			"url":       s.URL(),
			"endpoint":  s.URL() + "/v1",
			"token_uri": s.TokenURL(),
			"endpoints": []string{
				"POST /_emulator/service-accounts", "POST /_emulator/access-tokens/revoke",
				"POST /_emulator/tokens/unregistered", "POST /_emulator/tokens/outcome",
				"GET|PUT /_emulator/faults", "GET|PUT /_emulator/available", "GET|PUT /_emulator/quota",
				"GET /_emulator/received", "GET /_emulator/counts", "POST /_emulator/reset",
			},
		})
	})
	mux.HandleFunc("POST /_emulator/service-accounts", s.adminServiceAccounts)
	mux.HandleFunc("POST /_emulator/access-tokens/revoke", func(w http.ResponseWriter, r *http.Request) {
		s.RevokeAccessTokens()
		adminapi.OK(w)
	})
	mux.HandleFunc("POST /_emulator/tokens/unregistered", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token string `json:"token"`
		}
		if err := adminapi.Decode(r, &req); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.Token == "" {
			adminapi.Error(w, http.StatusBadRequest, "token is required")
			return
		}
		s.MarkUnregistered(req.Token)
		adminapi.OK(w)
	})
	mux.HandleFunc("POST /_emulator/tokens/outcome", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token     string `json:"token"`
			ErrorCode string `json:"error_code"`
		}
		if err := adminapi.Decode(r, &req); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.Token == "" {
			adminapi.Error(w, http.StatusBadRequest, "token is required")
			return
		}
		if err := s.SetTokenOutcome(req.Token, req.ErrorCode); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		adminapi.OK(w)
	})
	adminapi.RegisterSwitches(mux, adminapi.Switches{
		Faults: s.Faults, SetFaults: s.SetFaults,
		Available: s.up.Load, SetAvailable: s.SetAvailable,
	})
	mux.HandleFunc("GET /_emulator/quota", func(w http.ResponseWriter, r *http.Request) {
		adminapi.JSON(w, http.StatusOK, map[string]int{"per_minute": s.Quota()})
	})
	mux.HandleFunc("PUT /_emulator/quota", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			PerMinute int `json:"per_minute"`
		}
		if err := adminapi.Decode(r, &req); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.PerMinute <= 0 {
			adminapi.Error(w, http.StatusBadRequest, "per_minute must be a positive integer")
			return
		}
		s.SetQuota(req.PerMinute)
		adminapi.JSON(w, http.StatusOK, map[string]int{"per_minute": s.Quota()})
	})
	mux.HandleFunc("GET /_emulator/received", func(w http.ResponseWriter, r *http.Request) {
		limit, err := adminapi.Limit(r)
		if err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		var keep func(*Delivery) bool
		if tok := r.URL.Query().Get("token"); tok != "" {
			keep = func(d *Delivery) bool { return d.Token == tok }
		}
		ds := s.log.Snapshot(keep, limit)
		out := make([]deliveryJSON, len(ds))
		for i := range ds {
			out[i] = toJSON(&ds[i])
		}
		adminapi.JSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /_emulator/counts", func(w http.ResponseWriter, r *http.Request) {
		c := s.Count()
		adminapi.JSON(w, http.StatusOK, map[string]any{
			"received": c.Received, "delivered": c.Delivered, "validated": c.Validated,
			"rejected": c.Rejected, "dropped": c.Dropped, "tokens_issued": c.TokensIssued,
		})
	})
	mux.HandleFunc("POST /_emulator/reset", func(w http.ResponseWriter, r *http.Request) {
		s.Reset()
		adminapi.OK(w)
	})
	return mux
}

// adminServiceAccounts creates a service account and returns its JSON file
// (body {"project_id"}), or registers an existing account's public key (body
// {"project_id","client_email","public_key_pem"}).
func (s *Server) adminServiceAccounts(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ProjectID    string `json:"project_id"`
		ClientEmail  string `json:"client_email"`
		PublicKeyPEM string `json:"public_key_pem"`
	}
	if err := adminapi.Decode(r, &req); err != nil {
		adminapi.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.ProjectID == "" {
		adminapi.Error(w, http.StatusBadRequest, "project_id is required")
		return
	}
	if req.ClientEmail == "" && req.PublicKeyPEM == "" {
		saJSON, _, err := s.NewServiceAccount(req.ProjectID)
		if err != nil {
			adminapi.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(saJSON)
		return
	}
	if req.ClientEmail == "" || req.PublicKeyPEM == "" {
		adminapi.Error(w, http.StatusBadRequest, "client_email and public_key_pem go together")
		return
	}
	pub, err := parseRSAPublicKey([]byte(req.PublicKeyPEM))
	if err != nil {
		adminapi.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	s.RegisterServiceAccount(req.ProjectID, req.ClientEmail, pub)
	adminapi.OK(w)
}

// parseRSAPublicKey reads an RSA public key from a "PUBLIC KEY" PEM block, or
// from the private key of a service-account file ("PRIVATE KEY").
func parseRSAPublicKey(b []byte) (*rsa.PublicKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("public_key_pem is not PEM")
	}
	var key any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "PRIVATE KEY":
		var priv any
		if priv, err = x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			if k, ok := priv.(*rsa.PrivateKey); ok {
				key = &k.PublicKey
			}
		}
	default:
		return nil, errors.New(`public_key_pem must be a "PUBLIC KEY" or "PRIVATE KEY" PEM block`)
	}
	if err != nil {
		return nil, errors.New("public_key_pem: " + err.Error())
	}
	pub, ok := key.(*rsa.PublicKey)
	if !ok || pub.N.BitLen() < 2048 {
		return nil, errors.New("public_key_pem must hold an RSA key of at least 2048 bits")
	}
	return pub, nil
}

// deliveryJSON is the admin API's view of a Delivery: the message as JSON
// when it is JSON, as text otherwise.
type deliveryJSON struct {
	Time         time.Time       `json:"time"`
	ConnID       uint64          `json:"conn_id"`
	Project      string          `json:"project"`
	Token        string          `json:"token,omitempty"`
	Topic        string          `json:"topic,omitempty"`
	Condition    string          `json:"condition,omitempty"`
	ValidateOnly bool            `json:"validate_only,omitempty"`
	Message      json.RawMessage `json:"message,omitempty"`
	MessageText  string          `json:"message_text,omitempty"`
	ClientEmail  string          `json:"client_email,omitempty"`
	Status       int             `json:"status"`
	ErrorCode    string          `json:"error_code,omitempty"`
	Name         string          `json:"name,omitempty"`
}

func toJSON(d *Delivery) deliveryJSON {
	out := deliveryJSON{
		Time: d.Time, ConnID: d.ConnID, Project: d.Project, Token: d.Token, Topic: d.Topic,
		Condition: d.Condition, ValidateOnly: d.ValidateOnly, ClientEmail: d.ClientEmail,
		Status: d.Status, ErrorCode: d.ErrorCode, Name: d.Name,
	}
	if json.Valid(d.Message) {
		out.Message = d.Message
	} else {
		out.MessageText = string(d.Message)
	}
	return out
}
