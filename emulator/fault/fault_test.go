package fault

import (
	"encoding/json"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		f       Faults
		wantErr bool
	}{
		{"zero", Faults{}, false},
		{"rates adding to one", Faults{TooManyRequestsRate: 0.5, InternalErrorRate: 0.25, UnavailableRate: 0.25}, false},
		{"rates above one", Faults{InternalErrorRate: 0.6, UnavailableRate: 0.6}, true},
		{"negative rate", Faults{DropRate: -0.1}, true},
		{"negative latency", Faults{Latency: -time.Second}, true},
		{"negative drop every", Faults{DropEvery: -1}, true},
		{"bad drop mode", Faults{DropMode: "explode"}, true},
		{"close mode", Faults{DropEvery: 2, DropMode: DropClose}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.f.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("got error %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func draws(in *Injector, n int) []Decision {
	out := make([]Decision, n)
	for i := range out {
		out[i] = in.Draw()
	}
	return out
}

func TestDrawDeterministicAndProportional(t *testing.T) {
	f := Faults{TooManyRequestsRate: 0.1, InternalErrorRate: 0.2, UnavailableRate: 0.3, Jitter: time.Millisecond, DropRate: 0.05}
	a, b, c := NewInjector(1), NewInjector(1), NewInjector(2)
	for _, in := range []*Injector{a, b, c} {
		if err := in.Set(f); err != nil {
			t.Fatal(err)
		}
	}
	const n = 20000
	da, db, dc := draws(a, n), draws(b, n), draws(c, n)
	same := 0
	count := map[int]int{}
	drops := 0
	for i := range da {
		if da[i] != db[i] {
			t.Fatalf("draw %d: seed 1 gave %+v then %+v, want the same", i, da[i], db[i])
		}
		if da[i] == dc[i] {
			same++
		}
		count[da[i].Status]++
		if da[i].Drop != "" {
			drops++
		}
		if da[i].Delay < 0 || da[i].Delay >= time.Millisecond {
			t.Fatalf("draw %d: delay %v outside [0, 1ms)", i, da[i].Delay)
		}
	}
	if same > n/10 {
		t.Errorf("seeds 1 and 2 agreed on %d of %d draws, want few", same, n)
	}
	for status, want := range map[int]float64{429: 0.1, 500: 0.2, 503: 0.3, 0: 0.4} {
		if got := float64(count[status]) / n; got < want-0.02 || got > want+0.02 {
			t.Errorf("status %d: got fraction %.3f, want %.2f±0.02", status, got, want)
		}
	}
	if got := float64(drops) / n; got < 0.04 || got > 0.06 {
		t.Errorf("drops: got fraction %.3f, want 0.05±0.01", got)
	}

	// Set restarts the sequence.
	if err := a.Set(f); err != nil {
		t.Fatal(err)
	}
	if got := a.Draw(); got != da[0] {
		t.Errorf("after Set got %+v, want the first draw %+v again", got, da[0])
	}
}

func TestDropEveryAndDefaults(t *testing.T) {
	in := NewInjector(0)
	if d := in.Draw(); d != (Decision{}) {
		t.Errorf("with no faults got %+v, want the zero Decision", d)
	}
	if err := in.Set(Faults{DropEvery: 3}); err != nil {
		t.Fatal(err)
	}
	var got []DropMode
	for _, d := range draws(in, 6) {
		got = append(got, d.Drop)
	}
	want := []DropMode{"", "", DropGoAway, "", "", DropGoAway}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("draw %d: got drop %q, want %q", i+1, got[i], want[i])
		}
	}
	for _, tt := range []struct {
		d    time.Duration
		want int64
	}{{0, 1}, {time.Millisecond, 1}, {time.Second, 1}, {1500 * time.Millisecond, 2}, {5 * time.Minute, 300}} {
		if got := (Faults{RetryAfter: tt.d}).RetryAfterSeconds(); got != tt.want {
			t.Errorf("RetryAfter %v: got %d s, want %d", tt.d, got, tt.want)
		}
	}
}

func TestJSON(t *testing.T) {
	f := Faults{TooManyRequestsRate: 0.1, RetryAfter: 2 * time.Second, Latency: 5 * time.Millisecond, Jitter: time.Millisecond, DropEvery: 10, DropMode: DropClose}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"too_many_requests_rate":0.1,"retry_after":"2s","latency":"5ms","jitter":"1ms","drop_every":10,"drop_mode":"close"}`
	if string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
	var back Faults
	if err := json.Unmarshal(b, &back); err != nil || back != f {
		t.Errorf("round trip: got %+v (%v), want %+v", back, err, f)
	}
	for _, bad := range []string{`{"latency":"soon"}`, `{"latencyy":"1s"}`, `{"drop_every":"x"}`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("Unmarshal(%s): got nil error, want one", bad)
		}
	}
}
