// Package conf fills a command's flag set from, in rising precedence, a YAML
// file, environment variables and the command line, so every Berth binary
// takes its settings the same three ways with one set of names: the YAML
// key and the flag are the same word ("raft-addr"), the variable is the
// BERTH_ upper-case form (BERTH_RAFT_ADDR) whichever binary reads it. It
// also holds what the daemons share: --log-format, --log-level, --version
// and --help on stdout.
package conf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
)

// EnvPrefix starts every Berth environment variable: a flag --data-dir of
// any binary is BERTH_DATA_DIR (EnvName). Where binaries share a flag
// (berth-proxy and berthctl both take --addr) the variable means the same.
const EnvPrefix = "BERTH_"

// EnvHelp and FileHelp end a daemon's --help (Daemon.Help).
const EnvHelp = `Every flag above can also be set as BERTH_<FLAG> (upper case, '-' as '_'; shown
as [$BERTH_...] after each flag)`

const FileHelp = ` or as a key of the YAML file given with --config:
the keys are the flag names (data-dir: /var/lib/berth), a list is a YAML list
or a comma-separated string, and an unknown key is an error. A flag beats
the environment, which beats the file.`

// LookupEnv reads an environment variable, as os.LookupEnv does.
type LookupEnv func(string) (string, bool)

// notSetting says no variable or file key sets flag name: it asks for
// something (help, the version) rather than configuring.
func notSetting(name string) bool { return name == "help" || name == "version" }

// Load parses args into fs and then fills it from the environment and the
// file (Fill).
func Load(fs *pflag.FlagSet, args []string, lookup LookupEnv, fileFlag string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	return Fill(fs, lookup, fileFlag)
}

// Fill sets every flag of fs the command line left unset from its
// environment variable (EnvName), and then those still unset from the YAML
// file named by the flag fileFlag (if fs has it and it is set). An unknown
// key in the file is an error that names it and lists the known ones.
func Fill(fs *pflag.FlagSet, lookup LookupEnv, fileFlag string) error {
	set := make(map[string]bool)
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			set[f.Name] = true
			return
		}
		if notSetting(f.Name) {
			return
		}
		if v, ok := lookup(EnvName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", EnvName(f.Name), err))
			}
			set[f.Name] = true
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if fileFlag == "" {
		return nil
	}
	file := fs.Lookup(fileFlag)
	if file == nil || file.Value.String() == "" {
		return nil
	}
	return loadFile(fs, file.Value.String(), set)
}

// EnvName is the environment variable that sets flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// AnnotateEnv appends each flag's variable to its help text, so --help
// names exactly the variables Fill reads.
func AnnotateEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if notSetting(f.Name) || strings.Contains(f.Usage, "[$"+EnvPrefix) {
			return
		}
		f.Usage += " [$" + EnvName(f.Name) + "]"
	})
}

func loadFile(fs *pflag.FlagSet, path string, set map[string]bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if fs.Lookup(k) == nil || notSetting(k) {
			return fmt.Errorf("config file %s: unknown key %q (keys are the flag names: %s)", path, k, strings.Join(flagNames(fs), ", "))
		}
		if set[k] {
			continue
		}
		if err := fs.Set(k, scalar(values[k])); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, k, err)
		}
	}
	return nil
}

// scalar turns a YAML value into flag text; a list becomes comma-separated
// and a map key=value pairs (as --label and --endpoint take them).
func scalar(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + scalar(x[k])
		}
		return strings.Join(parts, ",")
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = scalar(e)
		}
		return strings.Join(parts, ",")
	default:
		return fmt.Sprint(x)
	}
}

func flagNames(fs *pflag.FlagSet) []string {
	var out []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !notSetting(f.Name) {
			out = append(out, f.Name)
		}
	})
	return out
}

// Handler is the slog handler a binary logs through: format "json" or
// "text", at level "debug", "info", "warn" or "error".
func Handler(w io.Writer, format, level string) (slog.Handler, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	case "text":
		return slog.NewTextHandler(w, opts), nil
	}
	return nil, fmt.Errorf("log-format %q: want json or text", format)
}

// Logger is the logger every daemon writes to w (Handler's format and
// level). Lines below warn are held up to logFlushInterval and written
// together; close the returned io.Closer to write the last of them.
func Logger(w io.Writer, format, level string) (*slog.Logger, io.Closer, error) {
	out := newBufferedOutput(w, logFlushInterval)
	h, err := Handler(out, format, level)
	if err != nil {
		_ = out.Close()
		return nil, nil, err
	}
	return slog.New(flushingHandler{Handler: h, out: out}), out, nil
}

