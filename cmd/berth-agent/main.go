// Command berth-agent runs next to an upstream service and serves it
// through Berth proxies (serve, alias http), relays local TCP connections
// to an endpoint through a proxy (connect), or runs a demo upstream
// (demo-upstream). Every flag can also be set as BERTH_<FLAG> (upper-case,
// '-' as '_') or in a YAML file (--config); the agent token comes from
// BERTH_AGENT_TOKEN or --token-file.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd(buildinfo.Read(), os.LookupEnv).ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth-agent:", err)
		os.Exit(1)
	}
}
