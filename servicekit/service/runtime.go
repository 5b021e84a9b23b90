package service

import (
	"os"
	"runtime/debug"
)

// TuneRuntime sets the garbage collector's target percentage and soft memory
// limit a service binary runs with, each unless the environment sets it
// (GOGC, GOMEMLIMIT): an operator's setting always wins. Binaries call it
// first thing; in-process runs (tests, pushctl dev) may leave the runtime
// alone.
func TuneRuntime(gcPercent int, memoryLimit int64) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
}
