// Package cmd_test runs the four binaries as built, for what only the real
// processes show: --help and --version, exit codes, the environment
// reaching each binary's settings, and how often a daemon warns that it
// runs insecure.
package cmd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const testVersion = "v0.0.0-bintest"

var binaries = []string{"berthd", "berth-proxy", "berth-agent", "berthctl"}

// build compiles the four binaries once per test run, with the version
// set at link time as a release build would.
func build(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "berth-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		args := []string{"build", "-ldflags", "-X github.com/berthhq/berth/cmd/internal/buildinfo.Version=" + testVersion, "-o", dir + string(filepath.Separator)}
		for _, b := range binaries {
			args = append(args, "./"+b)
		}
		cmd := exec.Command("go", args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs bin with args and exactly the environment env (plus PATH and
// HOME), so a developer's BERTH_* settings never leak in.
func run(t *testing.T, bin string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("%s %v: %v", filepath.Base(bin), args, err)
	}
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	t.Logf("%v %s %v: exit %d\nstdout:\n%s\nstderr:\n%s", env, filepath.Base(bin), args, code, r.stdout, r.stderr)
	return r
}

func TestHelpAndVersion(t *testing.T) {
	dir := build(t)
	for _, name := range binaries {
		t.Run(name, func(t *testing.T) {
			bin := filepath.Join(dir, name)
			r := run(t, bin, nil, "--help")
			if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "[$BERTH_") || !strings.Contains(r.stdout, "BERTH_<FLAG>") {
				t.Errorf("--help: exit %d, stderr %q; want exit 0 and the help, naming the variables, on stdout", r.code, r.stderr)
			}
			r = run(t, bin, nil, "--version")
			if r.code != 0 || !strings.HasPrefix(r.stdout, name+" "+testVersion) || !strings.Contains(r.stdout, runtime.Version()) {
				t.Errorf("--version: exit %d, %q; want %q with the Go version", r.code, r.stdout, name+" "+testVersion)
			}
			r = run(t, bin, nil, "--no-such-flag")
			if r.code == 0 || !strings.Contains(r.stderr, "no-such-flag") {
				t.Errorf("--no-such-flag: exit %d, stderr %q; want a failure naming the flag", r.code, r.stderr)
			}
		})
	}
	r := run(t, filepath.Join(dir, "berth-agent"), nil, "serve", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "[$BERTH_ENDPOINT]") {
		t.Errorf("berth-agent serve --help: exit %d", r.code)
	}
}

// TestEnvironmentReachesEachBinary sets one variable each binary's help
// names to a value the binary must refuse, where the default would be
// accepted: the refusal shows the variable was read.
func TestEnvironmentReachesEachBinary(t *testing.T) {
	dir := build(t)
	data := t.TempDir()
	cases := []struct {
		bin  string
		env  string
		args []string
		want string
	}{
		{"berthd", "BERTH_RAFT_ADDR=nonsense", []string{"--id", "cp0", "--data-dir", data, "--insecure"}, "raft-addr"},
		{"berthd", "BERTH_LOG_FORMAT=xml", []string{"--id", "cp0", "--data-dir", data, "--insecure"}, "log-format"},
		{"berth-proxy", "BERTH_ADDR=nonsense", []string{"--id", "p1", "--insecure"}, "nonsense"},
		{"berth-agent", "BERTH_PROXY=nonsense", []string{"serve", "--endpoint", "web=127.0.0.1:1"}, "nonsense"},
		{"berth-agent", "BERTH_LOG_LEVEL=loud", []string{"serve", "--endpoint", "web=127.0.0.1:1", "--proxy", "127.0.0.1:1"}, "log-level"},
		{"berthctl", "BERTH_ADDR=nonsense", []string{"status", "cluster"}, "nonsense"},
		{"berthctl", "BERTH_TLS_CA=/nonexistent/ca.pem", []string{"status", "cluster"}, "/nonexistent/ca.pem"},
		{"berthctl", "BERTH_OUTPUT=xml", []string{"status", "cluster"}, "xml"},
	}
	for _, c := range cases {
		t.Run(c.bin+" "+c.env, func(t *testing.T) {
			r := run(t, filepath.Join(dir, c.bin), []string{c.env}, c.args...)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want a failure naming %q", r.code, r.stderr, c.want)
			}
		})
	}
}

