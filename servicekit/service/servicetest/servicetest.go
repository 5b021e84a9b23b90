// Package servicetest runs a service.Spec in the test's own process, through
// service.Run as its binary would (flags, environment, listener, TLS), for
// tests that need the real start-up path but not a child process.
package servicetest

import (
	"context"
	"io"
	"testing"

	"github.com/pushmesh/pushmesh/servicekit/service"
)

// Run runs spec with args until the test ends, its logs written to logs,
// and returns a context that ends when the test's cleanup stops the
// service. A Run that fails, then or before, fails the test.
func Run(t testing.TB, spec service.Spec, args []string, logs io.Writer) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.Run(ctx, spec, args, logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", spec.Name, err)
		}
	})
	return ctx
}
