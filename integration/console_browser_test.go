package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthhq/berth/controlplane/token"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// The web console in a real headless Chromium, against real berthd,
// berth-proxy and berth-agent processes. Chromium is found as $BERTH_CHROMIUM
// or chromium, chromium-browser, google-chrome or headless-shell on $PATH;
// without one the tests skip (.ci/run installs Debian's chromium when apt
// is usable). Screenshots go to $BERTH_TEST_ARTIFACTS when set, else to
// the test's artifact directory (kept with go test -artifacts).

// findChromium returns the browser to drive, or skips the test.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("BERTH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium found: install it (Debian: apt-get install -y chromium) or set BERTH_CHROMIUM to a Chrome/Chromium binary; the web console's browser test is skipped")
	return ""
}

// consoleArtifactDir is where screenshots are written.
func consoleArtifactDir(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("BERTH_TEST_ARTIFACTS"); dir != "" {
		dir = filepath.Join(dir, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.ArtifactDir()
}

// consoleBuild compiles the four binaries into a temporary directory.
func consoleBuild(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := t.TempDir()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator),
		"github.com/berthhq/berth/cmd/berthd", "github.com/berthhq/berth/cmd/berthctl",
		"github.com/berthhq/berth/cmd/berth-proxy", "github.com/berthhq/berth/cmd/berth-agent")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built berthd, berthctl, berth-proxy and berth-agent in %s", time.Since(start).Round(time.Millisecond))
	return bin
}

// consoleCluster is e2eStartCluster with quicker moves: connections may
// move as soon as they are up, so a drain shows within the test. With
// admin auth on (extra flags), adminToken is the token to check health with.
func consoleCluster(t *testing.T, bin, adminToken string, extra ...string) *e2eCluster {
	t.Helper()
	c := &e2eCluster{t: t, bin: bin}
	ports := e2eFreeAddrs(t, 9)
	base := t.TempDir()
	for i := range 3 {
		id := fmt.Sprintf("cp%d", i)
		c.nodes = append(c.nodes, &e2eNode{id: id, grpcAddr: ports[3*i], raftAddr: ports[3*i+1], httpAddr: ports[3*i+2],
			dataDir: filepath.Join(base, id, "data"), logPath: filepath.Join(base, id+".log"), env: e2eEnv()})
	}
	static := strings.Join(c.grpcAddrs(), ",")
	for _, n := range c.nodes {
		for _, kv := range e2eSettings(n, static) {
			n.args = append(n.args, "--"+kv[0]+"="+kv[1])
		}
		n.args = append(n.args, "--move-min-age=0s", "--move-cool-down=0s", "--rebalance-interval=500ms")
		n.args = append(n.args, extra...)
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.kill(n)
		}
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("--- tail of %s (%s) ---\n%s", n.id, n.logPath, e2eTail(n.logPath, 30))
			}
		}
	})
	start := time.Now()
	defer func() { t.Logf("three berthd up and healthy in %s", time.Since(start).Round(time.Millisecond)) }()
	for _, n := range c.nodes {
		c.start(n)
	}
	if adminToken == "" {
		c.waitHealthy(3, "")
		return c
	}
	e2eEventually(t, e2eWait, "a leader and three healthy servers", func() (bool, string) {
		r := c.ctlRaw([]string{"BERTH_TOKEN=" + adminToken}, "--insecure", "--addr", static, "status", "cluster", "-o", "json")
		st := &berthv1.ClusterStatusResponse{}
		if r.code != 0 || protojson.Unmarshal([]byte(r.stdout), st) != nil {
			return false, r.String()
		}
		healthy := 0
		for _, s := range st.GetServers() {
			if s.GetHealthy() {
				healthy++
			}
		}
		return st.GetLeaderId() != "" && healthy == 3, st.String()
	})
	return c
}

// consoleProc starts a binary from bin in the background, logging to a
// file whose tail is shown if the test fails; it is killed in t.Cleanup.
func consoleProc(t *testing.T, bin, name string, args ...string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(bin, strings.Fields(name)[0]), args...)
	cmd.Env = e2eEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		_ = logFile.Close()
		if t.Failed() {
			t.Logf("--- tail of %s ---\n%s", name, e2eTail(logPath, 20))
		}
	})
}

