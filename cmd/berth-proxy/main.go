// Command berth-proxy runs one Berth edge proxy. Settings come from flags,
// BERTH_PROXY_* environment variables and a YAML file (--config), in that
// order of precedence; see --help.
package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/dataplane/proxy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		conf.Exit("berth-proxy", err)
	}
}

func run(args []string) error {
	cfg := proxy.Default()
	fs := pflag.NewFlagSet("berth-proxy", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	tuneGC := conf.GCPercentFlag(fs, os.Getenv)
	return conf.Run(fs, args, "BERTH_PROXY_", func(logger *slog.Logger) (io.Closer, error) {
		if err := tuneGC(); err != nil {
			return nil, err
		}
		return proxy.New(cfg, logger)
	})
}
