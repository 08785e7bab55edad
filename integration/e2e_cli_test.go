package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// TestE2E runs the real berthd and berthctl binaries: a three-node control
// plane formed by static discovery, operated through the CLI, with a leader
// killed and brought back.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test builds and runs the real binaries")
	}
	bin := e2eBuild(t)
	t.Run("BadConfig", func(t *testing.T) { testE2EBadConfig(t, bin) })
	t.Run("CLI", func(t *testing.T) { testE2ECLI(t, bin) })
	t.Run("LinearizableReadAfterLeaderKill", func(t *testing.T) { testE2ELinearizableAfterKill(t, bin) })
	t.Run("SnapshotIntoANewCluster", func(t *testing.T) { testE2ESnapshotIntoANewCluster(t, bin) })
}

// testE2EBadConfig checks that a bad setting stops berthd at once, with a
// message that names the setting.
func testE2EBadConfig(t *testing.T, bin string) {
	dir := t.TempDir()
	ports := e2eFreeAddrs(t, 3)
	addrs := []string{"--grpc-addr", ports[0], "--raft-addr", ports[1], "--http-addr", ports[2], "--insecure"}
	data := filepath.Join(dir, "data")
	badYAML := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badYAML, []byte("id: cp0\nraft-adr: "+ports[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  []string
		args []string
		want []string // regexps the stderr must match
	}{
		{"empty id", nil, append([]string{"--id", "", "--data-dir", data}, addrs...), []string{`\bid\b`, `empty`}},
		{"missing id", nil, append([]string{"--data-dir", data}, addrs...), []string{`\bid\b`}},
		{"missing data-dir", nil, append([]string{"--id", "cp0"}, addrs...), []string{`data-dir`}},
		{"bad grpc-addr", nil, []string{"--id", "cp0", "--data-dir", data, "--grpc-addr", "nowhere", "--raft-addr", ports[1], "--http-addr", ports[2]}, []string{`grpc-addr`}},
		{"election below heartbeat", nil, append([]string{"--id", "cp0", "--data-dir", data, "--raft-heartbeat-timeout", "400ms", "--raft-election-timeout", "100ms"}, addrs...), []string{`election-timeout`}},
		{"unknown flag", nil, append([]string{"--id", "cp0", "--data-dir", data, "--raft-adr", ports[1]}, addrs...), []string{`raft-adr`}},
		{"unknown yaml key", nil, append([]string{"--config", badYAML, "--data-dir", data}, addrs...), []string{`raft-adr`, `raft-addr`}},
		{"missing config file", nil, append([]string{"--config", filepath.Join(dir, "nope.yaml"), "--id", "cp0", "--data-dir", data}, addrs...), []string{`nope\.yaml`}},
		{"bad env", []string{"BERTH_BOOTSTRAP_EXPECT=three"}, append([]string{"--id", "cp0", "--data-dir", data}, addrs...), []string{`BERTH_BOOTSTRAP_EXPECT`}},
		{"bad log level env", []string{"BERTH_LOG_LEVEL=loud"}, append([]string{"--id", "cp0", "--data-dir", data}, addrs...), []string{`log-level`}},
		{"neither tls nor insecure", nil, []string{"--id", "cp0", "--data-dir", data, "--grpc-addr", ports[0], "--raft-addr", ports[1], "--http-addr", ports[2]}, []string{`tls-ca`, `insecure`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(bin, "berthd"), tt.args...)
			cmd.Env = e2eEnv(tt.env...)
			var stderr bytes.Buffer
			cmd.Stderr, cmd.Stdout = &stderr, &stderr
			err := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("berthd %q hung instead of refusing its config; output:\n%s", tt.args, stderr.String())
			}
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("berthd %q: want a non-zero exit, got %v; output:\n%s", tt.args, err, stderr.String())
			}
			for _, w := range tt.want {
				if !regexp.MustCompile(w).MatchString(stderr.String()) {
					t.Errorf("berthd %q: stderr should match %q:\n%s", tt.args, w, stderr.String())
				}
			}
		})
	}
	// None of them may have left state behind.
	if _, err := os.Stat(data); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused config still created the data dir %s (%v)", data, err)
	}
}

