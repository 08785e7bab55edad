// Command berth-proxy runs one Berth edge proxy. Settings come from flags,
// BERTH_PROXY_* environment variables and a YAML file (--config), in that
// order of precedence; see --help.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/dataplane/proxy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "berth-proxy:", err)
		}
		os.Exit(2)
	}
}

func run(args []string) error {
	cfg := proxy.Default()
	fs := pflag.NewFlagSet("berth-proxy", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	fs.String("config", "", "YAML file whose keys are these flag names")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := conf.Load(fs, args, "BERTH_PROXY_", "config"); err != nil {
		return err
	}
	logger, err := conf.Logger(*level)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	p, err := proxy.New(cfg, logger)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return p.Close()
}
