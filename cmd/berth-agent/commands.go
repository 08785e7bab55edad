package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/agent/demo"
)

// envToken holds the agent token. It is not a flag (flags show in ps), so
// it is named for what it is rather than after a flag.
const envToken = conf.EnvPrefix + "AGENT_TOKEN"

const about = `berth-agent runs next to an upstream service and serves it through Berth
proxies (serve), relays local TCP connections to an endpoint through a proxy
(connect), or runs a demo upstream (demo-upstream).

Every flag can also be set as BERTH_<FLAG> (upper case, '-' as '_'; shown as
[$BERTH_...] after each flag) or as a key of the YAML file given with
--config: the keys are the flag names of the command run, a list is a YAML
list (endpoint: [web=127.0.0.1:8080, api=127.0.0.1:9000]) or a map
(endpoint: {web: 127.0.0.1:8080}), and an unknown key is an error. A flag
beats the environment, which beats the file. The agent token comes from
` + envToken + ` or --token-file.`

// newRootCmd builds the command tree; lookup (os.LookupEnv) supplies the
// BERTH_* settings and build is what --version prints.
func newRootCmd(build buildinfo.Info, lookup conf.LookupEnv) *cobra.Command {
	getenv := func(k string) string { v, _ := lookup(k); return v }
	root := &cobra.Command{
		Use:           "berth-agent",
		Short:         "Serve local services through Berth proxies",
		Long:          about,
		Version:       build.String(),
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return conf.Fill(cmd.Flags(), lookup, "config")
		},
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	pf := root.PersistentFlags()
	pf.String("config", "", "YAML file whose keys are the command's flag names")
	format, level := conf.LogFlags(pf, "text")
	logger := func() (*slog.Logger, error) {
		h, err := conf.Handler(os.Stderr, *format, *level)
		if err != nil {
			return nil, err
		}
		return slog.New(h), nil
	}
	root.AddCommand(serveCmd(build, getenv, logger), connectCmd(logger), demoCmd(logger))
	conf.AnnotateEnv(pf)
	for _, c := range root.Commands() {
		conf.AnnotateEnv(c.LocalNonPersistentFlags())
	}
	return root
}

func serveCmd(build buildinfo.Info, getenv func(string) string, logger func() (*slog.Logger, error)) *cobra.Command {
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
				info := prometheus.NewRegistry() // berth_build_info, beside the agent's own series
				if err := build.Register(info); err != nil {
					_ = a.Close()
					return err
				}
				admin.Metrics = prometheus.Gatherers{a.Metrics(), info}
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
	var listen, name, tcpEcho string
	cmd := &cobra.Command{
		Use:   "demo-upstream --listen 127.0.0.1:8081 [--name N] [--tcp-echo ADDR]",
		Short: "Run a tiny demo HTTP service (/, /echo, /ws, /stream?n=), and a raw TCP echo",
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
			if tcpEcho == "" {
				return demo.Serve(cmd.Context(), ln, name, log)
			}
			echoLn, err := net.Listen("tcp", tcpEcho)
			if err != nil {
				_ = ln.Close()
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			echoErr := make(chan error, 1)
			go func() { echoErr <- demo.ServeTCPEcho(ctx, echoLn, log) }()
			err = demo.Serve(ctx, ln, name, log)
			cancel()
			return errors.Join(err, <-echoErr)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8081", "address to serve on")
	cmd.Flags().StringVar(&tcpEcho, "tcp-echo", "", "also echo raw TCP on this address (stream benchmarks)")
	cmd.Flags().StringVar(&name, "name", "", "instance name in replies (default: hostname)")
	return cmd
}
