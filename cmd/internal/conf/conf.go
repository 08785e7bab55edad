// Package conf fills a command's flag set from, in rising precedence, a YAML
// file, environment variables and the command line, so every Berth binary
// takes its settings the same three ways with one set of names: the YAML
// key and the flag are the same word ("raft-addr"), the variable is the
// prefixed upper-case form (BERTH_RAFT_ADDR).
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
)

// Load parses args into fs (a pflag set; standard-library flag sets join
// it through AddGoFlagSet), then fills every flag the command line left
// unset from the environment (prefix + NAME) and then from the YAML file
// named by the flag fileFlag (if fs has it and it is set). An unknown key in
// the file is an error that lists the known ones.
func Load(fs *pflag.FlagSet, args []string, envPrefix, fileFlag string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := make(map[string]bool)
	fs.Visit(func(f *pflag.Flag) { set[f.Name] = true })

	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if set[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(EnvName(envPrefix, f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", EnvName(envPrefix, f.Name), err))
			}
			set[f.Name] = true
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}

	file := fs.Lookup(fileFlag)
	if file == nil || file.Value.String() == "" {
		return nil
	}
	return loadFile(fs, file.Value.String(), set)
}

// EnvName is the environment variable that sets flag name.
func EnvName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
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
		if fs.Lookup(k) == nil {
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

// scalar turns a YAML value into flag text; a list becomes comma-separated.
func scalar(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
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
	fs.VisitAll(func(f *pflag.Flag) { out = append(out, f.Name) })
	return out
}

// Logger is the JSON slog logger every daemon writes to w, at level
// ("debug", "info", "warn" or "error"). Lines below warn are held up to
// logFlushInterval and written together; close the returned io.Closer to
// write the last of them.
func Logger(w io.Writer, level string) (*slog.Logger, io.Closer, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("log-level: %w", err)
	}
	out := newBufferedOutput(w, logFlushInterval)
	h := flushingHandler{Handler: slog.NewJSONHandler(out, &slog.HandlerOptions{Level: lvl}), out: out}
	return slog.New(h), out, nil
}

// Run is a daemon's life: it adds --config and --log-level to fs, loads
// args, the environment (envPrefix) and the file into it, starts the
// service with a logger, and closes the service on SIGINT or SIGTERM.
func Run(fs *pflag.FlagSet, args []string, envPrefix string, start func(*slog.Logger) (io.Closer, error)) error {
	fs.String("config", "", "YAML file whose keys are these flag names")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := Load(fs, args, envPrefix, "config"); err != nil {
		return err
	}
	logger, logs, err := Logger(os.Stderr, *level)
	if err != nil {
		return err
	}
	defer func() { _ = logs.Close() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	svc, err := start(logger)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return svc.Close()
}

// Exit ends a daemon whose run returned err: silently for --help, else
// with the error on stderr; the status is 2 either way.
func Exit(name string, err error) {
	if !errors.Is(err, pflag.ErrHelp) {
		fmt.Fprintln(os.Stderr, name+":", err)
	}
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
