package conf

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func newFS() (*pflag.FlagSet, *string, *int, *string) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	addr := fs.String("raft-addr", "default", "")
	n := fs.Int("bootstrap-expect", 0, "")
	fs.String("config", "", "")
	list := fs.String("discovery-static", "", "")
	return fs, addr, n, list
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte("raft-addr: from-file\nbootstrap-expect: 3\ndiscovery-static: [a:1, b:2]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		env      string
		args     []string
		wantAddr string
	}{
		{"file", "", []string{"--config", path}, "from-file"},
		{"env beats file", "from-env", []string{"--config", path}, "from-env"},
		{"flag beats env", "from-env", []string{"--config", path, "--raft-addr", "from-flag"}, "from-flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("BERTH_RAFT_ADDR", tt.env)
			}
			fs, addr, n, list := newFS()
			if err := Load(fs, tt.args, os.LookupEnv, "config"); err != nil {
				t.Fatal(err)
			}
			if *addr != tt.wantAddr || *n != 3 || *list != "a:1,b:2" {
				t.Fatalf("got addr=%q expect=%d list=%q", *addr, *n, *list)
			}
		})
	}
}

func TestUnknownKeyAndBadValue(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown": "raft-adr: x\n",
		"badint":  "bootstrap-expect: three\n",
		"notyaml": "a: [\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".yaml")
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			fs, _, _, _ := newFS()
			err := Load(fs, []string{"--config", path}, os.LookupEnv, "config")
			if err == nil {
				t.Fatal("want an error")
			}
			if name == "unknown" && !strings.Contains(err.Error(), "raft-addr") {
				t.Fatalf("error should list the known keys: %v", err)
			}
		})
	}
	t.Run("bad env", func(t *testing.T) {
		t.Setenv("BERTH_BOOTSTRAP_EXPECT", "x")
		fs, _, _, _ := newFS()
		if err := Load(fs, nil, os.LookupEnv, "config"); err == nil || !strings.Contains(err.Error(), "BERTH_BOOTSTRAP_EXPECT") {
			t.Fatalf("want an error naming the variable, got %v", err)
		}
	})
}

func TestGCPercentFlag(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	env := func(gogc string) func(string) string {
		return func(k string) string {
			if k == "GOGC" {
				return gogc
			}
			return ""
		}
	}
	cases := []struct {
		args []string
		gogc string
		want int // -2: left alone
	}{
		{nil, "", DataPlaneGCPercent},
		{nil, "150", -2},
		{[]string{"--gc-percent", "250"}, "150", 250},
		{[]string{"--gc-percent", "-1"}, "", -1},
	}
	for _, c := range cases {
		debug.SetGCPercent(100)
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		apply := GCPercentFlag(fs, env(c.gogc))
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if err := apply(); err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		want := c.want
		if want == -2 {
			want = 100
		}
		if got := debug.SetGCPercent(100); got != want {
			t.Errorf("args %v GOGC %q: percent %d, want %d", c.args, c.gogc, got, want)
		}
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	apply := GCPercentFlag(fs, env(""))
	_ = fs.Parse([]string{"--gc-percent", "-5"})
	if err := apply(); err == nil {
		t.Error("gc-percent -5 accepted")
	}
}

func TestHandlerFormats(t *testing.T) {
	for _, tc := range []struct{ format, want string }{{"json", `"msg":"hi"`}, {"text", "msg=hi"}} {
		var out strings.Builder
		h, err := Handler(&out, tc.format, "info")
		if err != nil {
			t.Fatal(err)
		}
		slog.New(h).Info("hi")
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("%s: %q, want %q", tc.format, out.String(), tc.want)
		}
	}
	if _, err := Handler(io.Discard, "xml", "info"); err == nil || !strings.Contains(err.Error(), "log-format") {
		t.Errorf("format xml: %v", err)
	}
	if _, err := Handler(io.Discard, "json", "loud"); err == nil || !strings.Contains(err.Error(), "log-level") {
		t.Errorf("level loud: %v", err)
	}
}

func TestFileMapsAndReservedKeys(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte("label: {zone: a, rack: r1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	labels := fs.StringToString("label", nil, "")
	fs.String("config", "", "")
	fs.Bool("version", false, "")
	if err := Load(fs, []string{"--config", path}, func(string) (string, bool) { return "", false }, "config"); err != nil {
		t.Fatal(err)
	}
	if len(*labels) != 2 || (*labels)["zone"] != "a" || (*labels)["rack"] != "r1" {
		t.Fatalf("labels from a YAML map: %v", *labels)
	}
	// --version is no setting: neither a file key nor a variable sets it.
	if err := os.WriteFile(path, []byte("version: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Load(fs, []string{"--config", path}, func(k string) (string, bool) { return "true", k == "BERTH_VERSION" }, "config")
	if err == nil || !strings.Contains(err.Error(), `unknown key "version"`) {
		t.Fatalf("version in the file: %v", err)
	}
	if fs.Lookup("version").Changed {
		t.Error("BERTH_VERSION set --version")
	}
}

func TestAnnotateEnvOnce(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.String("data-dir", "", "where data goes")
	AnnotateEnv(fs)
	AnnotateEnv(fs)
	if got := fs.Lookup("data-dir").Usage; got != "where data goes [$BERTH_DATA_DIR]" {
		t.Fatalf("usage %q", got)
	}
}
