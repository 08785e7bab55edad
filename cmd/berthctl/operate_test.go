package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// quietCluster is a real cluster whose leader changes nothing on its own:
// no planner rounds, no health judgements (tests that want them say so).
func quietCluster(t *testing.T, n int, configure func(*controlplane.Config)) *controlplanetest.Cluster {
	t.Helper()
	return controlplanetest.MakeCluster(t, n, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Enabled = false
		cfg.Heartbeat.Grace = time.Hour
		if configure != nil {
			configure(cfg)
		}
	}})
}

// addrList is every node's gRPC address, for --addr.
func addrList(c *controlplanetest.Cluster) string {
	var out []string
	for i := range c.Len() {
		out = append(out, c.Addr(i))
	}
	return strings.Join(out, ",")
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// apply commits cmd through the leader and fails the test on a refusal.
func apply(t *testing.T, c *controlplanetest.Cluster, cmd *berthv1.Command) *berthv1.CommandResult {
	t.Helper()
	res, err := c.Node(c.Leader()).Apply(testCtx(t), cmd)
	if err != nil {
		t.Fatalf("apply %v: %v", cmd, err)
	}
	return res
}

func registerProxies(t *testing.T, c *controlplanetest.Cluster, ids ...string) {
	t.Helper()
	for _, id := range ids {
		_, err := c.Registry(0).RegisterProxy(testCtx(t), &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{
			Id: id, Region: "eu", Zone: "eu-a", CapacityWeight: 1,
			Addresses: &berthv1.ProxyAddresses{Tunnel: "127.0.0.1:9001", Downstream: "127.0.0.1:9002", Peer: "127.0.0.1:9003"},
		}})
		if err != nil {
			t.Fatalf("register %s: %v", id, err)
		}
	}
}

// openConns writes n connections held by proxy straight into the
// registry, named <proxy>-c0000..., serving endpoint.
func openConns(t *testing.T, c *controlplanetest.Cluster, proxy, endpoint string, n int) []string {
	t.Helper()
	var ids []string
	cmd := &berthv1.ConnectionEventsCommand{ProxyId: proxy}
	for i := range n {
		id := fmt.Sprintf("%s-c%04d", proxy, i)
		ids = append(ids, id)
		cmd.Events = append(cmd.Events, &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{
			Connection: &berthv1.Connection{Id: id, Slot: fmt.Sprintf("slot-%d", i), AgentId: "agent-" + proxy, Endpoints: []string{endpoint}}}}})
	}
	res := apply(t, c, &berthv1.Command{Kind: &berthv1.Command_ConnectionEvents{ConnectionEvents: cmd}})
	if len(res.EventErrors) > 0 {
		t.Fatalf("open connections: %v", res.EventErrors)
	}
	return ids
}

func closeConns(t *testing.T, c *controlplanetest.Cluster, proxy string, ids []string) {
	t.Helper()
	cmd := &berthv1.ConnectionEventsCommand{ProxyId: proxy}
	for _, id := range ids {
		cmd.Events = append(cmd.Events, &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Close{Close: &berthv1.ConnectionClose{ConnectionId: id}}})
	}
	if res := apply(t, c, &berthv1.Command{Kind: &berthv1.Command_ConnectionEvents{ConnectionEvents: cmd}}); len(res.EventErrors) > 0 {
		t.Fatalf("close connections: %v", res.EventErrors)
	}
}

func createMove(t *testing.T, c *controlplanetest.Cluster, id, conn, from, to string) {
	t.Helper()
	apply(t, c, &berthv1.Command{Kind: &berthv1.Command_CreateMoves{CreateMoves: &berthv1.CreateMovesCommand{Moves: []*berthv1.Move{{
		Id: id, ConnectionId: conn, FromProxyId: from, ToProxyId: to, Reason: "drain",
		DeadlineUnixMs: time.Now().Add(time.Hour).UnixMilli(),
	}}}}})
}

