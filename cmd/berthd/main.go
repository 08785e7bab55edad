// Command berthd runs one Berth control-plane node. Settings come from
// flags, BERTH_* environment variables and a YAML file (--config), in that
// order of precedence; see --help.
package main

import (
	"errors"
	"io"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/raftmetrics"
	"github.com/berthhq/berth/dataplane/debughttp"
)

const about = `berthd runs one node of a Berth control plane: Raft, the registry and the
gRPC services proxies, agents and berthctl use. Its /metrics, /healthz,
/readyz and the web console (/ui/) are on --http-addr.`

func main() {
	d := conf.NewDaemon("berthd", about, buildinfo.Read(), os.Stdout, os.LookupEnv)
	if err := run(d, os.Args[1:]); err != nil {
		conf.Exit("berthd", err)
	}
}

// flags registers berthd's own flags on d.
func flags(d *conf.Daemon) (cfg *controlplane.Config, pprof *bool) {
	c := controlplane.Default()
	c.RegisterFlags(d.Flags())
	return &c, d.Flags().Bool("pprof", false, "serve net/http/pprof under /debug/pprof/ on --http-addr")
}

func run(d *conf.Daemon, args []string) error {
	cfg, pprof := flags(d)
	return d.Run(args, func(logger *slog.Logger) (io.Closer, error) {
		reg := prometheus.NewRegistry()
		if err := d.Build().Register(reg); err != nil {
			return nil, err
		}
		// One node per process: raft's go-metrics global can be this
		// node's.
		if err := raftmetrics.Register(reg); err != nil {
			return nil, err
		}
		deps := controlplane.Deps{Registry: reg, Build: d.Build().Proto()}
		if *pprof {
			if cfg.HTTPAddr == "" {
				return nil, errors.New("pprof: needs --http-addr")
			}
			deps.DebugHandlers = debughttp.Register
		}
		return controlplane.New(*cfg, logger, deps)
	})
}
