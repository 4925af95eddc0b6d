// Command bench runs daoli's side-by-side benchmarks (package harness) and
// publishes their results:
//
//	bench [--quick] [--json FILE] [--readme FILE] [--daoli BIN] ...
//	bench netbench serve|rr|crr|stream|udp ...   (the load tools, run inside namespaces)
//
// It needs root; `make bench` is the one command that installs what it
// needs, builds daoli and runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal unwinds (and removes everything); a second
		// one kills at once.
		<-ctx.Done()
		stop()
	}()
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