func TestServerCommandsOnARealCluster(t *testing.T) {
	c := quietCluster(t, 3, nil)
	addrs := addrList(c)

	r := berthctl(t, addrs, "server", "list")
	if r.code != 0 {
		t.Fatalf("list: exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("list: want a header and 3 servers:\n%s", r.stdout)
	}
	leaderID := c.Node(c.Leader()).ID()
	for _, l := range lines[1:] {
		if f := strings.Fields(l); (f[1] == "*") != (f[0] == leaderID) {
			t.Fatalf("list marks the wrong leader (want %s):\n%s", leaderID, r.stdout)
		}
	}

	// Transfer to a named follower: it leads afterwards.
	target := c.Node(follower(c)).ID()
	r = berthctl(t, addrs, "server", "transfer-leader", target)
	if r.code != 0 || !strings.Contains(r.stdout, "leader is now "+target) {
		t.Fatalf("transfer-leader: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if got := c.Node(c.Leader()).ID(); got != target {
		t.Fatalf("leader is %s after the transfer, want %s", got, target)
	}
	if r := berthctl(t, addrs, "server", "transfer-leader", "nobody"); r.code == 0 || !strings.Contains(r.stderr, "NotFound") {
		t.Fatalf("transfer to a non-member: exit %d %s", r.code, r.stderr)
	}

	// Add a fourth node (running, empty data dir), then remove it again.
	cfg := controlplane.Default()
	cfg.ID, cfg.DataDir, cfg.Insecure = "cp3", t.TempDir(), true
	cfg.RaftAddr, cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.Discovery.Mode = ""
	controlplanetest.FastRaft(&cfg)
	extra, err := controlplane.New(cfg, nil, controlplane.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = extra.Close() })
	r = berthctl(t, addrs, "server", "add", "cp3", "--raft-addr", extra.RaftAddr(), "--grpc-addr", extra.GRPCAddr())
	if r.code != 0 || !strings.Contains(r.stdout, "added server cp3") {
		t.Fatalf("add: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	c.WaitMembers(4)
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if _, id := extra.Raft().LeaderWithID(); string(id) != target {
			return fmt.Errorf("cp3 follows %q", id)
		}
		return nil
	})
	r = berthctl(t, addrs, "-o", "json", "server", "list")
	var listed struct {
		Servers []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"servers"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil || len(listed.Servers) != 4 {
		t.Fatalf("json list: %v\n%s", err, r.stdout)
	}
	r = berthctl(t, addrs, "server", "remove", "cp3")
	if r.code != 0 || !strings.Contains(r.stdout, "removed server cp3") {
		t.Fatalf("remove: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	c.WaitMembers(3)
	if r := berthctl(t, addrs, "server", "list"); strings.Contains(r.stdout, "cp3") {
		t.Fatalf("cp3 still listed:\n%s", r.stdout)
	}
	if r := berthctl(t, addrs, "server", "add", "cp4"); r.code == 0 || !strings.Contains(r.stderr, "--raft-addr") {
		t.Fatalf("add without addresses: exit %d %s", r.code, r.stderr)
	}
}

func TestProxyRemoveOnlyOnceItIsDown(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Enabled = false
		cfg.Heartbeat = controlplane.HeartbeatConfig{Interval: 50 * time.Millisecond, UnhealthyAfter: 500 * time.Millisecond,
			DownAfter: time.Second, Grace: 0}
	}})
	addrs := addrList(c)
	registerProxies(t, c, "p1", "p2")

	// p1 heartbeats until stopped; p2 never does and goes DOWN.
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			cl := berthv1.NewClusterServiceClient(c.Conn(c.Leader()))
			_, _ = cl.ReportLoad(ctx, &berthv1.ReportLoadRequest{Samples: []*berthv1.LoadSample{{ProxyId: "p1"}}})
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	t.Cleanup(func() { stop(); wg.Wait() })
	waitStatus(t, c, "p2", berthv1.ProxyStatus_PROXY_STATUS_DOWN)
	if p := proxyStatus(t, c, "p1"); p != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE {
		t.Fatalf("heartbeating p1 is %v", p)
	}

	r := berthctl(t, addrs, "proxy", "remove", "p1")
	if r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") || !strings.Contains(r.stderr, "ACTIVE") {
		t.Fatalf("removing a live proxy: exit %d %s", r.code, r.stderr)
	}
	if r := berthctl(t, addrs, "proxy", "remove", "p1", "-o", "json"); r.code == 0 {
		t.Fatal("removing a live proxy succeeded")
	}
	r = berthctl(t, addrs, "proxy", "remove", "p2")
	if r.code != 0 || !strings.Contains(r.stdout, "removed proxy p2") {
		t.Fatalf("removing a down proxy: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := berthctl(t, addrs, "proxy", "remove", "p2"); r.code == 0 || !strings.Contains(r.stderr, "NotFound") {
		t.Fatalf("removing it twice: exit %d %s", r.code, r.stderr)
	}

	// p1 stops: once DOWN it can go too; then neither is listed.
	stop()
	wg.Wait()
	waitStatus(t, c, "p1", berthv1.ProxyStatus_PROXY_STATUS_DOWN)
	if r := berthctl(t, addrs, "proxy", "remove", "p1"); r.code != 0 {
		t.Fatalf("removing p1 once down: exit %d %s", r.code, r.stderr)
	}
	r = berthctl(t, addrs, "status", "proxies", "--consistency", "linearizable")
	if r.code != 0 || strings.Contains(r.stdout, "p1") || strings.Contains(r.stdout, "p2") {
		t.Fatalf("status proxies after removal: exit %d\n%s", r.code, r.stdout)
	}
}

func proxyStatus(t *testing.T, c *controlplanetest.Cluster, id string) berthv1.ProxyStatus {
	t.Helper()
	resp, err := c.Admin(c.Leader()).GetProxy(testCtx(t), &berthv1.GetProxyRequest{ProxyId: id, Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		t.Fatalf("get %s: %v", id, err)
	}
	return resp.GetProxy().GetStatus()
}

func waitStatus(t *testing.T, c *controlplanetest.Cluster, id string, want berthv1.ProxyStatus) {
	t.Helper()
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if got := proxyStatus(t, c, id); got != want {
			return fmt.Errorf("%s is %v, want %v", id, got, want)
		}
		return nil
	})
}

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDrainWaitPagesPastAThousandAndOutlivesTimeout(t *testing.T) {
	c := quietCluster(t, 1, nil)
	registerProxies(t, c, "p1", "p2")
	ids := openConns(t, c, "p1", "web", 1500)
	createMove(t, c, "m1", ids[0], "p1", "p2")

	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		root := newRootCmd(&stdout, &stderr, func(string) string { return "" })
		done <- execute(t.Context(), root, []string{"--insecure", "--addr", c.Addr(0), "--timeout", "1s",
			"drain", "p1", "--wait", "--wait-interval", "50ms", "--wait-timeout", "1m"}, &stderr)
	}()
	waitFor := func(s string) {
		t.Helper()
		controlplanetest.Eventually(t, 20*time.Second, func() error {
			if !strings.Contains(stderr.String(), s) {
				return fmt.Errorf("no %q in stderr:\n%s", s, stderr.String())
			}
			return nil
		})
	}
	// 1,500 counted: every page of 1,000 was read.
	waitFor("p1: 1500 connection(s) left, 1 move(s) in flight (0 of 1500 moved)")
	start := time.Now()
	for i, batch := range [][]string{ids[:600], ids[600:1200], ids[1200:]} {
		closeConns(t, c, "p1", batch)
		if i < 2 {
			waitFor(fmt.Sprintf("p1: %d connection(s) left, 0 move(s) in flight (%d of 1500 moved)", 1500-600*(i+1), 600*(i+1)))
			time.Sleep(600 * time.Millisecond) // so the wait runs past --timeout
		}
	}
	code := <-done
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if code != 0 || !strings.Contains(stderr.String(), "p1 holds no connections") {
		t.Fatalf("drain --wait: exit %d", code)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("the wait took %s, not past the 1s --timeout", waited)
	}
	if !strings.Contains(stdout.String(), "draining") {
		t.Fatalf("drain printed no draining proxy:\n%s", stdout.String())
	}
}

