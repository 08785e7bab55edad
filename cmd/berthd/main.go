// Command berthd runs one Berth control-plane node. Settings come from
// flags, BERTH_* environment variables and a YAML file (--config), in that
// order of precedence; see --help.
package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/raftmetrics"
	"github.com/berthhq/berth/dataplane/debughttp"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		conf.Exit("berthd", err)
	}
}

func run(args []string) error {
	cfg := controlplane.Default()
	goFlags := flag.NewFlagSet("berthd", flag.ContinueOnError)
	cfg.RegisterFlags(goFlags)
	fs := pflag.NewFlagSet("berthd", pflag.ContinueOnError)
	fs.AddGoFlagSet(goFlags)
	pprof := fs.Bool("pprof", false, "serve net/http/pprof under /debug/pprof/ on --http-addr")
	return conf.Run(fs, args, "BERTH_", func(logger *slog.Logger) (io.Closer, error) {
		// One node per process: raft's go-metrics global can be this
		// node's.
		deps := controlplane.Deps{Registry: prometheus.NewRegistry()}
		if err := raftmetrics.Register(deps.Registry); err != nil {
			return nil, err
		}
		if *pprof {
			if cfg.HTTPAddr == "" {
				return nil, errors.New("pprof: needs --http-addr")
			}
			deps.DebugHandlers = debughttp.Register
		}
		return controlplane.New(cfg, logger, deps)
	})
}
