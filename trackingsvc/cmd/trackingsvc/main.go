// Command trackingsvc runs the pushmesh trackingsvc gRPC service.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/pushmesh/pushmesh/servicekit/service"
	"github.com/pushmesh/pushmesh/trackingsvc/server"
)

func main() {
	// The first SIGINT/SIGTERM starts the shutdown; a second one exits at once.
	ctx, stop := service.SignalContext(context.Background())
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "trackingsvc:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	return service.Run(ctx, server.Spec(), args, os.Stderr)
}