// registryCounts is what berthctl says: connections per proxy and status.
func registryCounts(t *testing.T, c *e2eCluster) (map[string]int, map[string]string, e2eResult) {
	t.Helper()
	r := c.ctl("status", "proxies", "--consistency", "linearizable", "-o", "json")
	if r.code != 0 {
		return nil, nil, r
	}
	resp := &berthv1.ListProxiesResponse{}
	if err := protojson.Unmarshal([]byte(r.stdout), resp); err != nil {
		t.Fatalf("status proxies -o json: %v\n%s", err, r)
	}
	conns, statuses := map[string]int{}, map[string]string{}
	for _, p := range resp.GetProxies() {
		conns[p.GetId()] = int(resp.GetConnectionCounts()[p.GetId()])
		statuses[p.GetId()] = strings.TrimPrefix(p.GetStatus().String(), "PROXY_STATUS_")
	}
	return conns, statuses, r
}

// pageState is what the page shows, read from its DOM.
type pageState struct {
	Stream      string `json:"stream"`
	Index       string `json:"index"`
	Servers     int    `json:"servers"`
	Healthy     int    `json:"healthy"`
	Proxies     int    `json:"proxies"`
	Connections int    `json:"connections"`
	Endpoints   int    `json:"endpoints"`
	Rows        []struct {
		ID          string `json:"id"`
		Status      string `json:"status"`
		Connections int    `json:"connections"`
		Target      string `json:"target"`
		Labels      string `json:"labels"`
		Region      string `json:"region"`
		Zone        string `json:"zone"`
	} `json:"rows"`
	FinishedMoves []string `json:"finishedMoves"`
	Pwned         bool     `json:"pwned"`
	Scripts       int      `json:"scripts"`
	Images        int      `json:"images"`
	Marker        int      `json:"marker"`
	ResumedFrom   string   `json:"resumedFrom"`
}

const readPage = `(() => {
  const d = (id, k) => Number(document.getElementById(id).dataset[k] || 0);
  return {
    stream: document.body.dataset.stream,
    index: document.body.dataset.index || "",
    servers: d("member-count", "servers"),
    healthy: d("member-count", "healthy"),
    proxies: d("proxy-count", "proxies"),
    connections: d("proxy-count", "connections"),
    endpoints: d("endpoint-count", "endpoints"),
    rows: [...document.querySelectorAll(".proxy")].map((e) => ({
      id: e.dataset.proxyId, status: e.dataset.status, connections: Number(e.dataset.connections),
      target: e.dataset.target, labels: (e.querySelector(".labels") || {}).textContent || "",
      region: e.closest(".region").dataset.region, zone: e.closest(".zone").dataset.zone,
    })),
    finishedMoves: [...document.querySelectorAll("#moves-done tr")].map((e) => e.dataset.state + " " + e.textContent),
    pwned: window.__pwned !== undefined,
    scripts: document.querySelectorAll("script").length,
    images: document.querySelectorAll("img").length,
    marker: window.__notReloaded || 0,
    resumedFrom: document.body.dataset.resumedFrom || "",
  };
})()`

func (p pageState) row(id string) (status string, conns int) {
	for _, r := range p.Rows {
		if r.ID == id {
			return r.Status, r.Connections
		}
	}
	return "", -1
}

// newBrowser starts headless Chromium for the test.
func newBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1400, 1100))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser, with no timeout
		t.Fatalf("start chromium %s: %v", path, err)
	}
	return ctx
}

func readPageState(t *testing.T, ctx context.Context) pageState {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := chromedp.Run(tctx, chromedp.Evaluate[pageState](readPage))
	if err != nil {
		t.Fatalf("read the page: %v", err)
	}
	return st
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100)) // quality 100 is PNG, anything less JPEG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(consoleArtifactDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot written to %s", path)
}

const hostileLabel = `<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>`

