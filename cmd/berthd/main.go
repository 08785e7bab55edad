// Command berthd runs one Berth control-plane node. Settings come from
// flags, BERTH_* environment variables and a YAML file (--config), in that
// order of precedence; see --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/controlplane"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "berthd:", err)
		}
		os.Exit(2)
	}
}

func run(args []string) error {
	cfg := controlplane.Default()
	goFlags := flag.NewFlagSet("berthd", flag.ContinueOnError)
	cfg.RegisterFlags(goFlags)
	fs := pflag.NewFlagSet("berthd", pflag.ContinueOnError)
	fs.AddGoFlagSet(goFlags)
	fs.String("config", "", "YAML file whose keys are these flag names")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := conf.Load(fs, args, "BERTH_", "config"); err != nil {
		return err
	}
	logger, err := conf.Logger(*level)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	node, err := controlplane.New(cfg, logger, controlplane.Deps{})
	if err != nil {
		return err
	}
	<-ctx.Done()
	return node.Close()
}
