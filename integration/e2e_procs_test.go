package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// The end-to-end harness runs the real berthd and berthctl binaries as
// child processes on loopback. Everything it starts is killed in
// t.Cleanup, and each berthd's stderr goes to a file whose tail is logged
// when the test fails.

// e2eWait is the deadline for anything the cluster has to get done: two
// shared cores make elections and process starts slow at times.
const e2eWait = 30 * time.Second

// moduleRoot is the directory of the module this test lives in.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatalf("go env GOMOD: not inside a module (%q)", gomod)
	}
	return filepath.Dir(gomod)
}

// e2eBuild compiles berthd and berthctl from the module this test lives in
// into a temporary directory and returns it.
func e2eBuild(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root := moduleRoot(t)
	bin := t.TempDir()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator), "./cmd/berthd", "./cmd/berthctl")
	cmd.Dir = root
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built berthd and berthctl in %s", time.Since(start).Round(time.Millisecond))
	return bin
}

// e2eEnv is the test's environment without BERTH_* variables, so a
// developer's settings never leak into the processes under test; extra
// entries are appended.
func e2eEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BERTH_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// e2eFreeAddrs returns n distinct free 127.0.0.1 ports. The listeners are
// all held until every port is picked, so no two are the same.
func e2eFreeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("pick a free port: %v", err)
		}
		lns[i], addrs[i] = ln, ln.Addr().String()
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return addrs
}

// e2eEventually polls cond until it holds or timeout passes; cond returns
// what it saw, which the failure reports.
func e2eEventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s; last seen: %s", what, timeout, seen)
		}
		<-tick.C
	}
}

// e2eNode is one berthd: its addresses, its command line and environment
// (kept so a restart is the same process again) and the running process.
type e2eNode struct {
	id                           string
	grpcAddr, raftAddr, httpAddr string
	dataDir                      string
	logPath                      string
	args                         []string
	env                          []string

	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, valid once done is closed
}

func (n *e2eNode) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// e2eCluster is three berthd processes forming one control plane.
type e2eCluster struct {
	t     *testing.T
	bin   string
	nodes []*e2eNode
}

// e2eNodeSetup says how a node gets its settings, so one test covers flags,
// a YAML file and the environment.
type e2eNodeSetup int

const (
	e2eFlags e2eNodeSetup = iota
	e2eYAML
	e2eFlagsDebugEnv // flags, plus BERTH_LOG_LEVEL=debug
)

// e2eSettings are the settings every node gets, as flag name -> value.
// Proxies registered by the tests send no load samples, so their health
// timeouts are long: status changes in these tests come from operators.
func e2eSettings(n *e2eNode, static string) [][2]string {
	return [][2]string{
		{"id", n.id},
		{"data-dir", n.dataDir},
		{"grpc-addr", n.grpcAddr},
		{"raft-addr", n.raftAddr},
		{"http-addr", n.httpAddr},
		{"bootstrap-expect", "3"},
		{"discovery", "static"},
		{"discovery-static", static},
		{"discovery-poll-interval", "200ms"},
		{"raft-heartbeat-timeout", "400ms"},
		{"raft-election-timeout", "400ms"},
		{"raft-leader-lease-timeout", "200ms"},
		{"proxy-unhealthy-after", "10m"},
		{"proxy-down-after", "20m"},
		{"insecure", "true"},
	}
}

