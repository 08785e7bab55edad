package main

import (
	"strings"
	"testing"
)

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
		"BERTH_AGENT_PROXY":       "a:1,b:2",
		"BERTH_AGENT_ENDPOINT":    "web=127.0.0.1:1",
		"BERTH_AGENT_SLOT":        "from-env",
		"BERTH_AGENT_BACKOFF_MAX": "nonsense",
	}
	cmd := newRootCmd(func(k string) string { return env[k] })
	cmd.SetArgs([]string{"http", "--slot", "from-flag"})
	err := cmd.Execute()
	// The bad duration in the environment is reported with its variable.
	if err == nil || !strings.Contains(err.Error(), "BERTH_AGENT_BACKOFF_MAX") {
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
		cmd := newRootCmd(func(string) string { return "" })
		cmd.SetArgs(args)
		if err := cmd.Execute(); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}
