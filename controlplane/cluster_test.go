package controlplane_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testProxy(id string) *berthv1.Proxy {
	return &berthv1.Proxy{
		Id: id, Region: "eu", Zone: "eu-a",
		Addresses: &berthv1.ProxyAddresses{Tunnel: "127.0.0.1:9001", Downstream: "127.0.0.1:9002", Peer: "127.0.0.1:9003"},
		Labels:    map[string]string{"tier": "edge"}, CapacityWeight: 1,
	}
}

func register(t *testing.T, c *controlplanetest.Cluster, node int, id string) *berthv1.RegisterProxyResponse {
	t.Helper()
	resp, err := c.Registry(node).RegisterProxy(ctxT(t), &berthv1.RegisterProxyRequest{Proxy: testProxy(id)})
	if err != nil {
		t.Fatalf("register %s via node %d: %v", id, node, err)
	}
	return resp
}

func follower(c *controlplanetest.Cluster) int {
	l := c.Leader()
	for i := range c.Len() {
		if i != l && c.Node(i) != nil {
			return i
		}
	}
	return -1
}

func getProxy(t *testing.T, c *controlplanetest.Cluster, node int, id string, cons berthv1.Consistency) (*berthv1.Proxy, error) {
	t.Helper()
	resp, err := c.Admin(node).GetProxy(ctxT(t), &berthv1.GetProxyRequest{ProxyId: id, Consistency: cons})
	if err != nil {
		return nil, err
	}
	return resp.Proxy, nil
}

func TestElectionReplicationAndForwarding(t *testing.T) {
	// Each node runs its own build, as in a rolling upgrade.
	build := func(i int) *berthv1.BuildInfo {
		return &berthv1.BuildInfo{Version: fmt.Sprintf("v0.%d.0", i), Revision: fmt.Sprintf("rev%d", i), GoVersion: "go1.26.8"}
	}
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Build: build})
	f := follower(c)
	// A write sent to a follower is forwarded to the leader.
	resp := register(t, c, f, "p1")
	if resp.Proxy.Status != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE || resp.Proxy.Version != resp.Index {
		t.Fatalf("registered proxy: %v at %d", resp.Proxy, resp.Index)
	}
	// A linearizable read on any node sees it at once.
	for i := range 3 {
		p, err := getProxy(t, c, i, "p1", berthv1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err != nil || p.Region != "eu" {
			t.Fatalf("node %d: %v %v", i, p, err)
		}
	}
	// Every node's FSM converges to the same index.
	c.WaitApplied()
	for i := range 3 {
		if _, err := getProxy(t, c, i, "p1", berthv1.Consistency_CONSISTENCY_STALE); err != nil {
			t.Fatalf("stale read on node %d: %v", i, err)
		}
	}
	// Status reports every member healthy.
	st, err := c.Admin(f).ClusterStatus(ctxT(t), &berthv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Servers) != 3 || st.LeaderId == "" {
		t.Fatalf("status: %v", st)
	}
	for _, s := range st.Servers {
		if !s.Healthy || s.GrpcAddress == "" {
			t.Fatalf("server not healthy: %v", s)
		}
		// Every server reports its own build, the answering node's and
		// its peers' (over NodeInfo) alike.
		var i int
		if _, err := fmt.Sscanf(s.Id, "cp%d", &i); err != nil {
			t.Fatalf("server id %q: %v", s.Id, err)
		}
		if want := build(i); s.GetBuild().GetVersion() != want.Version || s.GetBuild().GetRevision() != want.Revision {
			t.Errorf("server %s reports build %v, want %v", s.Id, s.GetBuild(), want)
		}
	}
}