// e2eStartCluster starts three berthd from bin, each taking its settings
// as setups says, and waits until they have formed a cluster with a leader
// and three healthy servers.
func e2eStartCluster(t *testing.T, bin string, setups [3]e2eNodeSetup) *e2eCluster {
	t.Helper()
	c := &e2eCluster{t: t, bin: bin}
	ports := e2eFreeAddrs(t, 9)
	base := t.TempDir()
	for i := range 3 {
		id := fmt.Sprintf("cp%d", i)
		c.nodes = append(c.nodes, &e2eNode{
			id:       id,
			grpcAddr: ports[3*i],
			raftAddr: ports[3*i+1],
			httpAddr: ports[3*i+2],
			dataDir:  filepath.Join(base, id, "data"),
			logPath:  filepath.Join(base, id+".log"),
		})
	}
	static := strings.Join(c.grpcAddrs(), ",")
	for i, n := range c.nodes {
		settings := e2eSettings(n, static)
		n.env = e2eEnv()
		switch setups[i] {
		case e2eYAML:
			var y strings.Builder
			for _, kv := range settings {
				if kv[0] == "discovery-static" {
					// A YAML list, which the loader joins with commas.
					fmt.Fprintf(&y, "%s:\n", kv[0])
					for _, a := range strings.Split(kv[1], ",") {
						fmt.Fprintf(&y, "  - %q\n", a)
					}
					continue
				}
				fmt.Fprintf(&y, "%s: %q\n", kv[0], kv[1])
			}
			path := filepath.Join(base, n.id+".yaml")
			if err := os.WriteFile(path, []byte(y.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			n.args = []string{"--config", path}
		default:
			for _, kv := range settings {
				n.args = append(n.args, "--"+kv[0]+"="+kv[1])
			}
			if setups[i] == e2eFlagsDebugEnv {
				n.env = e2eEnv("BERTH_LOG_LEVEL=debug")
			}
		}
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.kill(n)
		}
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("--- tail of %s stderr (%s) ---\n%s", n.id, n.logPath, e2eTail(n.logPath, 30))
			}
		}
	})
	for _, n := range c.nodes {
		c.start(n)
	}
	c.waitHealthy(3, "")
	return c
}

// start launches n's process with its stored arguments, appending its
// stderr and stdout to n.logPath.
func (c *e2eCluster) start(n *e2eNode) {
	c.t.Helper()
	if n.running() {
		c.t.Fatalf("%s is already running", n.id)
	}
	if err := os.MkdirAll(filepath.Dir(n.dataDir), 0o700); err != nil {
		c.t.Fatal(err)
	}
	logFile, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	fmt.Fprintf(logFile, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(n.args, " "))
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "berthd"), n.args...)
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		_ = logFile.Close()
		c.t.Fatalf("start %s: %v", n.id, err)
	}
	n.cmd, n.cancel, n.done = cmd, cancel, make(chan struct{})
	go func() {
		n.err = cmd.Wait()
		_ = logFile.Close()
		close(n.done)
	}()
}

// kill sends SIGKILL to n if it runs and waits until it has exited.
func (c *e2eCluster) kill(n *e2eNode) {
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	c.waitExit(n, e2eWait)
}

// stop sends SIGTERM to n and returns its exit error (nil for status 0).
func (c *e2eCluster) stop(n *e2eNode) error {
	c.t.Helper()
	if !n.running() {
		c.t.Fatalf("%s is not running", n.id)
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	c.waitExit(n, e2eWait)
	return n.err
}

func (c *e2eCluster) waitExit(n *e2eNode, timeout time.Duration) {
	select {
	case <-n.done:
	case <-time.After(timeout):
		c.t.Errorf("%s did not exit within %s; killing it", n.id, timeout)
		n.cancel()
		<-n.done
	}
	n.cancel()
}

func (c *e2eCluster) grpcAddrs() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.grpcAddr)
	}
	return out
}

func (c *e2eCluster) node(id string) *e2eNode {
	c.t.Helper()
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	c.t.Fatalf("no node %q", id)
	return nil
}

// e2eResult is one finished berthctl run.
type e2eResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r e2eResult) String() string {
	return fmt.Sprintf("berthctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// ctl runs berthctl against every node (--insecure --addr a,b,c), bounded
// by e2eWait, and returns whatever happened; it fails the test only if the
// binary cannot run at all.
func (c *e2eCluster) ctl(args ...string) e2eResult {
	c.t.Helper()
	return c.ctlAt(c.grpcAddrs(), args...)
}

// ctlAt is ctl against the given addresses.
func (c *e2eCluster) ctlAt(addrs []string, args ...string) e2eResult {
	c.t.Helper()
	full := append([]string{"--insecure", "--addr", strings.Join(addrs, ",")}, args...)
	return c.ctlRaw(nil, full...)
}

// ctlRaw runs berthctl with exactly args and extra environment.
func (c *e2eCluster) ctlRaw(env []string, args ...string) e2eResult {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "berthctl"), args...)
	cmd.Env = e2eEnv(env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := e2eResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && ctx.Err() == nil:
		r.code = exit.ExitCode()
	default:
		c.t.Fatalf("berthctl %s: %v (stderr: %s)", strings.Join(args, " "), err, stderr.String())
	}
	return r
}

