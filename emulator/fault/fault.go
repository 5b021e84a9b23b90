// Package fault describes and draws the injected faults shared by the APNs and
// FCM emulators: error rates by status, latency, and connection drops.
//
// Every draw is deterministic: the k-th request an emulator handles after
// SetFaults (or after start) gets the same fate for the same seed and the same
// Faults, whatever the timing. With one sequential sender a run therefore
// repeats exactly; with concurrent senders the set of fates is the same and
// only which request gets which one depends on arrival order.
package fault

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"
)

// DropMode says how a connection is dropped.
type DropMode string

const (
	// DropGoAway answers the request normally, then sends an HTTP/2 GOAWAY
	// and closes the connection once its in-flight streams finish: the
	// graceful way a gateway sheds a connection. Well-behaved clients
	// (apns2, firebase) reconnect transparently and lose nothing.
	DropGoAway DropMode = "goaway"
	// DropClose closes the TCP connection at once (with a reset) without
	// answering the request: every request in flight on that connection
	// fails on the client side with a transport error.
	DropClose DropMode = "close"
)

// Faults configures injected failures. The zero value injects nothing.
//
// Rates are probabilities in [0, 1]. The three error rates are drawn from one
// number, so they are exclusive and their sum must not exceed 1. Error rates
// and connection drops only hit requests that passed authentication and
// validation, so a malformed request still gets its precise error; latency
// applies to every request on the gateway path.
type Faults struct {
	// TooManyRequestsRate answers 429 (APNs TooManyRequests, FCM
	// QUOTA_EXCEEDED) with a Retry-After header.
	TooManyRequestsRate float64
	// InternalErrorRate answers 500 (APNs InternalServerError, FCM INTERNAL).
	InternalErrorRate float64
	// UnavailableRate answers 503 (APNs ServiceUnavailable, FCM UNAVAILABLE)
	// with a Retry-After header.
	UnavailableRate float64
	// RetryAfter is the Retry-After sent with 429 and 503, rounded up to
	// whole seconds; zero means 1 s. firebase gives up at once when
	// Retry-After exceeds two minutes.
	RetryAfter time.Duration

	// Latency is added to every request; Jitter adds a further uniform
	// random delay in [0, Jitter).
	Latency time.Duration
	Jitter  time.Duration

	// DropEvery drops the connection of every DropEvery-th request (the
	// DropEvery-th, 2·DropEvery-th, …); 0 disables it. DropRate drops the
	// connection of a request with that probability. Both may be set.
	DropEvery int
	DropRate  float64
	// DropMode is DropGoAway (the default) or DropClose.
	DropMode DropMode
}

// Validate reports a configuration that cannot be honoured.
func (f Faults) Validate() error {
	var errs []error
	for _, r := range []struct {
		name string
		v    float64
	}{
		{"TooManyRequestsRate", f.TooManyRequestsRate},
		{"InternalErrorRate", f.InternalErrorRate},
		{"UnavailableRate", f.UnavailableRate},
		{"DropRate", f.DropRate},
	} {
		if math.IsNaN(r.v) || r.v < 0 || r.v > 1 {
			errs = append(errs, fmt.Errorf("%s %v is not in [0, 1]", r.name, r.v))
		}
	}
	if sum := f.TooManyRequestsRate + f.InternalErrorRate + f.UnavailableRate; sum > 1+1e-9 {
		errs = append(errs, fmt.Errorf("error rates add up to %v, more than 1", sum))
	}
	if f.RetryAfter < 0 || f.Latency < 0 || f.Jitter < 0 {
		errs = append(errs, errors.New("RetryAfter, Latency and Jitter must not be negative"))
	}
	if f.DropEvery < 0 {
		errs = append(errs, fmt.Errorf("DropEvery %d is negative", f.DropEvery))
	}
	switch f.DropMode {
	case "", DropGoAway, DropClose:
	default:
		errs = append(errs, fmt.Errorf("DropMode %q is neither %q nor %q", f.DropMode, DropGoAway, DropClose))
	}
	return errors.Join(errs...)
}

// RetryAfterSeconds is the Retry-After header value in whole seconds (at
// least 1).
func (f Faults) RetryAfterSeconds() int64 {
	if f.RetryAfter <= 0 {
		return 1
	}
	return int64((f.RetryAfter + time.Second - 1) / time.Second)
}

// Decision is the fate drawn for one request.
type Decision struct {
	// Seq numbers the request from 1 since the last SetFaults.
	Seq uint64
	// Status is 0 (no injected error), 429, 500 or 503.
	Status int
	// Delay is the latency to add before answering.
	Delay time.Duration
	// Drop is empty or the way to drop the connection.
	Drop DropMode
}

// Injector draws Decisions. It is safe for concurrent use and lock-free on
// the request path.
type Injector struct {
	seed  uint64
	state atomic.Pointer[injectorState]
}

// injectorState is replaced whole on SetFaults, so a request sees one
// consistent configuration and its own sequence counter.
type injectorState struct {
	faults Faults
	active bool // anything to inject at all: skips the hashing when false
	seq    atomic.Uint64
}

