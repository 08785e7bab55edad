// Command berth-agent runs next to an upstream service and serves it
// through Berth proxies (serve, alias http), relays local TCP connections
// to an endpoint through a proxy (connect), or runs a demo upstream
// (demo-upstream). Every flag can also be set as BERTH_AGENT_<FLAG>
// (upper-case, '-' as '_'); the agent token comes from BERTH_AGENT_TOKEN or
// --token-file.
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
	err := newRootCmd(os.Getenv).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-agent:", err)
		os.Exit(1)
	}
}
