// Command berth-proxy runs one Berth edge proxy. Settings come from flags,
// BERTH_* environment variables and a YAML file (--config), in that order
// of precedence; see --help.
package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/dataplane/proxy"
)

const about = `berth-proxy is a Berth edge proxy: agents hold tunnels to it, clients send it
HTTP and TCP, and it routes each request to a connection of the endpoint,
here or on a peer proxy, as the control plane (--addr) assigns them. The
control-plane token comes from BERTH_TOKEN or --token-file.`

func main() {
	d := conf.NewDaemon("berth-proxy", about, buildinfo.Read(), os.Stdout, os.LookupEnv)
	if err := run(d, os.Args[1:], os.Getenv); err != nil {
		conf.Exit("berth-proxy", err)
	}
}

// flags registers berth-proxy's own flags on d; getenv supplies BERTH_TOKEN
// and GOGC.
func flags(d *conf.Daemon, getenv func(string) string) (cfg *proxy.Config, tuneGC func() error) {
	c := proxy.Default()
	c.ControlPlane.LoadEnv(getenv)
	c.RegisterFlags(d.Flags())
	return &c, conf.GCPercentFlag(d.Flags(), getenv)
}

func run(d *conf.Daemon, args []string, getenv func(string) string) error {
	cfg, tuneGC := flags(d, getenv)
	return d.Run(args, func(logger *slog.Logger) (io.Closer, error) {
		if err := tuneGC(); err != nil {
			return nil, err
		}
		cfg.Collectors = append(cfg.Collectors, d.Build().Collector())
		return proxy.New(*cfg, logger)
	})
}