// mustCtl is ctl that fails the test unless berthctl exits 0.
func (c *e2eCluster) mustCtl(args ...string) e2eResult {
	c.t.Helper()
	r := c.ctl(args...)
	if r.code != 0 {
		c.t.Fatalf("want success: %s", r)
	}
	return r
}

// clusterStatus runs `status cluster -o json` against addrs.
func (c *e2eCluster) clusterStatus(addrs []string) (*berthv1.ClusterStatusResponse, e2eResult) {
	c.t.Helper()
	r := c.ctlAt(addrs, "status", "cluster", "-o", "json")
	if r.code != 0 {
		return nil, r
	}
	resp := &berthv1.ClusterStatusResponse{}
	if err := protojson.Unmarshal([]byte(r.stdout), resp); err != nil {
		c.t.Fatalf("status cluster -o json is not a ClusterStatusResponse: %v\n%s", err, r)
	}
	return resp, r
}

// waitHealthy waits until status cluster shows a leader other than
// notLeader and exactly want healthy servers, and returns the last status.
func (c *e2eCluster) waitHealthy(want int, notLeader string) *berthv1.ClusterStatusResponse {
	c.t.Helper()
	var last *berthv1.ClusterStatusResponse
	e2eEventually(c.t, e2eWait, fmt.Sprintf("a leader (not %q) and %d healthy servers", notLeader, want), func() (bool, string) {
		st, r := c.clusterStatus(c.grpcAddrs())
		if st == nil {
			return false, r.String()
		}
		last = st
		if st.GetLeaderId() == "" || st.GetLeaderId() == notLeader {
			return false, st.String()
		}
		healthy := 0
		for _, s := range st.GetServers() {
			if s.GetHealthy() {
				healthy++
			}
		}
		return healthy == want && len(st.GetServers()) == 3, st.String()
	})
	return last
}

// e2eWatch is a `berthctl watch -o json` running in the background.
type e2eWatch struct {
	t       *testing.T
	cmd     *exec.Cmd
	ctx     context.Context
	lines   chan string
	scanned chan struct{} // closed once stdout is drained
	stderr  *e2eBuffer
	waited  bool
}

// startWatch starts `berthctl --insecure --addr addrs watch args... -o
// json`, bounded by e2eWait; it is killed in t.Cleanup if still running.
func (c *e2eCluster) startWatch(addrs []string, args ...string) *e2eWatch {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	full := append([]string{"--insecure", "--addr", strings.Join(addrs, ","), "watch"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "berthctl"), append(full, "-o", "json")...)
	cmd.Env = e2eEnv()
	w := &e2eWatch{t: c.t, cmd: cmd, ctx: ctx, lines: make(chan string), scanned: make(chan struct{}), stderr: &e2eBuffer{}}
	cmd.Stderr = w.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		c.t.Fatal(err)
	}
	go func() {
		defer close(w.scanned)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
		for sc.Scan() {
			select {
			case w.lines <- sc.Text():
			case <-ctx.Done():
				_, _ = io.Copy(io.Discard, out)
				return
			}
		}
	}()
	c.t.Cleanup(func() {
		cancel()
		if !w.waited {
			<-w.scanned
			_ = cmd.Wait()
		}
	})
	return w
}

// next returns the next event the watch printed, failing the test if none
// comes in time.
func (w *e2eWatch) next(what string) *berthv1.Event {
	w.t.Helper()
	select {
	case l := <-w.lines:
		ev := &berthv1.Event{}
		if err := protojson.Unmarshal([]byte(l), ev); err != nil {
			w.t.Fatalf("watch line is not an Event: %v: %s", err, l)
		}
		return ev
	case <-w.ctx.Done():
		w.t.Fatalf("watch: no %s within %s; stderr: %s", what, e2eWait, w.stderr)
		return nil
	}
}

// wait waits for the watch to exit on its own (or its deadline) and
// returns its exit error.
func (w *e2eWatch) wait() error {
	<-w.scanned
	err := w.cmd.Wait()
	w.waited = true
	if w.ctx.Err() != nil {
		return fmt.Errorf("still running after %s: %w", e2eWait, w.ctx.Err())
	}
	return err
}

// e2eBuffer is a bytes.Buffer safe to read while a process writes to it.
type e2eBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *e2eBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *e2eBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// e2eTail returns the last n lines of the file at path.
func e2eTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