// TestDaemonsWarnInsecureOnce starts each daemon in insecure mode until it
// serves /healthz, reads its berth_build_info, stops it, and counts its
// INSECURE lines.
func TestDaemonsWarnInsecureOnce(t *testing.T) {
	dir := build(t)
	addrs := freeAddrs(t, 8)
	cases := []struct {
		bin  string
		args []string
		http string
	}{
		{"berthd", []string{"--id", "cp0", "--data-dir", t.TempDir(), "--insecure", "--bootstrap",
			"--grpc-addr", addrs[0], "--raft-addr", addrs[1], "--http-addr", addrs[2]}, addrs[2]},
		{"berth-proxy", []string{"--id", "p1", "--insecure", "--addr", addrs[0],
			"--tunnel-addr", addrs[3], "--downstream-addr", addrs[4], "--peer-addr", addrs[5], "--http-addr", addrs[6]}, addrs[6]},
	}
	for _, c := range cases {
		t.Run(c.bin, func(t *testing.T) {
			var stderr lockedBuffer
			cmd := exec.Command(filepath.Join(dir, c.bin), c.args...)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			defer func() {
				_ = cmd.Process.Kill()
				<-done
			}()
			deadline := time.Now().Add(30 * time.Second)
			for !healthy(c.http) {
				if time.Now().After(deadline) {
					t.Fatalf("%s never served /healthz; stderr:\n%s", c.bin, stderr.String())
				}
				select {
				case err := <-done:
					done <- err
					t.Fatalf("%s exited: %v; stderr:\n%s", c.bin, err, stderr.String())
				case <-time.After(50 * time.Millisecond):
				}
			}
			// The build reaches the daemon's registry.
			metrics := get(t, "http://"+c.http+"/metrics")
			if want := `berth_build_info{goversion="` + runtime.Version() + `",revision="`; !strings.Contains(metrics, want) ||
				!strings.Contains(metrics, `version="`+testVersion+`"} 1`) {
				t.Errorf("%s /metrics has no berth_build_info for %s:\n%s", c.bin, testVersion, grepLines(metrics, "build_info"))
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				done <- err
			case <-time.After(30 * time.Second):
				t.Fatalf("%s did not stop on SIGTERM", c.bin)
			}
			t.Logf("stderr:\n%s", stderr.String())
			if n := strings.Count(stderr.String(), "INSECURE"); n != 1 {
				t.Errorf("%s logged %d INSECURE lines, want 1", c.bin, n)
			}
			if !strings.Contains(stderr.String(), `"version":"`+testVersion+`"`) {
				t.Errorf("%s did not log its version at start", c.bin)
			}
		})
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func healthy(addr string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freeAddrs returns n distinct free 127.0.0.1 addresses, holding every
// listener until all are picked.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	out := make([]string, n)
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i], out[i] = ln, ln.Addr().String()
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return out
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestAgentMetricsCarryItsBuild starts berth-agent with --http-addr (its
// proxy unreachable: the agent keeps retrying) and reads its
// berth_build_info beside its own series.
func TestAgentMetricsCarryItsBuild(t *testing.T) {
	dir := build(t)
	addr := freeAddrs(t, 1)[0]
	var stderr lockedBuffer
	cmd := exec.Command(filepath.Join(dir, "berth-agent"), "serve", "--proxy", "127.0.0.1:1",
		"--endpoint", "web=127.0.0.1:1", "--http-addr", addr)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !healthy(addr) {
		if time.Now().After(deadline) {
			t.Fatalf("berth-agent never served /healthz; stderr:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	metrics := get(t, "http://"+addr+"/metrics")
	if !strings.Contains(metrics, `version="`+testVersion+`"} 1`) || !strings.Contains(metrics, "berth_agent_tunnel_up") {
		t.Errorf("berth-agent /metrics lacks berth_build_info for %s or its own series:\n%s", testVersion,
			grepLines(metrics, "build_info")+grepLines(metrics, "tunnel_up"))
	}
}
