// Command deliverysvc runs the pushmesh deliverysvc gRPC service.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/pushmesh/pushmesh/deliverysvc/server"
	"github.com/pushmesh/pushmesh/servicekit/service"
)

func main() {
	server.TuneRuntime()
	// The first SIGINT/SIGTERM starts the shutdown; a second one exits at once.
	ctx, stop := service.SignalContext(context.Background())
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "deliverysvc:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	return service.Run(ctx, server.Spec(), args, os.Stderr)
}
