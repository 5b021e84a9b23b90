// Command pushctl is the command-line client of pushmesh. Run `pushctl help`.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pushmesh/pushmesh/pushctl/internal/cli"
	"github.com/pushmesh/pushmesh/servicekit/telemetry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(cli.Report(err, os.Stderr))
}

// run sets up tracing (exported only when OTEL_EXPORTER_OTLP_ENDPOINT is
// set, so a journey's trace can start at the command that published it) and
// runs the command.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	shutdown, err := telemetry.SetupTracing(ctx, "pushctl")
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := shutdown(flushCtx); err != nil {
			fmt.Fprintf(stderr, "pushctl: flushing traces: %v\n", err)
		}
	}()
	return cli.Run(ctx, args, stdout, stderr)
}
