package apns

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/pushmesh/pushmesh/emulator/internal/adminapi"
)

// adminHandler serves the admin API; see README.md for the reference.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_emulator/{$}", func(w http.ResponseWriter, r *http.Request) {
		adminapi.JSON(w, http.StatusOK, map[string]any{
			"emulator": "apns",
			"url":      s.URL(),
			"endpoints": []string{
				"POST /_emulator/keys", "POST /_emulator/topics",
				"POST /_emulator/tokens/unregistered", "POST /_emulator/tokens/outcome",
				"GET|PUT /_emulator/faults", "GET|PUT /_emulator/available",
				"GET /_emulator/received", "GET /_emulator/counts", "POST /_emulator/reset",
			},
		})
	})
	mux.HandleFunc("POST /_emulator/keys", s.adminKeys)
	mux.HandleFunc("POST /_emulator/topics", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			TeamID   string `json:"team_id"`
			BundleID string `json:"bundle_id"`
		}
		if err := adminapi.Decode(r, &req); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.TeamID == "" || req.BundleID == "" {
			adminapi.Error(w, http.StatusBadRequest, "team_id and bundle_id are required")
			return
		}
		s.RegisterTopic(req.TeamID, req.BundleID)
		adminapi.OK(w)
	})
	mux.HandleFunc("POST /_emulator/tokens/unregistered", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token       string `json:"token"`
			TimestampMS int64  `json:"timestamp_ms"`
		}
		if err := adminapi.Decode(r, &req); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.Token == "" || req.TimestampMS < 0 {
			adminapi.Error(w, http.StatusBadRequest, "token is required and timestamp_ms must not be negative")
			return
		}
		var at time.Time
		if req.TimestampMS > 0 {
			at = time.UnixMilli(req.TimestampMS)
		}
		s.MarkUnregistered(req.Token, at)
		adminapi.OK(w)
	})
	mux.HandleFunc("POST /_emulator/tokens/outcome", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token  string `json:"token"`
			Reason string `json:"reason"`
		}
		if err := adminapi.Decode(r, &req); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.Token == "" {
			adminapi.Error(w, http.StatusBadRequest, "token is required")
			return
		}
		if err := s.SetTokenOutcome(req.Token, req.Reason); err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		adminapi.OK(w)
	})
	adminapi.RegisterSwitches(mux, adminapi.Switches{
		Faults: s.Faults, SetFaults: s.SetFaults,
		Available: s.available.Load, SetAvailable: s.SetAvailable,
	})
	mux.HandleFunc("GET /_emulator/received", func(w http.ResponseWriter, r *http.Request) {
		limit, err := adminapi.Limit(r)
		if err != nil {
			adminapi.Error(w, http.StatusBadRequest, err.Error())
			return
		}
		var keep func(*Delivery) bool
		if tok := r.URL.Query().Get("token"); tok != "" {
			keep = func(d *Delivery) bool { return strings.EqualFold(d.Token, tok) }
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
			"received": c.Received, "accepted": c.Accepted, "rejected": c.Rejected, "dropped": c.Dropped,
		})
	})
	mux.HandleFunc("POST /_emulator/reset", func(w http.ResponseWriter, r *http.Request) {
		s.Reset()
		adminapi.OK(w)
	})
	return mux
}

// adminKeys registers a public key (PEM: PKIX public key, or the .p8 private
// key itself) or, when none is given, generates a key pair and returns the
// .p8 so the caller can sign provider tokens.
func (s *Server) adminKeys(w http.ResponseWriter, r *http.Request) {
	var req struct {
		TeamID       string `json:"team_id"`
		KeyID        string `json:"key_id"`
		PublicKeyPEM string `json:"public_key_pem"`
	}
	if err := adminapi.Decode(r, &req); err != nil {
		adminapi.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.TeamID == "" || req.KeyID == "" {
		adminapi.Error(w, http.StatusBadRequest, "team_id and key_id are required")
		return
	}
	if req.PublicKeyPEM == "" {
		p8, _, err := s.NewProviderKey(req.TeamID, req.KeyID)
		if err != nil {
			adminapi.Error(w, http.StatusInternalServerError, err.Error())
			return
		}
		adminapi.JSON(w, http.StatusOK, map[string]string{"team_id": req.TeamID, "key_id": req.KeyID, "p8": string(p8)})
		return
	}
	pub, err := parseECPublicKey([]byte(req.PublicKeyPEM))
	if err != nil {
		adminapi.Error(w, http.StatusBadRequest, err.Error())
		return
	}
	s.RegisterKey(req.TeamID, req.KeyID, pub)
	adminapi.OK(w)
}

// parseECPublicKey reads a P-256 public key from a PEM "PUBLIC KEY" block or
// from a .p8 "PRIVATE KEY" block.
func parseECPublicKey(b []byte) (*ecdsa.PublicKey, error) {
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
			if k, ok := priv.(*ecdsa.PrivateKey); ok {
				key = &k.PublicKey
			}
		}
	default:
		return nil, errors.New(`public_key_pem must be a "PUBLIC KEY" or "PRIVATE KEY" PEM block`)
	}
	if err != nil {
		return nil, errors.New("public_key_pem: " + err.Error())
	}
	pub, ok := key.(*ecdsa.PublicKey)
	if !ok || pub.Curve.Params().Name != "P-256" {
		return nil, errors.New("public_key_pem must hold an ECDSA P-256 key")
	}
	return pub, nil
}

// deliveryJSON is the admin API's view of a Delivery: the payload as text.
type deliveryJSON struct {
	Time       time.Time `json:"time"`
	ConnID     uint64    `json:"conn_id"`
	Token      string    `json:"token"`
	Topic      string    `json:"topic,omitempty"`
	PushType   string    `json:"push_type,omitempty"`
	Priority   string    `json:"priority,omitempty"`
	Expiration string    `json:"expiration,omitempty"`
	CollapseID string    `json:"collapse_id,omitempty"`
	ApnsID     string    `json:"apns_id"`
	TeamID     string    `json:"team_id,omitempty"`
	KeyID      string    `json:"key_id,omitempty"`
	Payload    string    `json:"payload"`
	Status     int       `json:"status"`
	Reason     string    `json:"reason,omitempty"`
}

func toJSON(d *Delivery) deliveryJSON {
	return deliveryJSON{
		Time: d.Time, ConnID: d.ConnID, Token: d.Token, Topic: d.Topic, PushType: d.PushType,
		Priority: d.Priority, Expiration: d.Expiration, CollapseID: d.CollapseID, ApnsID: d.ApnsID,
		TeamID: d.TeamID, KeyID: d.KeyID, Payload: string(d.Payload), Status: d.Status, Reason: d.Reason,
	}
}
