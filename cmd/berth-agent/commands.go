package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/agent/demo"
)

const (
	envPrefix = "BERTH_AGENT_"
	envToken  = envPrefix + "TOKEN"
)

// newRootCmd builds the command tree; getenv (os.Getenv) supplies the
// BERTH_AGENT_* settings.
func newRootCmd(getenv func(string) string) *cobra.Command {
	var level string
	root := &cobra.Command{
		Use:           "berth-agent",
		Short:         "Serve local services through Berth proxies",
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return applyEnv(cmd.Flags(), getenv)
		},
	}
	root.PersistentFlags().StringVar(&level, "log-level", "info", "debug, info, warn or error")
	logger := func() (*slog.Logger, error) {
		var lvl slog.Level
		if err := lvl.UnmarshalText([]byte(level)); err != nil {
			return nil, fmt.Errorf("log-level: %w", err)
		}
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})), nil
	}
	root.AddCommand(serveCmd(getenv, logger), connectCmd(logger), demoCmd(logger))
	return root
}

func serveCmd(getenv func(string) string, logger func() (*slog.Logger, error)) *cobra.Command {
	cfg := agent.Default()
	var (
		endpoints []string
		tlsOpts   agent.TLSOptions
		tokenFile string
		httpAddr  string
		admin     agent.AdminOptions
		tuneGC    func() error
	)
	cmd := &cobra.Command{
		Use:     "serve --proxy HOST:PORT --endpoint NAME=LOCAL_ADDR [--endpoint ...]",
		Aliases: []string{"http"},
		Short:   "Keep a tunnel to a proxy and pipe each stream to the endpoint's local address",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := tuneGC(); err != nil {
				return err
			}
			targets, names, err := parseEndpoints(endpoints)
			if err != nil {
				return err
			}
			cfg.Endpoints = names
			cfg.Token = getenv(envToken)
			if tokenFile != "" {
				if cfg.Token, err = agent.ReadToken(tokenFile); err != nil {
					return err
				}
			}
			if cfg.TLS, err = tlsOpts.Load(); err != nil {
				return err
			}
			log, err := logger()
			if err != nil {
				return err
			}
			if admin.Pprof && httpAddr == "" {
				return errors.New("pprof: needs --http-addr")
			}
			a, err := agent.New(cfg, log)
			if err != nil {
				return err
			}
			if httpAddr != "" {
				admin.Metrics = a.Metrics()
				ln, err := net.Listen("tcp", httpAddr)
				if err != nil {
					_ = a.Close()
					return fmt.Errorf("http-addr: %w", err)
				}
				go func() {
					if err := agent.ServeAdmin(cmd.Context(), ln, admin); err != nil {
						log.Error("admin http server stopped", "err", err)
					}
				}()
			}
			fwd := make(chan error, 1)
			go func() { fwd <- agent.Forward(a, targets, log) }()
			err = a.Run(cmd.Context())
			_ = a.Close()
			return errors.Join(err, <-fwd)
		},
	}
	fs := cmd.Flags()
	cfg.RegisterFlags(fs)
	fs.StringSliceVar(&endpoints, "endpoint", nil, "endpoint to serve as NAME=LOCAL_HOST:PORT; repeat or comma-separate")
	tuneGC = conf.GCPercentFlag(fs, getenv)
	fs.StringVar(&httpAddr, "http-addr", "", "address for /metrics and /healthz (and /debug/pprof/ with --pprof); empty: off")
	fs.BoolVar(&admin.Pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ on --http-addr")
	fs.StringVar(&tokenFile, "token-file", "", "file holding the agent token (or set "+envToken+")")
	tlsOpts.RegisterFlags(fs)
	return cmd
}

// parseEndpoints turns NAME=ADDR pairs into targets and the endpoint list.
func parseEndpoints(pairs []string) (map[string]string, []string, error) {
	if len(pairs) == 0 {
		return nil, nil, errors.New("endpoint: at least one --endpoint NAME=LOCAL_ADDR is required")
	}
	targets := make(map[string]string, len(pairs))
	names := make([]string, 0, len(pairs))
	for _, p := range pairs {
		name, addr, ok := strings.Cut(p, "=")
		name, addr = strings.TrimSpace(name), strings.TrimSpace(addr)
		if !ok || name == "" || addr == "" {
			return nil, nil, fmt.Errorf("endpoint %q: want NAME=LOCAL_HOST:PORT", p)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, nil, fmt.Errorf("endpoint %s: local address: %w", name, err)
		}
		if _, dup := targets[name]; dup {
			return nil, nil, fmt.Errorf("endpoint %s: given twice", name)
		}
		targets[name] = addr
		names = append(names, name)
	}
	return targets, names, nil
}

func connectCmd(logger func() (*slog.Logger, error)) *cobra.Command {
	var (
		proxies []string
		listen  string
		tlsOpts agent.TLSOptions
	)
	cmd := &cobra.Command{
		Use:   "connect ENDPOINT --proxy HOST:PORT --listen 127.0.0.1:9000",
		Short: "Relay local TCP connections to an endpoint through a proxy's downstream port",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(proxies) == 0 {
				return errors.New("proxy: a proxy downstream address is required")
			}
			tlsCfg, err := tlsOpts.Load()
			if err != nil {
				return err
			}
			log, err := logger()
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			log.Info("relaying", "listen", ln.Addr().String(), "endpoint", args[0], "proxies", proxies)
			return agent.Relay(cmd.Context(), ln, proxies, args[0], tlsCfg, log)
		},
	}
	fs := cmd.Flags()
	fs.StringSliceVar(&proxies, "proxy", nil, "proxy downstream (HTTP) address host:port; repeat to fail over")
	fs.StringVar(&listen, "listen", "127.0.0.1:9000", "local address to accept connections on")
	tlsOpts.RegisterFlags(fs)
	return cmd
}

func demoCmd(logger func() (*slog.Logger, error)) *cobra.Command {
	var listen, name string
	cmd := &cobra.Command{
		Use:   "demo-upstream --listen 127.0.0.1:8081 [--name N]",
		Short: "Run a tiny demo HTTP service (/, /echo, /ws, /stream?n=)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger()
			if err != nil {
				return err
			}
			if name == "" {
				if name, err = os.Hostname(); err != nil {
					name = "demo"
				}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			return demo.Serve(cmd.Context(), ln, name, log)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8081", "address to serve on")
	cmd.Flags().StringVar(&name, "name", "", "instance name in replies (default: hostname)")
	return cmd
}

// applyEnv sets every flag the command line left alone from
// BERTH_AGENT_<NAME>, if that variable is set.
func applyEnv(fs *pflag.FlagSet, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := conf.EnvName(envPrefix, f.Name)
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	})
	return errors.Join(errs...)
}
