package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Robustness scenarios on real berthd processes (the e2e harness): each
// runs the register workload of the linearizability test against all three
// nodes around a process-level fault and checks the whole history with
// porcupine. docs/RELIABILITY.md lists them with their last results; run
// one many times with
//
//	go test -run 'TestRobustness' -count 20 ./integration/

// e2eRegistry dials every node of c once and returns the workload's view
// of them; a node marked down gets no new operations (calls in flight when
// it went down end as they end).
type e2eRegistry struct {
	regs   []berthv1.RegistryServiceClient
	admins []berthv1.AdminServiceClient
	down   [3]atomic.Bool
}

func newE2ERegistry(t *testing.T, c *e2eCluster) *e2eRegistry {
	t.Helper()
	r := &e2eRegistry{}
	for _, n := range c.nodes {
		conn, err := grpc.NewClient(n.grpcAddr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			// A restarted node is dialled again within a second, not
			// after gRPC's default backoff of up to two minutes.
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second}, MinConnectTimeout: time.Second}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		r.regs = append(r.regs, berthv1.NewRegistryServiceClient(conn))
		r.admins = append(r.admins, berthv1.NewAdminServiceClient(conn))
	}
	return r
}

func (r *e2eRegistry) clients(node int) (berthv1.RegistryServiceClient, berthv1.AdminServiceClient, bool) {
	if r.down[node].Load() {
		return nil, nil, false
	}
	return r.regs[node], r.admins[node], true
}

func (c *e2eCluster) index(n *e2eNode) int {
	for i, m := range c.nodes {
		if m == n {
			return i
		}
	}
	c.t.Fatalf("%s is not in the cluster", n.id)
	return -1
}

// leaderAmong waits until the nodes at addrs agree on a leader other than
// not, and returns it.
func (c *e2eCluster) leaderAmong(addrs []string, not string) *e2eNode {
	c.t.Helper()
	var id string
	e2eEventually(c.t, e2eWait, fmt.Sprintf("a leader other than %q", not), func() (bool, string) {
		st, r := c.clusterStatus(addrs)
		if st == nil {
			return false, r.String()
		}
		id = st.GetLeaderId()
		return id != "" && id != not, st.String()
	})
	return c.node(id)
}