func TestLeaderKilledKeepsAcknowledgedWrites(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	old := c.Leader()
	var acked []string
	for i := range 20 {
		id := fmt.Sprintf("p%02d", i)
		register(t, c, (old+i)%3, id)
		acked = append(acked, id)
	}
	c.Stop(old)
	newLeader := c.Leader()
	if newLeader == old {
		t.Fatal("stopped node still leads")
	}
	for _, id := range acked {
		if _, err := getProxy(t, c, newLeader, id, berthv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
			t.Fatalf("acknowledged write %s lost: %v", id, err)
		}
	}
	register(t, c, newLeader, "after-kill")
	// The old leader comes back from its data dir and catches up.
	c.Start(old)
	c.WaitApplied()
	if _, err := getProxy(t, c, old, "after-kill", berthv1.Consistency_CONSISTENCY_STALE); err != nil {
		t.Fatalf("restarted node did not catch up: %v", err)
	}
}

func TestLaggingNodeCatchesUpBySnapshot(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Raft.TrailingLogs = 10
		cfg.Raft.SnapshotThreshold = 20
		cfg.Raft.SnapshotInterval = 50 * time.Millisecond
	}})
	lag := follower(c)
	c.Stop(lag)
	l := c.Leader()
	for i := range 100 {
		register(t, c, l, fmt.Sprintf("q%03d", i))
	}
	if err := c.Node(l).Raft().Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	c.Start(lag)
	c.WaitApplied()
	if _, err := getProxy(t, c, lag, "q099", berthv1.Consistency_CONSISTENCY_STALE); err != nil {
		t.Fatalf("lagging node missing data: %v", err)
	}
	// The leader truncated its log past what the lagging node had, so it
	// can only have caught up through an installed snapshot.
	if c.Node(l).Raft().Stats()["last_snapshot_index"] == "0" {
		t.Fatalf("leader took no snapshot: %v", c.Node(l).Raft().Stats())
	}
	stats := c.Node(lag).Raft().Stats()
	if stats["last_snapshot_index"] == "0" {
		t.Fatalf("lagging node did not install a snapshot: %v", stats)
	}
}

func TestMembershipAddAndRemove(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 4, controlplanetest.Options{})
	l := c.Leader()
	victim := follower(c)
	id := c.Node(victim).ID()
	// Removal goes through a follower's admin API (forwarded to the leader).
	via := (victim + 1) % 4
	if via == victim {
		via = l
	}
	if _, err := c.Admin(via).RemoveServer(ctxT(t), &berthv1.RemoveServerRequest{ServerId: id}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	c.Stop(victim)
	c.WaitMembers(3)
	st, err := c.Admin(l).ClusterStatus(ctxT(t), &berthv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Servers {
		if s.Id == id {
			t.Fatalf("removed server still listed: %v", st)
		}
	}
	if _, err := c.Admin(l).RemoveServer(ctxT(t), &berthv1.RemoveServerRequest{ServerId: id}); status.Code(err) != codes.NotFound {
		t.Fatalf("removing a non-member: want NotFound, got %v", err)
	}
}

func TestNoQuorumGivesTypedNotLeaderError(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.ApplyLimit.Timeout = 2 * time.Second
	}})
	survivor := follower(c)
	for i := range 3 {
		if i != survivor {
			c.Stop(i)
		}
	}
	_, err := c.Registry(survivor).RegisterProxy(ctxT(t), &berthv1.RegisterProxyRequest{Proxy: testProxy("lonely")})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("want Unavailable, got %v", err)
	}
	if _, ok := client.AsNotLeader(err); !ok {
		t.Fatalf("want a NOT_LEADER detail, got %v", err)
	}
	// Stale reads still work without a leader.
	if _, err := c.Admin(survivor).ListProxies(ctxT(t), &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_STALE}); err != nil {
		t.Fatalf("stale read without a leader: %v", err)
	}
}

