// Command berthctl is the operator CLI of Berth: cluster and registry
// status, cordon/uncordon/drain of proxies, and a live event watch.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := execute(ctx, newRootCmd(os.Stdout, os.Stderr, os.Getenv), os.Args[1:], os.Stderr)
	stop()
	os.Exit(code)
}
