package integration

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Robustness scenarios on in-process clusters (controlplanetest), where
// the harness owns the links between nodes, their disks and their clocks.

// inProcessClients is the register workload's view of c: a stopped node
// gets no new operations.
func inProcessClients(c *controlplanetest.Cluster) func(node int) (berthv1.RegistryServiceClient, berthv1.AdminServiceClient, bool) {
	return func(node int) (berthv1.RegistryServiceClient, berthv1.AdminServiceClient, bool) {
		if c.Node(node) == nil {
			return nil, nil, false
		}
		return c.Registry(node), c.Admin(node), true
	}
}

// maxTerm is the highest Raft term among the running nodes.
func maxTerm(c *controlplanetest.Cluster) uint64 {
	var top uint64
	for i := range c.Len() {
		if n := c.Node(i); n != nil {
			if t, err := strconv.ParseUint(n.Raft().Stats()["term"], 10, 64); err == nil {
				top = max(top, t)
			}
		}
	}
	return top
}

// Every link between nodes (Raft and forwarded gRPC) carries 75±50 ms of
// delay each way and "loses" 30 % of what it carries (held a further
// 200 ms, as a TCP retransmission delivers it), at berthd's default Raft
// timing, while the register workload runs on all nodes. The history must
// linearize; writes keep committing; leader churn is reported and bounded.
func TestRobustnessLossyDelayedPeerLinks(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Raft = controlplane.Default().Raft
	}})
	w := startRegisterWorkload(t, inProcessClients(c))
	w.waitOps(30)
	seed := uint64(time.Now().UnixNano())
	t.Logf("degrading every peer link: 75±50 ms each way, 30 %% loss (seed %d)", seed)
	before := maxTerm(c)
	start, acked := time.Now(), w.okWrite.Load()
	c.Network.Degrade(controlplanetest.LinkFaults{Delay: 75 * time.Millisecond, Jitter: 50 * time.Millisecond, Loss: 0.3, Retransmit: 200 * time.Millisecond}, seed)
	time.Sleep(10 * time.Second)
	w.waitOps(20) // it goes on committing through the degraded links
	elections := maxTerm(c) - before
	degradedFor, committed := time.Since(start), w.okWrite.Load()-acked
	c.Network.Degrade(controlplanetest.LinkFaults{}, 0)
	t.Logf("degraded for %v: %d writes acknowledged, %d elections", degradedFor.Round(time.Millisecond), committed, elections)
	// An election needs a heartbeat missing for a whole election timeout;
	// a link this slow may cost a few, not one per second.
	if limit := uint64(degradedFor / (2 * time.Second)); elections > limit {
		t.Errorf("%d elections in %v of degraded links, want at most %d", elections, degradedFor.Round(time.Second), limit)
	}
	w.waitOps(30)
	w.stopAndCheck()
}

// A follower and then the leader are each removed, their disks wiped, and
// added back as new empty servers, while the register workload runs: no
// acknowledged write is lost and no read is stale (the history linearizes),
// and each replaced node catches up.
func TestRobustnessMembershipReplacedUnderLoad(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	w := startRegisterWorkload(t, inProcessClients(c))
	w.waitOps(30)
	replace := func(victim int) {
		t.Helper()
		n := c.Node(victim)
		server := &berthv1.Server{Id: n.ID(), RaftAddress: n.RaftAddr(), GrpcAddress: n.GRPCAddr()}
		via := (victim + 1) % 3
		t.Logf("removing node %d (%s) through node %d", victim, server.Id, via)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		controlplanetest.Eventually(t, 30*time.Second, func() error {
			_, err := c.Admin(via).RemoveServer(ctx, &berthv1.RemoveServerRequest{ServerId: server.Id})
			return err
		})
		c.Stop(victim)
		c.WaitMembers(2)
		w.waitOps(20)
		c.Wipe(victim)
		c.Start(victim)
		t.Logf("adding node %d back with an empty disk", victim)
		controlplanetest.Eventually(t, 30*time.Second, func() error {
			_, err := c.Admin(via).AddServer(ctx, &berthv1.AddServerRequest{Server: server})
			return err
		})
		c.WaitMembers(3)
		w.waitOps(20)
		if got := c.Node(victim).Raft().AppliedIndex(); got == 0 {
			t.Fatalf("replaced node %d applied nothing", victim)
		}
	}
	replace(func() int {
		l := c.Leader()
		return (l + 1) % 3
	}())
	replace(c.Leader())
	w.waitOps(30)
	w.stopAndCheck()
	if err := checkSameRegistry(c); err != nil {
		t.Fatal(err)
	}
}

// checkSameRegistry compares every node's registry once all have applied
// the leader's last index.
func checkSameRegistry(c *controlplanetest.Cluster) error {
	c.WaitApplied()
	var first string
	for i := range c.Len() {
		resp, err := c.Admin(i).ListProxies(context.Background(), &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_STALE, PageSize: 1000})
		if err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		dump := fmt.Sprint(resp.Proxies)
		if i == 0 {
			first = dump
		} else if dump != first {
			return fmt.Errorf("node %d's registry differs from node 0's:\n%s\n%s", i, dump, first)
		}
	}
	return nil
}

// A follower's log store fails every write (ENOSPC, as a full disk or a
// failing fsync would) while the register workload runs: the node keeps
// running and answers linearizable reads with an error rather than stale
// data, the others go on committing, and once the fault clears it catches
// up. Then the same fault on the leader: it steps down and the others go
// on without it.
func TestRobustnessLogStoreFailsOnAFollowerThenTheLeader(t *testing.T) {
	stores := make([]*controlplanetest.FaultyLogStore, 3)
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{LogStore: func(i int, s raft.LogStore) raft.LogStore {
		stores[i] = &controlplanetest.FaultyLogStore{LogStore: s}
		return stores[i]
	}})
	w := startRegisterWorkload(t, inProcessClients(c))
	w.waitOps(30)

	f := (c.Leader() + 1) % 3
	t.Logf("log store of follower %d fails from now on", f)
	stores[f].Fail(true)
	w.waitOps(30)
	if stores[f].Refused() == 0 {
		t.Fatalf("follower %d was asked to store nothing", f)
	}
	if fa, la := c.Node(f).Raft().AppliedIndex(), c.Node(c.Leader()).Raft().AppliedIndex(); fa >= la {
		t.Fatalf("follower %d applied %d with a failing disk, the leader %d", f, fa, la)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := c.Admin(f).GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: registerKeys[0], Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	cancel()
	if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded {
		t.Fatalf("linearizable read on the failing follower: %v, want Unavailable or DeadlineExceeded", err)
	}
	stores[f].Fail(false)
	t.Logf("fault cleared on follower %d", f)
	controlplanetest.Eventually(t, 60*time.Second, func() error {
		if fa, la := c.Node(f).Raft().AppliedIndex(), c.Node(c.Leader()).Raft().AppliedIndex(); fa+10 < la {
			return fmt.Errorf("follower %d applied %d, the leader %d", f, fa, la)
		}
		return nil
	})
	w.waitOps(30)

	l := c.Leader()
	t.Logf("log store of leader %d fails from now on", l)
	stores[l].Fail(true)
	controlplanetest.Eventually(t, 30*time.Second, func() error {
		if c.Node(l).Raft().State() == raft.Leader {
			return fmt.Errorf("node %d still leads with a failing disk", l)
		}
		return nil
	})
	w.waitOps(30)
	stores[l].Fail(false)
	t.Logf("fault cleared on node %d", l)
	w.waitOps(30)
	w.stopAndCheck()
	if err := checkSameRegistry(c); err != nil {
		t.Fatal(err)
	}
}
