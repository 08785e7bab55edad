package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/controlplane/client"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// app holds what every command shares: where output goes, the global flags
// and the pieces built from them.
type app struct {
	stdout, stderr io.Writer

	cfg     client.Config
	output  string
	timeout time.Duration
	verbose bool

	logger  *slog.Logger
	printer printer
	now     func() time.Time
	getenv  func(string) string
	build   buildinfo.Info
}

// newRootCmd builds the berthctl command tree. getenv (normally os.Getenv)
// supplies BERTH_TOKEN and a BERTH_<FLAG> for each global flag.
func newRootCmd(stdout, stderr io.Writer, getenv func(string) string) *cobra.Command {
	return newApp(stdout, stderr, getenv).rootCmd()
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	cfg := client.Default()
	cfg.LoadEnv(getenv)
	return &app{
		stdout:  stdout,
		stderr:  stderr,
		cfg:     cfg,
		output:  formatTable,
		timeout: 30 * time.Second,
		logger:  slog.New(slog.DiscardHandler),
		now:     time.Now,
		getenv:  getenv,
		build:   buildinfo.Read(),
	}
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "berthctl",
		Short: "Operate a Berth control plane",
		Long: `berthctl inspects and operates a Berth cluster through the AdminService of
its control plane. Give several --addr to fail over between nodes.

Every global flag can also be set as BERTH_<FLAG> (upper case, '-' as '_';
shown as [$BERTH_...] after each flag), so BERTH_ADDR, BERTH_INSECURE and
BERTH_TLS_CA mean what they mean to berth-proxy; a flag beats the
environment. The bearer token comes from BERTH_TOKEN or --token-file.`,
		Version:           a.build.String(),
		SilenceErrors:     true,
		SilenceUsage:      true,
		PersistentPreRunE: a.setup,
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, cmd.CommandPath())
	})

	fs := root.PersistentFlags()
	a.cfg.RegisterFlags(fs)
	fs.StringVarP(&a.output, "output", "o", a.output, "output format: table, json or yaml")
	fs.DurationVar(&a.timeout, "timeout", a.timeout,
		"deadline for the whole command, retries included (watch: only when set explicitly)")
	fs.BoolVarP(&a.verbose, "verbose", "v", false, "log debug details to stderr")

	root.AddCommand(
		a.statusCmd(),
		a.cordonCmd(),
		a.uncordonCmd(),
		a.drainCmd(),
		a.rebalanceCmd(),
		a.proxyCmd(),
		a.serverCmd(),
		a.snapshotCmd(),
		a.watchCmd(),
		a.tlsCmd(),
		a.tokenCmd(),
		a.benchCmd(),
		a.versionCmd(),
	)
	conf.AnnotateEnv(fs)
	return root
}

// setup runs before every command: the environment, logging and output
// format.
func (a *app) setup(cmd *cobra.Command, _ []string) error {
	lookup := func(k string) (string, bool) { v := a.getenv(k); return v, v != "" }
	if err := conf.Fill(cmd.Root().PersistentFlags(), lookup, ""); err != nil {
		return err
	}
	level := slog.LevelWarn
	if a.verbose {
		level = slog.LevelDebug
	}
	a.logger = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level}))
	f, err := parseFormat(a.output)
	if err != nil {
		return err
	}
	a.printer = printer{w: a.stdout, format: f}
	if a.timeout < 0 {
		return fmt.Errorf("timeout: must not be negative, got %s", a.timeout)
	}
	return nil
}

// admin connects (lazily; nothing is dialed until the first call) and hands
// the AdminService client to fn.
func (a *app) admin(fn func(berthv1.AdminServiceClient) error) error {
	c, err := client.New(a.cfg, a.logger)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			a.logger.Debug("close client", "err", err)
		}
	}()
	return fn(c.Admin())
}

// callContext bounds a command by --timeout (0: no deadline).
func (a *app) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout > 0 {
		return context.WithTimeout(ctx, a.timeout)
	}
	return context.WithCancel(ctx)
}

// execute runs root with args and returns the process exit code, printing
// any error as "error: <message>".
func execute(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer) int {
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		_, _ = fmt.Fprintf(stderr, "error: %s\n", err)
		return 1
	}
	return 0
}

// rpcError is a failed call, shown as "<op>: <code>: <server message>"
// rather than gRPC's "rpc error: code = ... desc = ..." form.
type rpcError struct {
	op  string
	err error
}

func callFailed(op string, err error) error {
	return &rpcError{op: op, err: err}
}

func (e *rpcError) Error() string {
	var withStatus interface{ GRPCStatus() *status.Status }
	if !errors.As(e.err, &withStatus) {
		return e.op + ": " + e.err.Error()
	}
	st := withStatus.GRPCStatus()
	msg := fmt.Sprintf("%s: %s: %s", e.op, st.Code(), st.Message())
	var re *client.RetryError
	if errors.As(e.err, &re) {
		n := fmt.Sprintf("%d attempts", re.Attempts)
		if re.Attempts == 1 {
			n = "1 attempt"
		}
		if re.Stopped != nil {
			msg += fmt.Sprintf(" (stopped after %s: %v)", n, re.Stopped)
		} else {
			msg += fmt.Sprintf(" (gave up after %s)", n)
		}
	}
	return msg
}

func (e *rpcError) Unwrap() error { return e.err }
