// Package conftest checks a binary's configuration surface: that every
// environment variable its --help names is one of its flags and is really
// read into that flag.
package conftest

import (
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/cmd/internal/conf"
)

var envInHelp = regexp.MustCompile(`\[\$(` + conf.EnvPrefix + `[A-Z0-9_]+)\]`)

// EnvNamed returns the variables help names as [$BERTH_...].
func EnvNamed(help string) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range envInHelp.FindAllStringSubmatch(help, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			out = append(out, m[1])
		}
	}
	sort.Strings(out)
	return out
}

// CheckEveryFlagFromEnv checks that help names the variable of every flag
// of fs (but help and version), that each variable named is a flag's, and
// that fill — the binary's own loading, run with those variables set to
// sample values (override gives a flag's value where any string will not
// do) — sets each flag to its sample.
func CheckEveryFlagFromEnv(t *testing.T, help string, fs *pflag.FlagSet, override map[string]string, fill func(env map[string]string) error) {
	t.Helper()
	named := map[string]bool{}
	for _, v := range EnvNamed(help) {
		named[v] = true
	}
	env := map[string]string{}
	want := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || f.Name == "version" {
			return
		}
		v := conf.EnvName(f.Name)
		if !named[v] {
			t.Errorf("--help does not name %s for --%s", v, f.Name)
		}
		delete(named, v)
		sample, ok := override[f.Name]
		if !ok {
			sample = sampleFor(t, f)
		}
		env[v], want[f.Name] = sample, sample
	})
	for v := range named {
		t.Errorf("--help names %s, which sets no flag", v)
	}
	if err := fill(env); err != nil {
		t.Fatalf("loading with every variable set: %v", err)
	}
	fs.VisitAll(func(f *pflag.Flag) {
		w, ok := want[f.Name]
		if !ok {
			return
		}
		got := f.Value.String()
		switch {
		case !f.Changed:
			t.Errorf("%s=%q did not set --%s", conf.EnvName(f.Name), w, f.Name)
		case got != "" && !strings.Contains(got, strings.Trim(w, "[]")):
			t.Errorf("%s=%q set --%s to %q", conf.EnvName(f.Name), w, f.Name, got)
		}
	})
}

// sampleFor is a value of f's type unlike its default.
func sampleFor(t *testing.T, f *pflag.Flag) string {
	switch f.Value.Type() {
	case "bool":
		if f.DefValue == "true" {
			return "false"
		}
		return "true"
	case "duration":
		return "7s"
	case "int", "int64", "uint", "uint32", "uint64":
		return "7"
	case "float64":
		return "0.25"
	case "string":
		return "s7"
	case "stringSlice", "list":
		return "h7:1"
	case "stringToString":
		return "k7=v"
	}
	t.Errorf("--%s: no sample for flag type %s; add one", f.Name, f.Value.Type())
	return ""
}