// NewInjector returns an Injector injecting nothing.
func NewInjector(seed int64) *Injector {
	in := &Injector{seed: uint64(seed)}
	in.state.Store(&injectorState{})
	return in
}

// Set replaces the configuration and restarts the request sequence at 1. It
// returns Validate's error and changes nothing on error.
func (in *Injector) Set(f Faults) error {
	if err := f.Validate(); err != nil {
		return err
	}
	if f.DropMode == "" {
		f.DropMode = DropGoAway
	}
	active := f.TooManyRequestsRate > 0 || f.InternalErrorRate > 0 || f.UnavailableRate > 0 ||
		f.Latency > 0 || f.Jitter > 0 || f.DropEvery > 0 || f.DropRate > 0
	in.state.Store(&injectorState{faults: f, active: active})
	return nil
}

// Faults returns the configuration in force.
func (in *Injector) Faults() Faults { return in.state.Load().faults }

// Draw returns the fate of the next request.
func (in *Injector) Draw() Decision {
	st := in.state.Load()
	if !st.active {
		return Decision{}
	}
	seq := st.seq.Add(1)
	f := &st.faults
	d := Decision{Seq: seq, Delay: f.Latency}
	if f.Jitter > 0 {
		d.Delay += time.Duration(in.uniform(seq, 1) * float64(f.Jitter))
	}
	if f.TooManyRequestsRate > 0 || f.InternalErrorRate > 0 || f.UnavailableRate > 0 {
		u := in.uniform(seq, 2)
		switch {
		case u < f.TooManyRequestsRate:
			d.Status = 429
		case u < f.TooManyRequestsRate+f.InternalErrorRate:
			d.Status = 500
		case u < f.TooManyRequestsRate+f.InternalErrorRate+f.UnavailableRate:
			d.Status = 503
		}
	}
	if (f.DropEvery > 0 && seq%uint64(f.DropEvery) == 0) || (f.DropRate > 0 && in.uniform(seq, 3) < f.DropRate) {
		d.Drop = f.DropMode
	}
	return d
}

// uniform maps (seed, seq, stream) to a number in [0, 1) with SplitMix64, a
// small, well-mixed hash: each aspect of a request (jitter, error, drop) draws
// from its own stream, so changing one rate does not reshuffle the others.
func (in *Injector) uniform(seq, stream uint64) float64 {
	x := in.seed ^ (seq * 0x9e3779b97f4a7c15) ^ (stream * 0xd1b54a32d192ed03)
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

// faultsJSON is the wire form used by the admin APIs: durations are Go
// duration strings ("250ms") rather than nanosecond counts.
type faultsJSON struct {
	TooManyRequestsRate float64  `json:"too_many_requests_rate,omitempty"`
	InternalErrorRate   float64  `json:"internal_error_rate,omitempty"`
	UnavailableRate     float64  `json:"unavailable_rate,omitempty"`
	RetryAfter          string   `json:"retry_after,omitempty"`
	Latency             string   `json:"latency,omitempty"`
	Jitter              string   `json:"jitter,omitempty"`
	DropEvery           int      `json:"drop_every,omitempty"`
	DropRate            float64  `json:"drop_rate,omitempty"`
	DropMode            DropMode `json:"drop_mode,omitempty"`
}

// MarshalJSON writes durations as Go duration strings.
func (f Faults) MarshalJSON() ([]byte, error) {
	j := faultsJSON{
		TooManyRequestsRate: f.TooManyRequestsRate,
		InternalErrorRate:   f.InternalErrorRate,
		UnavailableRate:     f.UnavailableRate,
		DropEvery:           f.DropEvery,
		DropRate:            f.DropRate,
		DropMode:            f.DropMode,
	}
	if f.RetryAfter != 0 {
		j.RetryAfter = f.RetryAfter.String()
	}
	if f.Latency != 0 {
		j.Latency = f.Latency.String()
	}
	if f.Jitter != 0 {
		j.Jitter = f.Jitter.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads durations as Go duration strings and rejects unknown
// fields, so a typo in an admin call fails loudly instead of injecting
// nothing.
func (f *Faults) UnmarshalJSON(b []byte) error {
	var j faultsJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("faults: %w", err)
	}
	out := Faults{
		TooManyRequestsRate: j.TooManyRequestsRate,
		InternalErrorRate:   j.InternalErrorRate,
		UnavailableRate:     j.UnavailableRate,
		DropEvery:           j.DropEvery,
		DropRate:            j.DropRate,
		DropMode:            j.DropMode,
	}
	for _, d := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{
		{"retry_after", j.RetryAfter, &out.RetryAfter},
		{"latency", j.Latency, &out.Latency},
		{"jitter", j.Jitter, &out.Jitter},
	} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return fmt.Errorf("faults: %s: %w", d.name, err)
		}
		*d.dst = v
	}
	*f = out
	return nil
}