func TestDrainProgressBarOnATerminal(t *testing.T) {
	var buf bytes.Buffer
	p := newDrainProgress(&buf, true, "p1")
	p.show(drainCount{connections: 100, moves: 4})
	p.show(drainCount{connections: 50, moves: 2})
	p.end()
	want := "\rp1 [..............................] 0/100 moved, 100 left, 4 in flight\033[K" +
		"\rp1 [###############...............] 50/100 moved, 50 left, 2 in flight\033[K\n"
	if buf.String() != want {
		t.Fatalf("got %q\nwant %q", buf.String(), want)
	}
	buf.Reset()
	p = newDrainProgress(&buf, false, "p1")
	p.show(drainCount{connections: 3, moves: 1})
	p.show(drainCount{connections: 3, moves: 1}) // unchanged: no line
	p.show(drainCount{connections: 1})
	p.end()
	want = "p1: 3 connection(s) left, 1 move(s) in flight (0 of 3 moved)\np1: 1 connection(s) left, 0 move(s) in flight (2 of 3 moved)\n"
	if buf.String() != want {
		t.Fatalf("got %q\nwant %q", buf.String(), want)
	}
}

// follower is the slot of a running node that does not lead.
func follower(c *controlplanetest.Cluster) int {
	l := c.Leader()
	for i := range c.Len() {
		if i != l && c.Node(i) != nil {
			return i
		}
	}
	return -1
}
