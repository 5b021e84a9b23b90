package service

import (
	"runtime/debug"
	"testing"
)

func TestTuneRuntimeLeavesOperatorSettingsAlone(t *testing.T) {
	gc0, limit0 := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1)
	debug.SetGCPercent(gc0)
	t.Cleanup(func() { debug.SetGCPercent(gc0); debug.SetMemoryLimit(limit0) })

	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	TuneRuntime(250, 123<<20)
	if gc := debug.SetGCPercent(gc0); gc != 250 {
		t.Errorf("GOGC = %d, want 250", gc)
	}
	if limit := debug.SetMemoryLimit(-1); limit != 123<<20 {
		t.Errorf("memory limit = %d, want %d", limit, 123<<20)
	}

	// Set by the environment: untouched.
	t.Setenv("GOGC", "100")
	t.Setenv("GOMEMLIMIT", "1GiB")
	debug.SetGCPercent(77)
	debug.SetMemoryLimit(77 << 20)
	TuneRuntime(250, 123<<20)
	if gc := debug.SetGCPercent(gc0); gc != 77 {
		t.Errorf("GOGC from the environment was overridden: %d", gc)
	}
	if limit := debug.SetMemoryLimit(-1); limit != 77<<20 {
		t.Errorf("GOMEMLIMIT from the environment was overridden: %d", limit)
	}
}