func testE2ECLI(t *testing.T, bin string) {
	start := time.Now()
	step := func(s string) { t.Logf("[%6.1fs] %s", time.Since(start).Seconds(), s) }

	// cp0 from flags, cp1 from flags with BERTH_LOG_LEVEL=debug, cp2 from
	// a YAML file alone.
	step("starting three berthd")
	c := e2eStartCluster(t, bin, [3]e2eNodeSetup{e2eFlags, e2eFlagsDebugEnv, e2eYAML})
	step("cluster formed")

	// Settings from the file and the environment took effect.
	st, _ := c.clusterStatus(c.grpcAddrs())
	for _, n := range c.nodes {
		s := e2eServer(st, n.id)
		if s == nil || s.GetGrpcAddress() != n.grpcAddr || s.GetRaftAddress() != n.raftAddr || !s.GetHealthy() {
			t.Errorf("server %s should be healthy at grpc %s raft %s; got %v", n.id, n.grpcAddr, n.raftAddr, s)
		}
	}
	if log := e2eRead(t, c.node("cp1").logPath); !strings.Contains(log, `"level":"DEBUG"`) {
		t.Errorf("cp1 runs with BERTH_LOG_LEVEL=debug but logged no DEBUG line")
	}
	if log := e2eRead(t, c.node("cp0").logPath); strings.Contains(log, `"level":"DEBUG"`) {
		t.Errorf("cp0 runs at the default info level but logged DEBUG lines")
	}
	// berthctl takes its addresses from BERTH_ADDR too.
	if r := c.ctlRaw([]string{"BERTH_ADDR=" + strings.Join(c.grpcAddrs(), ",")}, "--insecure", "status", "cluster", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"leader_id"`) {
		t.Errorf("status cluster with BERTH_ADDR: %s", r)
	}
	if r := c.mustCtl("status", "cluster"); !strings.Contains(r.stdout, "LEADER") || !strings.Contains(r.stdout, "cp2") {
		t.Errorf("status cluster table: %s", r)
	}
	// Without --insecure berthctl must not silently fall back to plaintext.
	if r := c.ctlRaw(nil, "--addr", strings.Join(c.grpcAddrs(), ","), "--timeout", "10s", "status", "cluster"); r.code == 0 {
		t.Errorf("status cluster over TLS against plaintext servers should fail: %s", r)
	}

	step("metrics and health")
	e2eCheckMetrics(t, c)

	step("registering proxies through RegistryService")
	// Through different nodes: at least one is a follower, which forwards.
	e2eRegister(t, c.nodes[0].grpcAddr, &berthv1.Proxy{
		Id: "px-eu", Region: "eu-west", Zone: "eu-west-1a", CapacityWeight: 2,
		Addresses: &berthv1.ProxyAddresses{Tunnel: "127.0.0.1:9101", Downstream: "127.0.0.1:9102", Peer: "127.0.0.1:9103"},
	})
	e2eRegister(t, c.nodes[2].grpcAddr, &berthv1.Proxy{
		Id: "px-us", Region: "us-east", Zone: "us-east-1b",
		Addresses: &berthv1.ProxyAddresses{Tunnel: "127.0.0.1:9201"},
	})

	step("status proxies filters")
	both := []string{"px-eu", "px-us"}
	e2eWantProxies(t, c, both)
	e2eWantProxies(t, c, both, "--status", "active")
	e2eWantProxies(t, c, both, "--status", "ACTIVE,cordoned")
	e2eWantProxies(t, c, nil, "--status", "down")
	e2eWantProxies(t, c, []string{"px-eu"}, "--region", "eu-west")
	e2eWantProxies(t, c, []string{"px-us"}, "--region", "us-east", "--status", "active")
	e2eWantProxies(t, c, nil, "--region", "ap-south")
	e2eWantProxies(t, c, both, "--consistency", "linearizable")
	e2eWantProxies(t, c, both, "--consistency", "stale", "--page-size", "1")
	if r := c.ctl("status", "proxies", "--status", "activ"); r.code == 0 {
		t.Errorf("--status activ should fail: %s", r)
	} else {
		for _, v := range []string{"activ", "active", "cordoned", "draining", "unhealthy", "down"} {
			if !strings.Contains(r.stderr, v) {
				t.Errorf("--status activ: stderr should name %q: %s", v, r)
			}
		}
	}
	if r := c.ctl("status", "proxies", "--status", ""); r.code == 0 {
		t.Errorf("an empty --status should fail, not match everything: %s", r)
	}
	// The table form names both proxies and their regions.
	if r := c.mustCtl("status", "proxies"); !strings.Contains(r.stdout, "px-eu") || !strings.Contains(r.stdout, "us-east") {
		t.Errorf("status proxies table: %s", r)
	}

	step("cordon, drain, uncordon")
	e2eWantProxyAction(t, c, "cordon", "px-eu", berthv1.ProxyStatus_PROXY_STATUS_CORDONED)
	e2eWantProxies(t, c, []string{"px-eu"}, "--status", "cordoned")
	e2eWantProxies(t, c, []string{"px-us"}, "--status", "active")
	e2eWantProxyAction(t, c, "drain", "px-eu", berthv1.ProxyStatus_PROXY_STATUS_DRAINING)
	e2eWantProxies(t, c, []string{"px-eu"}, "--status", "draining")
	e2eWantProxies(t, c, nil, "--status", "cordoned")
	e2eWantProxyAction(t, c, "uncordon", "px-eu", berthv1.ProxyStatus_PROXY_STATUS_ACTIVE)
	e2eWantProxies(t, c, both, "--status", "active")
	if r := c.ctl("cordon", "px-nope"); r.code == 0 || !strings.Contains(r.stderr, "NotFound") || !strings.Contains(r.stderr, "px-nope") {
		t.Errorf("cordon of an unknown proxy should exit non-zero with NotFound naming it: %s", r)
	}
	if r := c.ctl("cordon"); r.code == 0 {
		t.Errorf("cordon without a proxy id should fail: %s", r)
	}

	step("watch sees a cordon made while it runs")
	e2eCheckWatch(t, c)

	step("killing the leader under a watch it serves")
	st = c.waitHealthy(3, "")
	leader := c.node(st.GetLeaderId())
	// The leader's address first: berthctl's stream starts there, breaks
	// with it, and must resume on another node after the last index seen.
	var others []string
	for _, n := range c.nodes {
		if n != leader {
			others = append(others, n.grpcAddr)
		}
	}
	w := c.startWatch(append([]string{leader.grpcAddr}, others...), "proxies", "--count", "3")
	snapIndex := e2eWatchSnapshot(t, w)
	c.kill(leader)
	step("killed " + leader.id)
	// berthctl, given every address, still answers: a new leader, the dead
	// one reported unreachable.
	e2eEventually(t, e2eWait, "a new leader with "+leader.id+" reported unreachable", func() (bool, string) {
		st, r := c.clusterStatus(c.grpcAddrs())
		if st == nil {
			return false, r.String()
		}
		dead := e2eServer(st, leader.id)
		healthy := 0
		for _, s := range st.GetServers() {
			if s.GetHealthy() {
				healthy++
			}
		}
		ok := st.GetLeaderId() != "" && st.GetLeaderId() != leader.id && dead != nil && !dead.GetHealthy() &&
			dead.GetState() == "Unreachable" && dead.GetError() != "" && healthy == 2
		return ok, st.String()
	})
	step("new leader elected")
	// Default reads work at once; writes go to the new leader.
	e2eWantProxies(t, c, both)
	e2eWantProxyAction(t, c, "cordon", "px-us", berthv1.ProxyStatus_PROXY_STATUS_CORDONED)
	e2eWantProxies(t, c, []string{"px-us"}, "--status", "cordoned")
	e2eWantCordonEvent(t, w.next("the cordon made after the failover"), "px-us", "us-east", snapIndex)
	if err := w.wait(); err != nil {
		t.Errorf("watch across the failover should exit 0 after three events: %v; stderr: %s", err, w.stderr)
	}
	if !strings.Contains(w.stderr.String(), "resuming") {
		t.Errorf("the watch stream was served by the killed leader, so berthctl should have resumed it; stderr: %s", w.stderr)
	}
	e2eWantProxies(t, c, both, "--consistency", "linearizable")
	// Only the dead node's address: berthctl fails, and says why.
	if r := c.ctlAt([]string{leader.grpcAddr}, "--timeout", "5s", "--retries", "0", "status", "cluster"); r.code == 0 || r.stderr == "" {
		t.Errorf("status cluster against only the killed node should fail with a message: %s", r)
	}

	step("restarting " + leader.id)
	c.start(leader)
	c.waitHealthy(3, "")
	step("three healthy servers again")
	// The restarted node caught up with what was committed while it was
	// down, and serves it from its own state.
	e2eEventually(t, e2eWait, leader.id+" serves the cordon made while it was down", func() (bool, string) {
		r := c.ctlAt([]string{leader.grpcAddr}, "status", "proxies", "--consistency", "stale", "--status", "cordoned", "-o", "json")
		ids, err := e2eProxyIDs(r)
		return err == nil && slices.Equal(ids, []string{"px-us"}), fmt.Sprint(ids, err, r)
	})
	e2eCheckMetrics(t, c)

	step("SIGTERM shuts a node down cleanly")
	follower := c.nodes[0]
	if st := c.waitHealthy(3, ""); st.GetLeaderId() == follower.id {
		follower = c.nodes[1]
	}
	if err := c.stop(follower); err != nil {
		t.Errorf("%s on SIGTERM: want exit status 0, got %v", follower.id, err)
	}
	step("done")
}

// testE2ELinearizableAfterKill checks that a linearizable read succeeds
// right after a failover, before anything else is written. DESIGN.md:
// linearizable reads are VerifyLeader + wait for the FSM to reach the
// commit index.
func testE2ELinearizableAfterKill(t *testing.T, bin string) {
	c := e2eStartCluster(t, bin, [3]e2eNodeSetup{})
	e2eRegister(t, c.nodes[0].grpcAddr, &berthv1.Proxy{Id: "px-1", Region: "r1"})
	e2eWantProxies(t, c, []string{"px-1"}, "--consistency", "linearizable")

	st := c.waitHealthy(3, "")
	leader := c.node(st.GetLeaderId())
	c.kill(leader)
	c.waitHealthy(2, leader.id)

	// Nothing written since the new leader took over.
	r := c.ctl("status", "proxies", "--consistency", "linearizable", "--timeout", "10s", "-o", "json")
	ids, err := e2eProxyIDs(r)
	if err != nil || !slices.Equal(ids, []string{"px-1"}) {
		t.Errorf("linearizable read after the leader was killed: want [px-1], got %v (%v)\n%s", ids, err, r)
	}
	// A write unblocks it; that proves the read only waited for an index
	// the state machine never reaches on its own.
	if t.Failed() {
		c.mustCtl("cordon", "px-1")
		if r := c.ctl("status", "proxies", "--consistency", "linearizable", "--timeout", "10s", "-o", "json"); r.code != 0 {
			t.Errorf("linearizable read after a write: %s", r)
		} else {
			t.Logf("after one write the same linearizable read succeeds")
		}
	}
}

// e2eServer finds server id in st.
func e2eServer(st *berthv1.ClusterStatusResponse, id string) *berthv1.ServerStatus {
	for _, s := range st.GetServers() {
		if s.GetId() == id {
			return s
		}
	}
	return nil
}

func e2eRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// e2eRegister registers p the way a proxy does, through RegistryService on
// addr.
func e2eRegister(t *testing.T, addr string, p *berthv1.Proxy) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	resp, err := berthv1.NewRegistryServiceClient(conn).RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: p})
	if err != nil {
		t.Fatalf("register %s via %s: %v", p.GetId(), addr, err)
	}
	got := resp.GetProxy()
	if got.GetId() != p.GetId() || got.GetRegion() != p.GetRegion() || got.GetStatus() != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE || resp.GetIndex() == 0 {
		t.Fatalf("register %s: got %v at index %d", p.GetId(), got, resp.GetIndex())
	}
}

// e2eProxyIDs parses `status proxies -o json` output into sorted proxy IDs.
func e2eProxyIDs(r e2eResult) ([]string, error) {
	if r.code != 0 {
		return nil, fmt.Errorf("exit %d: %s", r.code, strings.TrimSpace(r.stderr))
	}
	resp := &berthv1.ListProxiesResponse{}
	if err := protojson.Unmarshal([]byte(r.stdout), resp); err != nil {
		return nil, fmt.Errorf("not a ListProxiesResponse: %w", err)
	}
	ids := []string{}
	for _, p := range resp.GetProxies() {
		ids = append(ids, p.GetId())
	}
	slices.Sort(ids)
	return ids, nil
}

// e2eWantProxies runs `status proxies -o json` with args and wants exactly
// the proxies want.
func e2eWantProxies(t *testing.T, c *e2eCluster, want []string, args ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	r := c.ctl(append([]string{"status", "proxies", "-o", "json"}, args...)...)
	got, err := e2eProxyIDs(r)
	if err != nil {
		t.Errorf("status proxies %s: %v\n%s", strings.Join(args, " "), err, r)
		return
	}
	if !slices.Equal(got, want) {
		t.Errorf("status proxies %s: want %v, got %v", strings.Join(args, " "), want, got)
	}
}

// e2eWantProxyAction runs cordon, drain or uncordon on id and checks the
// proxy it prints.
func e2eWantProxyAction(t *testing.T, c *e2eCluster, verb, id string, want berthv1.ProxyStatus) {
	t.Helper()
	r := c.mustCtl(verb, id, "-o", "json")
	p := &berthv1.Proxy{}
	if err := protojson.Unmarshal([]byte(r.stdout), p); err != nil {
		t.Fatalf("%s %s -o json is not a Proxy: %v\n%s", verb, id, err, r)
	}
	if p.GetId() != id || p.GetStatus() != want {
		t.Errorf("%s %s: want status %s, got %v", verb, id, want, p)
	}
}

// e2eCheckWatch starts `watch proxies --count 3 -o json`, waits for the two
// snapshot events, cordons a proxy and wants its event as the third line,
// after which the watch exits by itself.
func e2eCheckWatch(t *testing.T, c *e2eCluster) {
	t.Helper()
	w := c.startWatch(c.grpcAddrs(), "proxies", "--count", "3")
	snapIndex := e2eWatchSnapshot(t, w)
	c.mustCtl("cordon", "px-eu")
	e2eWantCordonEvent(t, w.next("the event for the cordon"), "px-eu", "eu-west", snapIndex)
	if err := w.wait(); err != nil {
		t.Errorf("watch --count 3 should exit 0 after three events: %v; stderr: %s", err, w.stderr)
	}
	c.mustCtl("uncordon", "px-eu")
}

// e2eWatchSnapshot reads the two snapshot events of a proxies watch and
// returns the highest index among them.
func e2eWatchSnapshot(t *testing.T, w *e2eWatch) uint64 {
	t.Helper()
	snap := map[string]bool{}
	var index uint64
	for range 2 {
		ev := w.next("a snapshot event")
		snap[ev.GetProxy().GetId()] = true
		index = max(index, ev.GetIndex())
	}
	if !snap["px-eu"] || !snap["px-us"] {
		t.Fatalf("watch snapshot: want px-eu and px-us, got %v", snap)
	}
	return index
}

func e2eWantCordonEvent(t *testing.T, ev *berthv1.Event, id, region string, after uint64) {
	t.Helper()
	if p := ev.GetProxy(); p.GetId() != id || p.GetStatus() != berthv1.ProxyStatus_PROXY_STATUS_CORDONED ||
		ev.GetOp() != berthv1.EventOp_EVENT_OP_UPSERT || ev.GetIndex() <= after || ev.GetRegion() != region {
		t.Errorf("watch: want an upsert of %s, cordoned, region %s, after index %d; got %v", id, region, after, ev)
	}
}

// e2eCheckMetrics wants every node to serve /healthz with 200 and
// Prometheus text on /metrics with berth_cp_is_leader, 1 on exactly the
// leader.
func e2eCheckMetrics(t *testing.T, c *e2eCluster) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(url string) (int, string, string, error) {
		resp, err := hc.Get(url)
		if err != nil {
			return 0, "", "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b), err
	}
	for _, n := range c.nodes {
		for _, path := range []string{"/healthz", "/readyz"} {
			code, _, body, err := get("http://" + n.httpAddr + path)
			if err != nil || code != http.StatusOK {
				t.Errorf("%s %s: want 200, got %d %v: %s", n.id, path, code, err, body)
			}
		}
		// The standard gRPC health service, as load balancers probe it.
		conn, err := grpc.NewClient(n.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		_ = conn.Close()
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s grpc.health.v1 Check: want SERVING, got %v %v", n.id, resp.GetStatus(), err)
		}
	}
	isLeader := regexp.MustCompile(`(?m)^berth_cp_is_leader ([01])$`)
	e2eEventually(t, e2eWait, "berth_cp_is_leader 1 on the leader and 0 elsewhere", func() (bool, string) {
		st, r := c.clusterStatus(c.grpcAddrs())
		if st == nil {
			return false, r.String()
		}
		var seen []string
		ok := true
		for _, n := range c.nodes {
			code, ctype, body, err := get("http://" + n.httpAddr + "/metrics")
			if err != nil || code != http.StatusOK || !strings.HasPrefix(ctype, "text/plain") {
				return false, fmt.Sprintf("%s /metrics: %d %q %v", n.id, code, ctype, err)
			}
			if !strings.Contains(body, "# TYPE berth_cp_is_leader gauge") {
				return false, n.id + " /metrics has no berth_cp_is_leader gauge"
			}
			m := isLeader.FindStringSubmatch(body)
			if m == nil {
				return false, n.id + " /metrics has no berth_cp_is_leader sample"
			}
			want := "0"
			if n.id == st.GetLeaderId() {
				want = "1"
			}
			ok = ok && m[1] == want
			seen = append(seen, n.id+"="+m[1])
		}
		return ok, fmt.Sprintf("leader %s, gauges %v", st.GetLeaderId(), seen)
	})
}