func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	f := follower(c)
	register(t, c, f, "p1")
	c.WaitApplied()
	before := registryDump(t, c, f)
	admin, reg := c.Admin(f), c.Registry(f)
	ctx := ctxT(t)
	long := strings.Repeat("x", 200)
	bad := testProxy("p2")
	bad.Labels = map[string]string{}
	for i := range 40 {
		bad.Labels[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"cordon unknown proxy", func() error {
			_, err := admin.CordonProxy(ctx, &berthv1.CordonProxyRequest{ProxyId: "nope"})
			return err
		}, codes.NotFound},
		{"oversize proxy id", func() error {
			_, err := reg.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: testProxy(long)})
			return err
		}, codes.InvalidArgument},
		{"too many labels", func() error {
			_, err := reg.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: bad})
			return err
		}, codes.InvalidArgument},
		{"missing proxy", func() error {
			_, err := reg.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{})
			return err
		}, codes.InvalidArgument},
		{"invalid status enum", func() error {
			_, err := admin.ListProxies(ctx, &berthv1.ListProxiesRequest{Statuses: []berthv1.ProxyStatus{42}})
			return err
		}, codes.InvalidArgument},
		{"invalid consistency", func() error {
			_, err := admin.GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: "p1", Consistency: 9})
			return err
		}, codes.InvalidArgument},
		{"bad page token", func() error {
			_, err := admin.ListProxies(ctx, &berthv1.ListProxiesRequest{PageToken: "!!!"})
			return err
		}, codes.InvalidArgument},
		{"page too large", func() error {
			_, err := admin.ListConnections(ctx, &berthv1.ListConnectionsRequest{PageSize: 1 << 20})
			return err
		}, codes.InvalidArgument},
		{"unknown move", func() error {
			_, err := admin.GetMove(ctx, &berthv1.GetMoveRequest{MoveId: "m1"})
			return err
		}, codes.NotFound},
		{"bad endpoint name", func() error {
			_, err := admin.GetEndpoint(ctx, &berthv1.GetEndpointRequest{Name: "Not_A_Label"})
			return err
		}, codes.InvalidArgument},
		{"watch without topics", func() error {
			s, err := admin.Watch(ctx, &berthv1.WatchRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument},
		{"add server with bad address", func() error {
			_, err := admin.AddServer(ctx, &berthv1.AddServerRequest{Server: &berthv1.Server{Id: "x", RaftAddress: "nohost", GrpcAddress: "127.0.0.1:1"}})
			return err
		}, codes.InvalidArgument},
		{"transfer to a non-member", func() error {
			_, err := admin.TransferLeadership(ctx, &berthv1.TransferLeadershipRequest{ServerId: "ghost"})
			return err
		}, codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if status.Code(err) != tt.want {
				t.Fatalf("want %v, got %v", tt.want, err)
			}
			if msg := status.Convert(err).Message(); msg == "" {
				t.Fatal("error without a message")
			}
		})
	}
	// Refusals that needed the registry to decide (an unknown proxy) pass
	// through the log, but none of them changed any object.
	if after := registryDump(t, c, f); after != before {
		t.Fatalf("refused requests changed the registry:\nbefore %s\nafter  %s", before, after)
	}
}

// registryDump is every proxy, connection, endpoint and move (with their
// versions) as read linearizably from node.
func registryDump(t *testing.T, c *controlplanetest.Cluster, node int) string {
	t.Helper()
	lin := berthv1.Consistency_CONSISTENCY_LINEARIZABLE
	admin := c.Admin(node)
	ps, err := admin.ListProxies(ctxT(t), &berthv1.ListProxiesRequest{Consistency: lin})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := admin.ListConnections(ctxT(t), &berthv1.ListConnectionsRequest{Consistency: lin})
	if err != nil {
		t.Fatal(err)
	}
	es, err := admin.ListEndpoints(ctxT(t), &berthv1.ListEndpointsRequest{Consistency: lin})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := admin.ListMoves(ctxT(t), &berthv1.ListMovesRequest{Consistency: lin})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(ps.Proxies, cs.Connections, es.Endpoints, ms.Moves)
}

