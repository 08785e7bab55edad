package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/cmd/internal/conftest"
)

func mapEnv(env map[string]string) conf.LookupEnv {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

func TestParseEndpoints(t *testing.T) {
	targets, names, err := parseEndpoints([]string{"web=127.0.0.1:8080", " api = localhost:81 "})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "web,api" || targets["web"] != "127.0.0.1:8080" || targets["api"] != "localhost:81" {
		t.Fatalf("targets = %v, names = %v", targets, names)
	}
	for _, bad := range [][]string{nil, {"web"}, {"=1.2.3.4:5"}, {"web=noport"}, {"web=a:1", "web=b:2"}} {
		if _, _, err := parseEndpoints(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestEnvAndFlags(t *testing.T) {
	env := map[string]string{
		"BERTH_PROXY":       "a:1,b:2",
		"BERTH_ENDPOINT":    "web=127.0.0.1:1",
		"BERTH_SLOT":        "from-env",
		"BERTH_BACKOFF_MAX": "nonsense",
	}
	cmd := newRootCmd(buildinfo.Info{}, mapEnv(env))
	cmd.SetArgs([]string{"http", "--slot", "from-flag"})
	err := cmd.Execute()
	// The bad duration in the environment is reported with its variable.
	if err == nil || !strings.Contains(err.Error(), "BERTH_BACKOFF_MAX") {
		t.Fatalf("err = %v", err)
	}
	serve, _, err := cmd.Find([]string{"serve"})
	if err != nil {
		t.Fatal(err)
	}
	fs := serve.Flags()
	if v, _ := fs.GetStringSlice("proxy"); strings.Join(v, ",") != "a:1,b:2" {
		t.Errorf("proxy = %v", v)
	}
	if v, _ := fs.GetString("slot"); v != "from-flag" {
		t.Errorf("slot = %q, the flag should win over the environment", v)
	}
}

func TestCommandsRefuseBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"serve", "--proxy", "127.0.0.1:1"},                                  // no endpoint
		{"serve", "--endpoint", "web=127.0.0.1:1"},                           // no proxy
		{"serve", "--proxy", "127.0.0.1:1", "--endpoint", "Web=127.0.0.1:1"}, // bad name
		{"connect", "db"}, // no proxy
		{"connect"},       // no endpoint
		{"serve", "--log-level", "loud", "--proxy", "127.0.0.1:1", "--endpoint", "web=127.0.0.1:1"},
	} {
		cmd := newRootCmd(buildinfo.Info{}, mapEnv(nil))
		cmd.SetArgs(args)
		if err := cmd.Execute(); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

// TestEveryFlagFromItsVariable runs each command (its work replaced by a
// no-op) with every variable its --help names set, through the command
// tree's own loading.
func TestEveryFlagFromItsVariable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(file, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"serve", "connect", "demo-upstream"} {
		t.Run(name, func(t *testing.T) {
			var help bytes.Buffer
			root := newRootCmd(buildinfo.Info{}, mapEnv(nil))
			root.SetOut(&help)
			root.SetArgs([]string{name, "--help"})
			if err := root.Execute(); err != nil {
				t.Fatal(err)
			}
			var env map[string]string
			root = newRootCmd(buildinfo.Info{}, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
			sub, _, err := root.Find([]string{name})
			if err != nil {
				t.Fatal(err)
			}
			sub.RunE = func(*cobra.Command, []string) error { return nil }
			sub.InheritedFlags() // merges the root's flags into sub.Flags()
			args := []string{name}
			if name == "connect" {
				args = append(args, "db")
			}
			conftest.CheckEveryFlagFromEnv(t, help.String(), sub.Flags(), map[string]string{"config": file}, func(e map[string]string) error {
				env = e
				root.SetArgs(args)
				return root.Execute()
			})
		})
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("agent.yaml", `proxy: [edge-1:8443, edge-2:8443]
endpoint:
  web: 127.0.0.1:8080
  api: 127.0.0.1:9000
slot: from-file
log-format: json
`)
	parse := func(t *testing.T, env map[string]string, args ...string) (*cobra.Command, error) {
		t.Helper()
		root := newRootCmd(buildinfo.Info{}, mapEnv(env))
		serve, _, err := root.Find([]string{"serve"})
		if err != nil {
			t.Fatal(err)
		}
		serve.RunE = func(*cobra.Command, []string) error { return nil }
		root.SetArgs(append([]string{"serve"}, args...))
		return serve, root.Execute()
	}

	serve, err := parse(t, map[string]string{"BERTH_SLOT": "from-env"}, "--config", good, "--proxy", "edge-3:8443")
	if err != nil {
		t.Fatal(err)
	}
	fs := serve.Flags()
	if v, _ := fs.GetStringSlice("proxy"); strings.Join(v, ",") != "edge-3:8443" {
		t.Errorf("proxy = %v: the flag should win over the file", v)
	}
	if v, _ := fs.GetStringSlice("endpoint"); strings.Join(v, ",") != "api=127.0.0.1:9000,web=127.0.0.1:8080" {
		t.Errorf("endpoint = %v: both endpoints of the file's map", v)
	}
	if v, _ := fs.GetString("slot"); v != "from-env" {
		t.Errorf("slot = %q: the environment should win over the file", v)
	}
	if v, _ := fs.GetString("log-format"); v != "json" {
		t.Errorf("log-format = %q", v)
	}

	// The file may also come from the environment.
	serve, err = parse(t, map[string]string{"BERTH_CONFIG": good})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := serve.Flags().GetStringSlice("proxy"); strings.Join(v, ",") != "edge-1:8443,edge-2:8443" {
		t.Errorf("proxy from BERTH_CONFIG's file = %v", v)
	}

	for name, tc := range map[string]struct{ body, want string }{
		"unknown key":  {"proxy: [a:1]\nendpoints: [web=127.0.0.1:1]\n", `unknown key "endpoints"`},
		"bad duration": {"backoff-max: soon\n", "backoff-max"},
		"not yaml":     {"proxy: [\n", ""}, // the error names the file
	} {
		t.Run(name, func(t *testing.T) {
			path := write("agent-"+strings.ReplaceAll(name, " ", "-")+".yaml", tc.body)
			_, err := parse(t, nil, "--config", path)
			want := tc.want
			if want == "" {
				want = path
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("err = %v, want it to name %q", err, want)
			}
		})
	}
	if _, err := parse(t, nil, "--config", filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("a missing config file was accepted")
	}
}