// TestConsoleInChromium: the page against three berthd, two proxies and
// four agents shows what berthctl shows, follows a drain live without a
// reload, and prints a label full of markup as text.
func TestConsoleInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes and a browser")
	}
	chromium := findChromium(t)
	bin := consoleBuild(t)
	c := consoleCluster(t, bin, "")
	cp := strings.Join(c.grpcAddrs(), ",")
	ports := e2eFreeAddrs(t, 8)
	var tunnels []string
	for i := range 2 {
		p := ports[4*i : 4*i+4]
		tunnels = append(tunnels, p[1])
		consoleProc(t, bin, fmt.Sprintf("berth-proxy proxy-%d", i), "--id", fmt.Sprintf("proxy-%d", i), "--region", "eu",
			"--zone", fmt.Sprintf("zone-%c", 'a'+i), "--insecure", "--addr", cp,
			"--downstream-addr", p[0], "--tunnel-addr", p[1], "--peer-addr", p[2], "--http-addr", p[3],
			"--label", "name="+hostileLabel, "--drain-timeout", "2s")
	}
	upstream := startDemo(t)
	const agents = 4
	for i := range agents {
		consoleProc(t, bin, fmt.Sprintf("berth-agent agent-%d", i), "serve", "--proxy", strings.Join(tunnels, ","),
			"--endpoint", "demo="+upstream, "--slot", fmt.Sprintf("slot-%d", i), "--agent-id", fmt.Sprintf("agent-%d", i),
			"--drain-timeout", "2s")
	}
	var conns map[string]int
	e2eEventually(t, e2eWait, "two proxies with all four connections", func() (bool, string) {
		var r e2eResult
		conns, _, r = registryCounts(t, c)
		return len(conns) == 2 && conns["proxy-0"]+conns["proxy-1"] == agents, r.stdout + r.stderr
	})

	ctx := newBrowser(t, chromium)
	// cp1's console, whether it leads or follows: any node serves the page
	// from its own state.
	url := "http://" + c.nodes[1].httpAddr + "/ui/"
	nav, cancel := context.WithTimeout(ctx, 20*time.Second)
	if err := chromedp.Do(nav, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(`body[data-stream="live"]`))); err != nil {
		t.Fatalf("open %s: %v (page: %+v)", url, err, readPageState(t, ctx))
	}
	cancel()
	t.Logf("console live at %s", url)

	// The page agrees with berthctl (once moves, if any, have settled).
	var st pageState
	e2eEventually(t, e2eWait, "the page shows berthctl's counts", func() (bool, string) {
		conns, statuses, _ := registryCounts(t, c)
		st = readPageState(t, ctx)
		ok := st.Servers == 3 && st.Healthy == 3 && st.Proxies == 2 && st.Connections == agents && st.Endpoints == 1
		for id, n := range conns {
			s, got := st.row(id)
			ok = ok && got == n && s == statuses[id]
		}
		return ok, fmt.Sprintf("page %+v, berthctl %v %v", st, conns, statuses)
	})
	for _, r := range st.Rows {
		if r.Region != "eu" || r.Zone == "" || r.Labels != "name="+hostileLabel {
			t.Fatalf("row %+v: want region eu, a zone, and the label as text", r)
		}
	}
	if st.Pwned || st.Scripts != 1 || st.Images != 0 {
		t.Fatalf("markup in a label was parsed: pwned=%v scripts=%d images=%d", st.Pwned, st.Scripts, st.Images)
	}
	screenshot(t, ctx, "console-before-drain.png")

	// Drain the proxy holding more connections; the page follows without
	// a reload (the marker survives).
	conns, _, _ = registryCounts(t, c)
	drained, other := "proxy-0", "proxy-1"
	if conns["proxy-1"] > conns["proxy-0"] {
		drained, other = other, drained
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__notReloaded = 42`)); err != nil {
		t.Fatal(err)
	}
	c.mustCtl("drain", drained)
	drainedAt := time.Now()
	e2eEventually(t, 10*time.Second, "the page shows the drain", func() (bool, string) {
		st = readPageState(t, ctx)
		s, _ := st.row(drained)
		return s == "DRAINING", fmt.Sprintf("%+v", st.Rows)
	})
	t.Logf("the page showed %s DRAINING %s after berthctl drain returned", drained, time.Since(drainedAt).Round(10*time.Millisecond))
	if d := time.Since(drainedAt); d > 3*time.Second {
		t.Errorf("the page took %s to show the drain; want about a second", d)
	}
	e2eEventually(t, e2eWait, "the bars move to the other proxy", func() (bool, string) {
		st = readPageState(t, ctx)
		_, n := st.row(drained)
		_, m := st.row(other)
		return n == 0 && m == agents, fmt.Sprintf("%+v", st.Rows)
	})
	if st.Marker != 42 {
		t.Fatal("the page reloaded")
	}
	drains := 0
	for _, m := range st.FinishedMoves {
		if strings.HasPrefix(m, "COMPLETED") && strings.Contains(m, "drain") {
			drains++
		}
	}
	if drains == 0 {
		t.Errorf("no completed drain move listed: %q", st.FinishedMoves)
	}
	final, _, _ := registryCounts(t, c)
	if final[drained] != 0 || final[other] != agents {
		t.Errorf("berthctl after the drain: %v", final)
	}
	screenshot(t, ctx, "console-after-drain.png")

	// The page's node restarts; meanwhile the drained proxy is uncordoned
	// through the others. The page reconnects, resumes after the last index
	// it held, and shows the change, still without a reload.
	node := c.nodes[1]
	held := readPageState(t, ctx).Index
	if err := c.stop(node); err != nil {
		t.Fatalf("stop %s: %v", node.id, err)
	}
	e2eEventually(t, 10*time.Second, "the page notices its node is gone", func() (bool, string) {
		st = readPageState(t, ctx)
		return st.Stream != "live", st.Stream
	})
	c.mustCtl("uncordon", drained)
	c.start(node)
	e2eEventually(t, e2eWait, "the page resumes and shows the uncordon", func() (bool, string) {
		st = readPageState(t, ctx)
		s, _ := st.row(drained)
		return st.Stream == "live" && s == "ACTIVE", fmt.Sprintf("stream %s, resumed from %s, rows %+v", st.Stream, st.ResumedFrom, st.Rows)
	})
	if st.ResumedFrom != held || st.Marker != 42 {
		t.Fatalf("after the restart: resumed from %q (held %q), marker %d", st.ResumedFrom, held, st.Marker)
	}
	t.Logf("the page resumed from index %s after %s restarted", st.ResumedFrom, node.id)
}

// TestConsoleInChromiumAsksForToken: with --admin-auth the page asks for a
// token, keeps it out of the URL, and opens with a read token.
func TestConsoleInChromiumAsksForToken(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes and a browser")
	}
	chromium := findChromium(t)
	bin := consoleBuild(t)
	boot, _, err := token.NewAdminToken("bootstrap", token.RoleOperate, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bootFile := filepath.Join(t.TempDir(), "bootstrap")
	if err := os.WriteFile(bootFile, []byte(boot+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := consoleCluster(t, bin, boot, "--admin-auth", "--admin-bootstrap-token-file="+bootFile)
	r := c.ctlRaw([]string{"BERTH_TOKEN=" + boot}, "--insecure", "--addr", strings.Join(c.grpcAddrs(), ","),
		"token", "admin", "create", "--name", "viewer", "--role", "read", "-o", "json")
	if r.code != 0 {
		t.Fatalf("create a read token: %s", r)
	}
	var created struct{ Token string }
	if err := json.Unmarshal([]byte(r.stdout), &created); err != nil || created.Token == "" {
		t.Fatalf("token create -o json: %v\n%s", err, r)
	}

	ctx := newBrowser(t, chromium)
	url := "http://" + c.nodes[0].httpAddr + "/ui/"
	step, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(step, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(`#login[open]`))); err != nil {
		t.Fatalf("no token prompt at %s: %v", url, err)
	}
	if err := chromedp.Do(step, chromedp.SendKeys(chromedp.CSS("#token"), "bat_not_a_real_token"), chromedp.Click(chromedp.CSS(`#login-form button`)),
		chromedp.WaitVisible(chromedp.CSS(`#login[open]`))); err != nil {
		t.Fatalf("a bad token: %v", err)
	}
	msg, err := chromedp.Run(step, chromedp.Evaluate[string](`document.getElementById("login-error").textContent`))
	if err != nil || !strings.Contains(msg, "refused") {
		t.Fatalf("bad token message %q: %v", msg, err)
	}
	if err := chromedp.Do(step, chromedp.SendKeys(chromedp.CSS("#token"), created.Token), chromedp.Click(chromedp.CSS(`#login-form button`)),
		chromedp.WaitVisible(chromedp.CSS(`body[data-stream="live"]`))); err != nil {
		t.Fatalf("open with a read token: %v", err)
	}
	e2eEventually(t, e2eWait, "three healthy servers on the page", func() (bool, string) {
		st := readPageState(t, ctx)
		return st.Servers == 3 && st.Healthy == 3, fmt.Sprintf("%+v", st)
	})
	loc, err := chromedp.Run(step, chromedp.Evaluate[string](`location.href`))
	if err != nil || strings.Contains(loc, created.Token) || strings.Contains(loc, "token") {
		t.Fatalf("URL %q (%v) must not carry the token", loc, err)
	}
	screenshot(t, ctx, "console-with-token.png")
}
