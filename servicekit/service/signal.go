package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// shutdownSignals are the signals that ask a service to shut down.
var shutdownSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

// SignalError is the cause (context.Cause) of a SignalContext ended by a
// signal.
type SignalError struct{ Signal os.Signal }

func (e *SignalError) Error() string { return fmt.Sprintf("received %v", e.Signal) }

// SignalContext returns a context that ends at the first SIGINT or SIGTERM,
// for a service binary's main to pass to Run. Once it has ended, those
// signals have their default effect again before ctx.Done is closed: a
// second SIGINT or SIGTERM kills the process at once, even while a shutdown
// is stuck (a handler on a dead disk), instead of being swallowed until
// SIGKILL. The returned stop releases the signals and ends ctx; main defers
// it.
func SignalContext(parent context.Context) (ctx context.Context, stop context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	c := make(chan os.Signal, 1)
	signal.Notify(c, shutdownSignals...)
	go func() {
		var cause error = context.Canceled
		select {
		case sig := <-c:
			cause = &SignalError{Signal: sig}
		case <-ctx.Done():
		}
		signal.Stop(c) // default handling restored before ctx is seen done
		cancel(cause)
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// signalled reports whether ctx ended on a signal from SignalContext.
func signalled(ctx context.Context) (*SignalError, bool) {
	var se *SignalError
	ok := errors.As(context.Cause(ctx), &se)
	return se, ok
}