// LogFlags registers --log-format (default format) and --log-level on fs.
func LogFlags(fs *pflag.FlagSet, format string) (logFormat, logLevel *string) {
	logFormat = fs.String("log-format", format, "log line format: json or text")
	logLevel = fs.String("log-level", "info", "debug, info, warn or error")
	return logFormat, logLevel
}

// Daemon is the command line of a daemon (berthd, berth-proxy): its own
// flags on Flags plus --config, --log-format, --log-level and --version.
type Daemon struct {
	name, about string
	build       buildinfo.Info
	stdout      io.Writer
	lookup      LookupEnv

	fs                  *pflag.FlagSet
	logFormat, logLevel *string
	version             *bool
}

// NewDaemon starts the command line of daemon name; about opens its help.
// The process's build, standard output and environment come in so tests
// can give their own.
func NewDaemon(name, about string, build buildinfo.Info, stdout io.Writer, lookup LookupEnv) *Daemon {
	d := &Daemon{name: name, about: about, build: build, stdout: stdout, lookup: lookup,
		fs: pflag.NewFlagSet(name, pflag.ContinueOnError)}
	// pflag would print errors and usage to stderr itself; Parse and Exit
	// say it once, help on stdout.
	d.fs.SetOutput(io.Discard)
	d.fs.Usage = func() {}
	d.fs.String("config", "", "YAML file whose keys are these flag names")
	d.logFormat, d.logLevel = LogFlags(d.fs, "json")
	d.version = d.fs.Bool("version", false, "print the version and exit")
	return d
}

// Build is the build --version prints.
func (d *Daemon) Build() buildinfo.Info { return d.build }

// Flags is where the daemon registers its own flags, before Parse.
func (d *Daemon) Flags() *pflag.FlagSet { return d.fs }

// Parse parses args, then fills the flags left unset from the environment
// and the --config file. For --help it prints the help to stdout and
// returns pflag.ErrHelp; with --version it only parses.
func (d *Daemon) Parse(args []string) error {
	AnnotateEnv(d.fs)
	if err := d.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			_, _ = fmt.Fprint(d.stdout, d.Help())
		}
		return err
	}
	if *d.version {
		return nil
	}
	return Fill(d.fs, d.lookup, "config")
}

// Help is the daemon's --help text.
func (d *Daemon) Help() string {
	AnnotateEnv(d.fs)
	return fmt.Sprintf("%s\n\nUsage:\n  %s [flags]\n\nFlags:\n%s\n%s%s\n", d.about, d.name, d.fs.FlagUsages(), EnvHelp, FileHelp)
}

// Run is a daemon's life: it parses args (Parse), prints the version for
// --version, or starts the service with a logger on stderr and closes it
// on SIGINT or SIGTERM.
func (d *Daemon) Run(args []string, start func(*slog.Logger) (io.Closer, error)) error {
	if err := d.Parse(args); err != nil {
		return err
	}
	if *d.version {
		_, err := fmt.Fprintln(d.stdout, d.name, d.build)
		return err
	}
	logger, logs, err := Logger(os.Stderr, *d.logFormat, *d.logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = logs.Close() }()
	logger.Info("starting", "version", d.build.Version, "revision", d.build.Revision, "go", d.build.GoVersion)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	svc, err := start(logger)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return svc.Close()
}

// Exit ends a daemon whose run returned err: with status 0 after --help,
// else with the error on stderr and status 2.
func Exit(name string, err error) {
	if errors.Is(err, pflag.ErrHelp) {
		os.Exit(0)
	}
	fmt.Fprintf(os.Stderr, "%s: %v (see '%s --help')\n", name, err, name)
	os.Exit(2)
}

// DataPlaneGCPercent is the garbage collector's target for the data-plane
// daemons (berth-proxy, berth-agent) unless GOGC or --gc-percent says
// otherwise. Their live heap is small and nearly all their garbage is
// per request, so collecting at 4x the live heap instead of 2x costs a
// few MiB and saved a fifth of the proxy's CPU per request in
// deploy/local/bench (docs/BENCHMARKS.md).
const DataPlaneGCPercent = 400

// GCPercentFlag registers --gc-percent on fs. Apply the returned function
// once flags are parsed: it sets the target the flag gives, or, when the
// flag was not given and GOGC is unset, DataPlaneGCPercent; an explicit
// GOGC is left to the runtime.
func GCPercentFlag(fs *pflag.FlagSet, getenv func(string) string) (apply func() error) {
	pct := fs.Int("gc-percent", DataPlaneGCPercent, "garbage collector target percentage (GOGC); -1 turns collection off")
	return func() error {
		if !fs.Changed("gc-percent") && getenv("GOGC") != "" {
			return nil
		}
		if *pct < -1 {
			return fmt.Errorf("gc-percent %d: must be -1 (off) or at least 0", *pct)
		}
		debug.SetGCPercent(*pct)
		return nil
	}
}
