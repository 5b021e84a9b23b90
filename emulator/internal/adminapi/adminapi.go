// Package adminapi holds the small JSON helpers behind the emulators' admin
// endpoints (under /_emulator/). The admin API is meant for loopback use by
// tests and scripts, but every input is still validated: a malformed call
// fails with 400 and a message instead of silently doing nothing.
package adminapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/pushmesh/pushmesh/emulator/fault"
)

// maxBody bounds admin request bodies.
const maxBody = 1 << 20

// Decode reads one JSON value into v, rejecting unknown fields, trailing data
// and bodies over 1 MiB.
func Decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %w", err)
	}
	if dec.More() {
		return errors.New("invalid JSON body: trailing data")
	}
	return nil
}

// JSON writes v with status.
func JSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Error writes {"error": msg} with status.
func Error(w http.ResponseWriter, status int, msg string) {
	JSON(w, status, map[string]string{"error": msg})
}

// OK writes {"ok": true}.
func OK(w http.ResponseWriter) {
	JSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// Limit parses the optional "limit" query parameter (0 = no limit).
func Limit(r *http.Request) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("limit %q is not a non-negative integer", s)
	}
	return n, nil
}

// Switches are the fault and availability controls both emulators share.
type Switches struct {
	Faults       func() fault.Faults
	SetFaults    func(fault.Faults) error
	Available    func() bool
	SetAvailable func(bool)
}

// RegisterSwitches serves GET/PUT /_emulator/faults and
// GET/PUT /_emulator/available on mux.
func RegisterSwitches(mux *http.ServeMux, sw Switches) {
	mux.HandleFunc("GET /_emulator/faults", func(w http.ResponseWriter, r *http.Request) {
		JSON(w, http.StatusOK, sw.Faults())
	})
	mux.HandleFunc("PUT /_emulator/faults", func(w http.ResponseWriter, r *http.Request) {
		var f fault.Faults
		if err := Decode(r, &f); err != nil {
			Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if err := sw.SetFaults(f); err != nil {
			Error(w, http.StatusBadRequest, err.Error())
			return
		}
		JSON(w, http.StatusOK, sw.Faults())
	})
	mux.HandleFunc("GET /_emulator/available", func(w http.ResponseWriter, r *http.Request) {
		JSON(w, http.StatusOK, map[string]bool{"available": sw.Available()})
	})
	mux.HandleFunc("PUT /_emulator/available", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Available *bool `json:"available"`
		}
		if err := Decode(r, &req); err != nil {
			Error(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.Available == nil {
			Error(w, http.StatusBadRequest, "available (true or false) is required")
			return
		}
		sw.SetAvailable(*req.Available)
		JSON(w, http.StatusOK, map[string]bool{"available": *req.Available})
	})
}