// TestRobustnessLeaderStoppedPastAnElection freezes the leader (SIGSTOP)
// until the others have elected a new one and committed writes, then
// resumes it. The resumed node still believes it leads until it hears of
// the new term; it must not serve a stale linearizable read nor make a
// write visible that the new leader's history does not order.
func TestRobustnessLeaderStoppedPastAnElection(t *testing.T) {
	c := e2eStartCluster(t, e2eBuild(t), [3]e2eNodeSetup{})
	reg := newE2ERegistry(t, c)
	w := startRegisterWorkload(t, reg.clients)
	w.waitOps(30)

	old := c.leaderAmong(c.grpcAddrs(), "")
	i := c.index(old)
	var others []string
	for _, n := range c.nodes {
		if n != old {
			others = append(others, n.grpcAddr)
		}
	}
	t.Logf("stopping leader %s", old.id)
	reg.down[i].Store(true)
	if err := old.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	next := c.leaderAmong(others, old.id)
	t.Logf("%s leads; writes go on without %s", next.id, old.id)
	w.waitOps(30)

	// Reads sent to the frozen node now, after the new leader's writes were
	// acknowledged, wait in its socket buffers; on SIGCONT it handles them
	// before or while it learns of the new term. Each must fail or be fresh.
	var burst sync.WaitGroup
	for j := range 12 {
		burst.Add(1)
		go func() {
			defer burst.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			w.read(ctx, 100+j, reg.admins[i], i, registerKeys[j%len(registerKeys)], w.h.now())
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if err := old.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	burst.Wait()
	reg.down[i].Store(false) // the first operations may reach it before it learns of the new term
	t.Logf("resumed %s", old.id)
	w.waitOps(30)
	c.waitHealthy(3, "")
	w.waitOps(10)
	w.stopAndCheck()
}

// TestRobustnessAllNodesKilledAtOnce kills every node with SIGKILL at the
// same moment, while a writer registers new proxies one after another, and
// restarts them all. Every acknowledged registration must be there after
// the restart, and the register history across the outage linearizable.
func TestRobustnessAllNodesKilledAtOnce(t *testing.T) {
	c := e2eStartCluster(t, e2eBuild(t), [3]e2eNodeSetup{})
	reg := newE2ERegistry(t, c)
	w := startRegisterWorkload(t, reg.clients)

	// The durable writer: each key written once; what was acknowledged
	// must survive.
	var (
		mu     sync.Mutex
		acked  []string
		stop   atomic.Bool
		wrote  sync.WaitGroup
		serial atomic.Int64
	)
	wrote.Add(1)
	go func() {
		defer wrote.Done()
		rng := rand.New(rand.NewPCG(99, 1))
		for !stop.Load() {
			node := rng.IntN(3)
			r, _, ok := reg.clients(node)
			if !ok {
				time.Sleep(time.Millisecond)
				continue
			}
			key := fmt.Sprintf("durable-%d", serial.Add(1))
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := r.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{Id: key}})
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, key)
				mu.Unlock()
			}
		}
	}()
	w.waitOps(100)

	t.Log("killing all three nodes")
	for i := range c.nodes {
		reg.down[i].Store(true)
	}
	for _, n := range c.nodes {
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
	}
	for _, n := range c.nodes {
		c.waitExit(n, e2eWait)
	}
	mu.Lock()
	before := len(acked)
	mu.Unlock()
	for i, n := range c.nodes {
		c.start(n)
		reg.down[i].Store(false)
	}
	c.waitHealthy(3, "")
	w.waitOps(30)
	stop.Store(true)
	wrote.Wait()
	w.stopAndCheck()

	t.Logf("%d durable registrations acknowledged before the kill, %d in all", before, len(acked))
	if before == 0 {
		t.Fatal("no durable registration was acknowledged before the kill")
	}
	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	for _, key := range acked {
		_, err := reg.admins[0].GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: key, Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if status.Code(err) == codes.NotFound {
			t.Errorf("acknowledged registration %s is gone after the restart", key)
		} else if err != nil {
			t.Fatalf("reading %s: %v", key, err)
		}
	}
}

// TestRobustnessFollowerCatchesUpBySnapshot cuts a follower off, lets the
// leader commit and compact its log past everything the follower has (a
// forced snapshot, ten trailing entries), and heals it while the register
// workload goes on. The follower can only catch up by installing the
// leader's snapshot; afterwards it serves linearizable reads like the
// others, and the whole history linearizes.
func TestRobustnessFollowerCatchesUpBySnapshot(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Raft.TrailingLogs = 10
	}})
	w := startRegisterWorkload(t, func(node int) (berthv1.RegistryServiceClient, berthv1.AdminServiceClient, bool) {
		return c.Registry(node), c.Admin(node), true
	})
	w.waitOps(30)
	leader := c.Leader()
	f := (leader + 1) % 3
	t.Logf("cutting off follower %d", f)
	c.Isolate(f)
	w.waitOps(100)
	if err := c.Node(leader).Raft().Snapshot().Error(); err != nil {
		t.Fatalf("snapshot on the leader: %v", err)
	}
	w.waitOps(30) // more than TrailingLogs entries past the snapshot
	if got := c.Node(f).Raft().Stats()["last_snapshot_index"]; got != "0" {
		t.Fatalf("the cut-off follower already has snapshot %s", got)
	}
	t.Logf("healing follower %d", f)
	c.Heal(f)
	controlplanetest.Eventually(t, 60*time.Second, func() error {
		if got := c.Node(f).Raft().Stats()["last_snapshot_index"]; got == "0" {
			return fmt.Errorf("follower %d has installed no snapshot yet", f)
		}
		if fa, la := c.Node(f).Raft().AppliedIndex(), c.Node(c.Leader()).Raft().AppliedIndex(); fa+50 < la {
			return fmt.Errorf("follower %d applied %d, leader %d", f, fa, la)
		}
		return nil
	})
	w.waitOps(30)
	w.stopAndCheck()
}