func TestCordonDrainUncordon(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	f := follower(c)
	register(t, c, f, "p1")
	admin := c.Admin(f)
	ctx := ctxT(t)
	cr, err := admin.CordonProxy(ctx, &berthv1.CordonProxyRequest{ProxyId: "p1"})
	if err != nil || cr.Proxy.Status != berthv1.ProxyStatus_PROXY_STATUS_CORDONED {
		t.Fatalf("cordon: %v %v", cr, err)
	}
	dr, err := admin.DrainProxy(ctx, &berthv1.DrainProxyRequest{ProxyId: "p1"})
	if err != nil || dr.Proxy.Status != berthv1.ProxyStatus_PROXY_STATUS_DRAINING {
		t.Fatalf("drain: %v %v", dr, err)
	}
	ur, err := admin.UncordonProxy(ctx, &berthv1.UncordonProxyRequest{ProxyId: "p1"})
	if err != nil || ur.Proxy.Status != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE {
		t.Fatalf("uncordon: %v %v", ur, err)
	}
	list, err := admin.ListProxies(ctx, &berthv1.ListProxiesRequest{Statuses: []berthv1.ProxyStatus{berthv1.ProxyStatus_PROXY_STATUS_CORDONED}})
	if err != nil || len(list.Proxies) != 0 {
		t.Fatalf("status filter: %v %v", list, err)
	}
}

func TestPagingFollowsTokens(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{})
	for i := range 25 {
		register(t, c, 0, fmt.Sprintf("p%02d", i))
	}
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		resp, err := c.Admin(0).ListProxies(ctxT(t), &berthv1.ListProxiesRequest{PageSize: 10, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range resp.Proxies {
			got = append(got, p.Id)
		}
		if token = resp.NextPageToken; token == "" {
			if pages != 2 {
				t.Fatalf("want 3 pages, got %d", pages+1)
			}
			break
		}
	}
	if len(got) != 25 || got[0] != "p00" || got[24] != "p24" {
		t.Fatalf("paged ids: %v", got)
	}
}

func TestRestartedNodeKeepsItsState(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	register(t, c, 0, "p1")
	c.WaitApplied()
	for i := range 3 {
		c.Stop(i)
	}
	for i := range 3 {
		c.Start(i)
	}
	l := c.Leader()
	if _, err := getProxy(t, c, l, "p1", berthv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		t.Fatalf("state lost across a full restart: %v", err)
	}
}

func dialT(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// A write resent under its request id (what a follower does when its
// forward's answer is lost) applies once, even when another write to the
// same proxy committed in between: the resend gets the first result and
// does not revert the later write.
func TestResentWriteAppliesOnce(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	f := follower(c)
	labelled := func(value string) *berthv1.Command {
		p := testProxy("p1")
		p.Labels = map[string]string{"value": value}
		return &berthv1.Command{Kind: &berthv1.Command_RegisterProxy{RegisterProxy: &berthv1.RegisterProxyCommand{Proxy: p}}}
	}
	first := labelled("a")
	res, err := c.Node(f).Apply(ctxT(t), first)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.RequestId) == 0 {
		t.Fatal("Apply did not name the command with a request id")
	}
	if _, err := c.Node(c.Leader()).Apply(ctxT(t), labelled("b")); err != nil {
		t.Fatal(err)
	}
	resend := labelled("a")
	resend.RequestId = first.RequestId
	again, err := c.Node(f).Apply(ctxT(t), resend)
	if err != nil {
		t.Fatal(err)
	}
	if again.Index != res.Index {
		t.Fatalf("resend applied at %d, want the first result's index %d", again.Index, res.Index)
	}
	for i := range 3 {
		p, err := getProxy(t, c, i, "p1", berthv1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.Labels["value"]; got != "b" {
			t.Fatalf("node %d: value %q after the resend, want the later write's %q", i, got, "b")
		}
	}
}
