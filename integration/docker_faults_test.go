package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berthhq/berth/controlplane/client"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// The Docker fault tests run three berthd in containers built FROM scratch
// (deploy/docker/Dockerfile) on a user-defined bridge network, where they
// find each other by container name, and break them the way real hosts
// break: SIGKILL of a whole host (docker kill), a frozen host (docker
// pause), a host cut off the network (docker network disconnect).
//
// The test process reaches the containers by their IPs on that network,
// over plain gRPC. It never dials the names the nodes advertise: they only
// resolve through Docker's DNS inside the network. A "not leader" answer
// naming a leader is followed by mapping the advertised name to that
// container's current IP.
//
// Everything a run creates carries the label dockerLabel=dockerLabelValue
// and dockerRunLabel=<run id>, and is removed in t.Cleanup. A leftover of a
// crashed run can be listed with
//
//	docker ps -a --filter label=berth.test=docker-faults
//	docker network ls --filter label=berth.test=docker-faults
//	docker images --filter label=berth.test=docker-faults
//
// and is removed by the next run once it is older than dockerStaleAfter.

const (
	dockerLabel        = "berth.test"
	dockerLabelValue   = "docker-faults"
	dockerRunLabel     = "berth.test.run"
	dockerStartedLabel = "berth.test.started" // Unix seconds
	// dockerStaleAfter is when a labelled resource is a crashed run's
	// leftover rather than a concurrent run's.
	dockerStaleAfter = time.Hour

	// dockerWait bounds anything the cluster has to get done: three nodes
	// share two cores with the test, and elections after a fault take a
	// few Raft timeouts.
	dockerWait = 90 * time.Second
	// dockerCallTimeout bounds one RPC to one node.
	dockerCallTimeout = 5 * time.Second

	dockerGRPCPort = "7000"
	dockerRaftPort = "7001"
	dockerHTTPPort = "7002"
	dockerDataDir  = "/var/lib/berth/data"
)

// TestDockerControlPlaneFaults forms a three-container control plane and
// runs the fault scenarios against it, in order, each starting from a
// healthy cluster of three.
func TestDockerControlPlaneFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds an image and runs three berthd containers")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no usable Docker engine (docker info: %v): %s", err, dockerLastLine(string(out)))
	}
	start := time.Now()
	c := dockerStartCluster(t)
	t.Logf("cluster of 3 containers formed %s after the test began", time.Since(start).Round(time.Millisecond))

	scenarios := []struct {
		name string
		fn   func(t *testing.T, c *dockerCluster)
	}{
		{"Formation", dockerFormation},
		{"KillLeader", dockerKillLeader},
		{"PauseFollower", dockerPauseFollower},
		{"PartitionLeader", dockerPartitionLeader},
	}
	for _, s := range scenarios {
		begin := time.Now()
		ok := t.Run(s.name, func(t *testing.T) {
			c.t = t
			defer func() { c.t = c.top }()
			s.fn(t, c)
		})
		t.Logf("%s took %s", s.name, time.Since(begin).Round(time.Millisecond))
		if !ok {
			// The next scenario would start from a broken cluster and
			// fail for reasons that hide the first failure.
			t.Fatalf("%s failed; skipping the remaining scenarios", s.name)
		}
	}
}

// dockerFormation: exactly one leader, every node agrees on it, three
// healthy voters in ClusterStatus from every node's point of view.
func dockerFormation(t *testing.T, c *dockerCluster) {
	leader := c.waitLeader(dockerAll, -1)
	for i := range c.nodes {
		st := c.waitHealthyFrom(i)
		if st.GetLeaderId() != c.nodes[leader].id {
			t.Fatalf("%s says the leader is %q, the nodes say %s", c.nodes[i].id, st.GetLeaderId(), c.nodes[leader].id)
		}
		if got := st.GetLeaderAddress(); got != c.nodes[leader].advertise() {
			t.Errorf("%s gives the leader's address as %q, want %q", c.nodes[i].id, got, c.nodes[leader].advertise())
		}
		for _, s := range st.GetServers() {
			if s.GetSuffrage() != berthv1.ServerSuffrage_SERVER_SUFFRAGE_VOTER {
				t.Errorf("%s: server %s is %s, want a voter", c.nodes[i].id, s.GetId(), s.GetSuffrage())
			}
			n := c.byID(s.GetId())
			if n == nil {
				t.Fatalf("%s lists unknown server %q", c.nodes[i].id, s.GetId())
			}
			if s.GetGrpcAddress() != n.advertise() || s.GetRaftAddress() != n.name+":"+dockerRaftPort {
				t.Errorf("%s: server %s has addresses grpc=%q raft=%q, want %s:%s and %s:%s",
					c.nodes[i].id, s.GetId(), s.GetGrpcAddress(), s.GetRaftAddress(), n.name, dockerGRPCPort, n.name, dockerRaftPort)
			}
		}
	}
	for i := range c.nodes {
		info, err := c.nodeInfo(i)
		if err != nil {
			t.Fatalf("node info from %s: %v", c.nodes[i].id, err)
		}
		if info.GetConfiguredServers() != 3 || !info.GetHasState() {
			t.Errorf("%s: %d configured servers, has state %v; want 3 and true", c.nodes[i].id, info.GetConfiguredServers(), info.GetHasState())
		}
	}
	// Formed through discovery and --bootstrap-expect 3: some node
	// bootstrapped the three-node configuration (every fresh node computes
	// the same one; the others may get it by replication or by joining),
	// and none bootstrapped a cluster of its own.
	var booted []string
	for i, n := range c.nodes {
		logs := c.logs(i)
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, `"msg":"bootstrapped cluster"`) {
				if !strings.Contains(line, `"servers":3`) {
					t.Errorf("%s bootstrapped a configuration of other than 3 servers: %s", n.id, line)
				}
				booted = append(booted, n.id)
			}
		}
		if strings.Contains(logs, "bootstrapped a single-node cluster") {
			t.Errorf("%s bootstrapped a single-node cluster", n.id)
		}
	}
	if len(booted) == 0 {
		t.Errorf("no node logged bootstrapping the cluster")
	}
	t.Logf("leader %s; bootstrapped by %v", c.nodes[leader].id, booted)
}

// dockerKillLeader: SIGKILL the leader's container. The other two elect a
// leader, every write acknowledged before the kill reads back
// linearizably, new writes succeed; the old leader, started again from its
// container's data, rejoins as a follower and catches up.
func dockerKillLeader(t *testing.T, c *dockerCluster) {
	const n = 20
	before := make(map[string]string)
	for i := range n {
		key, value := fmt.Sprintf("p%d", i), fmt.Sprintf("p%d-before-kill", i)
		c.mustWrite(dockerAll, key, value)
		before[key] = value
	}
	old := c.waitLeader(dockerAll, -1)
	oldTerm := c.mustNodeInfo(old).GetTerm()
	rest := dockerOthers(old)
	t.Logf("%d writes acknowledged; killing leader %s (term %d)", n, c.nodes[old].id, oldTerm)
	killed := time.Now()
	c.docker("kill", c.nodes[old].name)

	leader := c.waitLeader(rest, old)
	newTerm := c.mustNodeInfo(leader).GetTerm()
	t.Logf("%s leads (term %d) %s after the kill", c.nodes[leader].id, newTerm, time.Since(killed).Round(time.Millisecond))
	if newTerm <= oldTerm {
		t.Errorf("new leader's term %d is not above the killed leader's %d", newTerm, oldTerm)
	}
	for _, key := range slices.Sorted(maps.Keys(before)) {
		for _, i := range rest {
			c.mustRead(i, key, berthv1.Consistency_CONSISTENCY_LINEARIZABLE, before[key], true)
		}
	}

	after := make(map[string]string)
	for i := range n / 2 {
		key, value := fmt.Sprintf("q%d", i), fmt.Sprintf("q%d-while-down", i)
		c.mustWrite(rest, key, value)
		after[key] = value
	}
	// Overwrites, too: the rejoining node must not keep its old values.
	for i := range 3 {
		key, value := fmt.Sprintf("p%d", i), fmt.Sprintf("p%d-overwritten-while-down", i)
		c.mustWrite(rest, key, value)
		after[key] = value
	}

	c.docker("start", c.nodes[old].name)
	c.refreshIP(old)
	t.Logf("started %s again at %s", c.nodes[old].id, c.nodes[old].ipAddr())
	for _, key := range slices.Sorted(maps.Keys(after)) {
		c.waitRead(old, key, berthv1.Consistency_CONSISTENCY_STALE, after[key])
	}
	for key, value := range before {
		if _, overwritten := after[key]; !overwritten {
			c.mustRead(old, key, berthv1.Consistency_CONSISTENCY_STALE, value, true)
		}
	}
	// It came back from its data dir, not as a fresh node bootstrapping or
	// joining anew, and follows the leader elected without it.
	if starts := strings.Count(c.logs(old), `"had_state":true`); starts < 1 {
		t.Errorf("%s: no start with had_state=true in its log; it did not restart from its data", c.nodes[old].id)
	}
	c.waitLeader(dockerAll, -1)
	c.waitHealthyFrom(leader)
	info := c.mustNodeInfo(old)
	if info.GetState() == "Leader" && info.GetTerm() <= oldTerm {
		t.Errorf("%s leads again in its old term %d", c.nodes[old].id, info.GetTerm())
	}
	c.waitConverged()
}

// dockerPauseFollower: freeze a follower's container. Writes through the
// other two keep succeeding; once thawed, the follower catches up.
func dockerPauseFollower(t *testing.T, c *dockerCluster) {
	leader := c.waitLeader(dockerAll, -1)
	follower := dockerOthers(leader)[0]
	rest := dockerOthers(follower)
	t.Logf("pausing follower %s (leader %s)", c.nodes[follower].id, c.nodes[leader].id)
	c.docker("pause", c.nodes[follower].name)
	paused := true
	t.Cleanup(func() {
		if paused {
			_, _ = dockerRun(context.Background(), "unpause", c.nodes[follower].name)
		}
	})

	// The leader sees it frozen: it stops answering, and its Raft contact
	// goes stale.
	c.eventually("the leader to see "+c.nodes[follower].id+" as unhealthy", func() (bool, string) {
		st, err := c.clusterStatus(leader)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range st.GetServers() {
			if s.GetId() == c.nodes[follower].id {
				return !s.GetHealthy(), s.String()
			}
		}
		return false, st.String()
	})

	want := make(map[string]string)
	begin := time.Now()
	for i := range 20 {
		key, value := fmt.Sprintf("r%d", i), fmt.Sprintf("r%d-while-paused", i)
		c.mustWrite(rest, key, value)
		want[key] = value
	}
	t.Logf("20 writes acknowledged in %s with %s paused", time.Since(begin).Round(time.Millisecond), c.nodes[follower].id)
	for _, key := range slices.Sorted(maps.Keys(want)) {
		c.mustRead(rest[0], key, berthv1.Consistency_CONSISTENCY_LINEARIZABLE, want[key], true)
	}
	if i := c.waitLeader(rest, follower); i != leader {
		t.Logf("leadership moved from %s to %s while %s was paused", c.nodes[leader].id, c.nodes[i].id, c.nodes[follower].id)
	}

	c.docker("unpause", c.nodes[follower].name)
	paused = false
	thawed := time.Now()
	for _, key := range slices.Sorted(maps.Keys(want)) {
		c.waitRead(follower, key, berthv1.Consistency_CONSISTENCY_STALE, want[key])
	}
	t.Logf("%s caught up %s after unpause", c.nodes[follower].id, time.Since(thawed).Round(time.Millisecond))
	c.waitLeader(dockerAll, -1)
	c.waitHealthyFrom(follower)
	c.waitConverged()
}

// dockerPartitionLeader: cut the leader's container off the network while
// clients keep writing and reading linearizably through all three nodes.
// The majority elects a leader and accepts writes; the cut-off node serves
// no linearizable read and stops believing it leads; reconnected, it
// follows and converges. The whole client history must be linearizable.
func dockerPartitionLeader(t *testing.T, c *dockerCluster) {
	h := &history{start: time.Now()}
	keys := []string{"lin-k0", "lin-k1", "lin-k2", "lin-k3"}
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		counter  atomic.Int64
		okWrites atomic.Int64
		okReads  atomic.Int64
		failed   atomic.Int64
		// cutOff is the node cut off the network (-1: none). The test
		// process cannot reach it either, so clients leave it alone: a
		// call to it would only add a write of unknown outcome.
		cutOff atomic.Int32
	)
	cutOff.Store(-1)
	const clients = 4
	for cid := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(cid), uint64(time.Now().UnixNano())))
			for !stop.Load() {
				node := rng.IntN(3)
				if int32(node) == cutOff.Load() {
					continue
				}
				cc := c.conn(node)
				key := keys[rng.IntN(len(keys))]
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				call := h.now()
				var err error
				if rng.IntN(2) == 0 {
					value := fmt.Sprintf("v%d", counter.Add(1))
					_, err = berthv1.NewRegistryServiceClient(cc).RegisterProxy(ctx, &berthv1.RegisterProxyRequest{
						Proxy: &berthv1.Proxy{Id: key, Labels: map[string]string{"value": value}},
					})
					ret := h.now()
					if err != nil {
						ret = math.MaxInt64 // outcome unknown: it may apply at any later point
					} else {
						okWrites.Add(1)
					}
					h.add(porcupine.Operation{ClientId: cid, Input: regInput{write: true, key: key, value: value}, Call: call, Output: regOutput{}, Return: ret})
				} else {
					var resp *berthv1.GetProxyResponse
					resp, err = berthv1.NewAdminServiceClient(cc).GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: key, Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
					ret := h.now()
					switch {
					case err == nil:
						okReads.Add(1)
						h.add(porcupine.Operation{ClientId: cid, Input: regInput{key: key}, Call: call, Output: regOutput{value: resp.GetProxy().GetLabels()["value"]}, Return: ret})
					case status.Code(err) == codes.NotFound:
						err = nil
						okReads.Add(1)
						h.add(porcupine.Operation{ClientId: cid, Input: regInput{key: key}, Call: call, Output: regOutput{}, Return: ret})
					}
					// A failed read observed nothing and is left out.
				}
				cancel()
				if err != nil {
					failed.Add(1)
					// Pacing, not synchronisation: a node that is cut off
					// fails calls at once, and two cores are shared.
					time.Sleep(100 * time.Millisecond)
				} else {
					time.Sleep(2 * time.Millisecond)
				}
			}
		}()
	}
	stopClients := func() {
		if !stop.Swap(true) {
			wg.Wait()
		}
	}
	t.Cleanup(stopClients)

	waitWrites := func(n int64, what string) {
		target := okWrites.Load() + n
		c.eventually(what, func() (bool, string) {
			got := okWrites.Load()
			return got >= target, fmt.Sprintf("%d acknowledged writes, want %d (%d failed calls)", got, target, failed.Load())
		})
	}

	// A proxy the cut-off leader will be asked to cordon: it may append
	// that write while it still believes it leads, but can never commit it.
	c.mustWrite(dockerAll, "split-brain", "before-the-cut")
	waitWrites(30, "writes before the partition")
	old := c.waitLeader(dockerAll, -1)
	oldTerm := c.mustNodeInfo(old).GetTerm()
	rest := dockerOthers(old)
	t.Logf("disconnecting leader %s (term %d) from %s", c.nodes[old].id, oldTerm, c.network)
	cut := time.Now()
	cutOff.Store(int32(old))
	c.docker("network", "disconnect", c.network, c.nodes[old].name)
	connected := false
	t.Cleanup(func() {
		if !connected {
			_, _ = dockerRun(context.Background(), "network", "connect", c.network, c.nodes[old].name)
		}
	})

	type execResult struct {
		r   e2eResult
		err error
	}
	split := make(chan execResult, 1)
	go func() {
		r, err := c.execCtl(old, "cordon", "split-brain", "-o", "json")
		split <- execResult{r, err}
	}()

	leader := c.waitLeader(rest, old)
	newTerm := c.mustNodeInfo(leader).GetTerm()
	t.Logf("majority elected %s (term %d) %s after the cut", c.nodes[leader].id, newTerm, time.Since(cut).Round(time.Millisecond))
	if newTerm <= oldTerm {
		t.Errorf("new leader's term %d is not above the old leader's %d", newTerm, oldTerm)
	}
	waitWrites(30, "writes through the majority during the partition")
	marker := fmt.Sprintf("partition-%d", time.Now().UnixNano())
	c.mustWrite(rest, "partition-marker", marker)

	// Seen from inside the cut-off container (berthctl is in the image):
	// it stops claiming leadership, refuses linearizable reads, and its
	// local state lacks what the majority committed without it.
	c.eventually("the cut-off node to stop claiming leadership", func() (bool, string) {
		st, err := c.execStatus(old)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range st.GetServers() {
			if s.GetId() == c.nodes[old].id {
				return s.GetState() != "Leader" && st.GetLeaderId() != c.nodes[old].id, st.String()
			}
		}
		return false, st.String()
	})
	switch res := <-split; {
	case res.err != nil:
		t.Fatal(res.err)
	case res.r.code == 0:
		t.Errorf("the cut-off node %s acknowledged a write without a quorum: %s", c.nodes[old].id, res.r)
	default:
		t.Logf("write on the cut-off node refused: %s", dockerLastLine(res.r.stderr))
	}
	if r := c.mustExecCtl(old, "status", "proxies", "--consistency", "linearizable", "-o", "json"); r.code == 0 {
		t.Errorf("a linearizable read on the cut-off node %s succeeded: %s", c.nodes[old].id, r)
	} else {
		t.Logf("linearizable read on the cut-off node refused: %s", dockerLastLine(r.stderr))
	}
	r := c.mustExecCtl(old, "status", "proxies", "--consistency", "stale", "-o", "json")
	if r.code != 0 {
		t.Fatalf("a stale read on the cut-off node failed: %s", r)
	}
	stale := &berthv1.ListProxiesResponse{}
	if err := protojson.Unmarshal([]byte(r.stdout), stale); err != nil {
		t.Fatalf("status proxies -o json: %v\n%s", err, r)
	}
	for _, p := range stale.GetProxies() {
		if p.GetId() == "partition-marker" && p.GetLabels()["value"] == marker {
			t.Errorf("the cut-off node has %s=%s, written by the majority after the cut", p.GetId(), marker)
		}
	}

	c.docker("network", "connect", c.network, c.nodes[old].name)
	connected = true
	c.refreshIP(old)
	cutOff.Store(-1)
	t.Logf("reconnected %s at %s", c.nodes[old].id, c.nodes[old].ipAddr())
	c.waitRead(old, "partition-marker", berthv1.Consistency_CONSISTENCY_STALE, marker)
	now := c.waitLeader(dockerAll, -1)
	info := c.mustNodeInfo(old)
	if info.GetState() == "Leader" && info.GetTerm() <= oldTerm {
		t.Errorf("%s leads again in its old term %d", c.nodes[old].id, info.GetTerm())
	}
	t.Logf("after reconnecting: %s is %s, leader %s", c.nodes[old].id, info.GetState(), c.nodes[now].id)
	waitWrites(30, "writes after reconnecting")
	stopClients()

	c.waitHealthyFrom(old)
	c.waitConverged()
	// Whatever the cut-off leader appended on its own was discarded.
	for i := range c.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
		resp, err := berthv1.NewAdminServiceClient(c.conn(i)).GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: "split-brain", Consistency: berthv1.Consistency_CONSISTENCY_STALE})
		cancel()
		if err != nil {
			t.Fatalf("read split-brain on %s: %v", c.nodes[i].id, err)
		}
		if st := resp.GetProxy().GetStatus(); st == berthv1.ProxyStatus_PROXY_STATUS_CORDONED {
			t.Errorf("%s has split-brain %s: the cut-off leader's write survived", c.nodes[i].id, st)
		}
	}
	// Every node holds the same registers, equal to a linearizable read.
	for _, key := range keys {
		want, found := c.readLinearizable(dockerAll, key)
		for i := range c.nodes {
			c.mustRead(i, key, berthv1.Consistency_CONSISTENCY_STALE, want, found)
		}
	}

	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	t.Logf("history: %d operations (%d acknowledged writes, %d reads, %d failed calls)",
		len(ops), okWrites.Load(), okReads.Load(), failed.Load())
	checkStart := time.Now()
	result, info2 := porcupine.CheckOperationsVerbose(registerModel, ops, 2*time.Minute)
	t.Logf("linearizability check: %v in %s", result, time.Since(checkStart).Round(time.Millisecond))
	if result != porcupine.Ok {
		path := filepath.Join(t.TempDir(), "history.html")
		if f, err := os.Create(path); err == nil {
			_ = porcupine.Visualize(registerModel, info2, f)
			_ = f.Close()
		}
		t.Fatalf("history is not linearizable (%v); visualization at %s", result, path)
	}
}

// dockerAll are the three nodes' indexes.
var dockerAll = []int{0, 1, 2}

// dockerOthers returns the indexes of the nodes other than i.
func dockerOthers(i int) []int {
	var out []int
	for _, j := range dockerAll {
		if j != i {
			out = append(out, j)
		}
	}
	return out
}

// dockerNode is one berthd container.
type dockerNode struct {
	id   string // Raft server ID
	name string // container name, resolvable inside the network

	mu   sync.Mutex
	ip   string
	conn *grpc.ClientConn
}

func (n *dockerNode) advertise() string { return n.name + ":" + dockerGRPCPort }

func (n *dockerNode) ipAddr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ip
}

// dockerCluster is three berthd containers on one user-defined network.
type dockerCluster struct {
	t       *testing.T // the running (sub)test; set by the top-level test
	top     *testing.T
	run     string
	image   string
	network string
	nodes   []*dockerNode
}

// dockerStartCluster builds the binaries and the image, creates the
// network and the three containers, and waits until they have formed.
func dockerStartCluster(t *testing.T) *dockerCluster {
	t.Helper()
	dockerPruneStale(t)
	run := dockerRunID()
	c := &dockerCluster{
		t:       t,
		top:     t,
		run:     run,
		image:   "berth-test:" + run,
		network: "berth-" + run,
	}
	labels := []string{
		"--label", dockerLabel + "=" + dockerLabelValue,
		"--label", dockerRunLabel + "=" + run,
		"--label", dockerStartedLabel + "=" + strconv.FormatInt(time.Now().Unix(), 10),
	}

	buildCtx := dockerBuildBinaries(t)
	t.Cleanup(func() {
		if out, err := dockerRun(context.Background(), "rmi", "-f", c.image); err != nil {
			t.Errorf("remove image %s: %v: %s", c.image, err, out)
		}
	})
	began := time.Now()
	c.docker(append(append([]string{"build", "-q", "--target", "berthd", "-t", c.image}, labels...), buildCtx)...)
	t.Logf("built image %s in %s", c.image, time.Since(began).Round(time.Millisecond))

	t.Cleanup(func() {
		if out, err := dockerRun(context.Background(), "network", "rm", c.network); err != nil {
			t.Errorf("remove network %s: %v: %s", c.network, err, out)
		}
	})
	c.docker(append(append([]string{"network", "create", "--driver", "bridge"}, labels...), c.network)...)

	for i := range 3 {
		c.nodes = append(c.nodes, &dockerNode{id: fmt.Sprintf("cp%d", i), name: fmt.Sprintf("berth-%s-cp%d", run, i)})
	}
	t.Cleanup(func() { c.removeContainers() })
	var static []string
	for _, n := range c.nodes {
		static = append(static, n.advertise())
	}
	for _, n := range c.nodes {
		args := append([]string{"run", "--detach", "--name", n.name, "--hostname", n.name, "--network", c.network,
			// Plaintext: a berthd with TLS refuses to start without it
			// (--insecure); one without TLS ignores the variable.
			"--env", "BERTH_INSECURE=true"}, labels...)
		args = append(args, c.image,
			"--id", n.id,
			"--data-dir", dockerDataDir,
			"--grpc-addr", "0.0.0.0:"+dockerGRPCPort,
			"--grpc-advertise", n.advertise(),
			"--raft-addr", "0.0.0.0:"+dockerRaftPort,
			"--raft-advertise", n.name+":"+dockerRaftPort,
			"--http-addr", "0.0.0.0:"+dockerHTTPPort,
			"--bootstrap-expect", "3",
			"--discovery", "static",
			"--discovery-static", strings.Join(static, ","),
			"--discovery-poll-interval", "500ms",
			// Registered proxies never send load samples here and
			// nothing is to be balanced: no writes but the test's.
			"--proxy-unhealthy-after", "10m",
			"--proxy-down-after", "20m",
			"--rebalance=false",
		)
		c.docker(args...)
	}
	for i := range c.nodes {
		c.refreshIP(i)
	}
	// A node that exits (a flag it refuses, say) fails the test at once,
	// with its words, rather than after the formation deadline.
	c.eventually("a leader and three healthy servers", func() (bool, string) {
		for i, n := range c.nodes {
			state, err := dockerRun(context.Background(), "container", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", n.name)
			if err == nil && !strings.HasPrefix(state, "running") {
				t.Fatalf("%s is %s; its log:\n%s", n.id, state, dockerTailLines(c.logs(i), 20))
			}
		}
		st, err := c.clusterStatus(0)
		if err != nil {
			return false, err.Error()
		}
		healthy := 0
		for _, s := range st.GetServers() {
			if s.GetHealthy() {
				healthy++
			}
		}
		return st.GetLeaderId() != "" && healthy == 3 && len(st.GetServers()) == 3, st.String()
	})
	c.waitLeader(dockerAll, -1)
	return c
}

// removeContainers dumps the containers' logs if the test failed, then
// removes them (paused ones included) and closes the connections.
func (c *dockerCluster) removeContainers() {
	t := c.top
	for _, n := range c.nodes {
		n.mu.Lock()
		if n.conn != nil {
			_ = n.conn.Close()
			n.conn = nil
		}
		n.mu.Unlock()
	}
	if t.Failed() {
		for i, n := range c.nodes {
			t.Logf("--- last lines of %s (%s) ---\n%s", n.id, n.name, dockerTailLines(c.logs(i), 40))
		}
	}
	out, err := dockerRun(context.Background(), "ps", "--all", "--quiet", "--filter", "label="+dockerRunLabel+"="+c.run)
	if err != nil {
		t.Errorf("list containers of run %s: %v: %s", c.run, err, out)
		return
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return
	}
	for _, id := range ids {
		_, _ = dockerRun(context.Background(), "unpause", id) // rm of a paused container is refused by some engines
	}
	if out, err := dockerRun(context.Background(), append([]string{"rm", "--force", "--volumes"}, ids...)...); err != nil {
		t.Errorf("remove containers %v: %v: %s", ids, err, out)
	}
}

// dockerBuildBinaries builds static berthd and berthctl into bin/ of a new
// build context, next to a copy of deploy/docker/Dockerfile.
func dockerBuildBinaries(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	root := moduleRoot(t)
	dir := t.TempDir()
	dockerfile, err := os.ReadFile(filepath.Join(root, "deploy", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), dockerfile, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin+string(filepath.Separator), "./cmd/berthd", "./cmd/berthctl")
	cmd.Dir = root
	cmd.Env = append(e2eEnv(), "CGO_ENABLED=0")
	began := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static go build: %v\n%s", err, out)
	}
	t.Logf("built static berthd and berthctl in %s", time.Since(began).Round(time.Millisecond))
	return dir
}

// dockerPruneStale removes what crashed runs left behind: resources with
// the test's label whose start label is older than dockerStaleAfter.
// Younger ones may belong to a run going on right now and are left alone.
func dockerPruneStale(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	filter := "label=" + dockerLabel + "=" + dockerLabelValue
	kinds := []struct {
		list    []string
		inspect []string
		remove  []string
	}{
		{[]string{"ps", "--all", "--quiet", "--filter", filter}, []string{"container", "inspect", "--format", `{{index .Config.Labels "` + dockerStartedLabel + `"}}`}, []string{"rm", "--force", "--volumes"}},
		{[]string{"network", "ls", "--quiet", "--filter", filter}, []string{"network", "inspect", "--format", `{{index .Labels "` + dockerStartedLabel + `"}}`}, []string{"network", "rm"}},
		{[]string{"images", "--quiet", "--filter", filter}, []string{"image", "inspect", "--format", `{{index .Config.Labels "` + dockerStartedLabel + `"}}`}, []string{"rmi", "--force"}},
	}
	for _, k := range kinds {
		out, err := dockerRun(ctx, k.list...)
		if err != nil {
			t.Logf("looking for leftovers (docker %s): %v: %s", strings.Join(k.list, " "), err, out)
			continue
		}
		for _, id := range slices.Compact(slices.Sorted(slices.Values(strings.Fields(out)))) {
			started, err := dockerRun(ctx, append(k.inspect, id)...)
			if err != nil {
				continue
			}
			sec, err := strconv.ParseInt(strings.TrimSpace(started), 10, 64)
			if err != nil || time.Since(time.Unix(sec, 0)) < dockerStaleAfter {
				continue
			}
			if k.remove[0] == "rm" {
				_, _ = dockerRun(ctx, "unpause", id)
			}
			out, err := dockerRun(ctx, append(k.remove, id)...)
			t.Logf("removed leftover %s of a run started %s: %v %s", id, time.Unix(sec, 0).Format(time.RFC3339), err, out)
		}
	}
}

func dockerRunID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%d%s", os.Getpid()%100000, hex.EncodeToString(b))
}

// dockerRun runs the docker CLI and returns its combined output, trimmed.
func dockerRun(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// docker runs the docker CLI and fails the test if it fails.
func (c *dockerCluster) docker(args ...string) string {
	c.t.Helper()
	out, err := dockerRun(context.Background(), args...)
	if err != nil {
		c.t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// logs returns a container's whole log (stdout and stderr), across
// restarts.
func (c *dockerCluster) logs(i int) string {
	out, err := dockerRun(context.Background(), "logs", c.nodes[i].name)
	if err != nil {
		return fmt.Sprintf("docker logs %s: %v: %s", c.nodes[i].name, err, out)
	}
	return out
}

// refreshIP reads node i's current address on the test network (it may
// change when the container restarts or reconnects) and, when it changed,
// replaces the connection to it.
func (c *dockerCluster) refreshIP(i int) {
	c.t.Helper()
	n := c.nodes[i]
	var ip string
	c.eventually(n.id+" to have an address on "+c.network, func() (bool, string) {
		out, err := dockerRun(context.Background(), "container", "inspect", "--format",
			`{{with index .NetworkSettings.Networks "`+c.network+`"}}{{.IPAddress}}{{end}}`, n.name)
		if err != nil {
			return false, err.Error() + ": " + out
		}
		ip = out
		return ip != "", "no address yet"
	})
	n.mu.Lock()
	defer n.mu.Unlock()
	if ip == n.ip && n.conn != nil {
		return
	}
	if n.conn != nil {
		_ = n.conn.Close()
	}
	// passthrough: the address is an IP literal; nothing is resolved.
	cc, err := grpc.NewClient("passthrough:///"+ip+":"+dockerGRPCPort, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.t.Fatalf("grpc client for %s at %s: %v", n.id, ip, err)
	}
	n.ip, n.conn = ip, cc
}

// conn returns the current connection to node i (safe from any goroutine).
func (c *dockerCluster) conn(i int) *grpc.ClientConn {
	n := c.nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.conn
}

func (c *dockerCluster) byID(id string) *dockerNode {
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}

// byAdvertise maps a gRPC address the nodes advertise (name:port) to a
// node index, -1 if none.
func (c *dockerCluster) byAdvertise(addr string) int {
	for i, n := range c.nodes {
		if n.advertise() == addr {
			return i
		}
	}
	return -1
}

func (c *dockerCluster) nodeInfo(i int) (*berthv1.NodeInfoResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	return berthv1.NewClusterServiceClient(c.conn(i)).NodeInfo(ctx, &berthv1.NodeInfoRequest{})
}

func (c *dockerCluster) mustNodeInfo(i int) *berthv1.NodeInfoResponse {
	c.t.Helper()
	var info *berthv1.NodeInfoResponse
	c.eventually("node info from "+c.nodes[i].id, func() (bool, string) {
		var err error
		info, err = c.nodeInfo(i)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return info
}

// waitLeader waits until exactly one node of among reports itself leader,
// it is not notLeader, and every node of among names it as leader; it
// returns that node's index.
func (c *dockerCluster) waitLeader(among []int, notLeader int) int {
	c.t.Helper()
	leader := -1
	c.eventually("one leader that every node follows", func() (bool, string) {
		var seen []string
		leaders := map[int]bool{}
		named := map[string]bool{}
		for _, i := range among {
			info, err := c.nodeInfo(i)
			if err != nil {
				seen = append(seen, fmt.Sprintf("%s: %v", c.nodes[i].id, err))
				return false, strings.Join(seen, "; ")
			}
			seen = append(seen, fmt.Sprintf("%s: %s term %d leader %q applied %d", c.nodes[i].id, info.GetState(), info.GetTerm(), info.GetLeaderId(), info.GetAppliedIndex()))
			if info.GetState() == "Leader" {
				leaders[i] = true
			}
			named[info.GetLeaderId()] = true
		}
		if len(leaders) != 1 || len(named) != 1 {
			return false, strings.Join(seen, "; ")
		}
		for i := range leaders {
			leader = i
		}
		return leader != notLeader && named[c.nodes[leader].id], strings.Join(seen, "; ")
	})
	return leader
}

// waitHealthyFrom waits until ClusterStatus served by node i shows a
// leader and three healthy servers, and returns it.
func (c *dockerCluster) waitHealthyFrom(i int) *berthv1.ClusterStatusResponse {
	c.t.Helper()
	var last *berthv1.ClusterStatusResponse
	c.eventually("three healthy servers as "+c.nodes[i].id+" sees them", func() (bool, string) {
		st, err := c.clusterStatus(i)
		if err != nil {
			return false, err.Error()
		}
		last = st
		healthy := 0
		for _, s := range st.GetServers() {
			if s.GetHealthy() {
				healthy++
			}
		}
		return st.GetLeaderId() != "" && healthy == 3 && len(st.GetServers()) == 3, st.String()
	})
	return last
}

// clusterStatus is ClusterStatus served by node i.
func (c *dockerCluster) clusterStatus(i int) (*berthv1.ClusterStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	return berthv1.NewAdminServiceClient(c.conn(i)).ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
}

// waitConverged waits until all three nodes have applied the same index,
// which their commit index has reached.
func (c *dockerCluster) waitConverged() {
	c.t.Helper()
	c.eventually("all three nodes to apply the same index", func() (bool, string) {
		var seen []string
		applied := map[uint64]bool{}
		var commit uint64
		for i := range c.nodes {
			info, err := c.nodeInfo(i)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", c.nodes[i].id, err)
			}
			seen = append(seen, fmt.Sprintf("%s: %s commit %d applied %d last %d", c.nodes[i].id, info.GetState(), info.GetCommitIndex(), info.GetAppliedIndex(), info.GetLastLogIndex()))
			applied[info.GetAppliedIndex()] = true
			commit = max(commit, info.GetCommitIndex())
		}
		if len(applied) != 1 {
			return false, strings.Join(seen, "; ")
		}
		var idx uint64
		for a := range applied {
			idx = a
		}
		ok := idx > 0 && idx <= commit
		if ok {
			c.t.Logf("converged: %s", strings.Join(seen, "; "))
		}
		return ok, strings.Join(seen, "; ")
	})
}

// write is one RegisterProxy on node i.
func (c *dockerCluster) write(i int, key, value string) error {
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	_, err := berthv1.NewRegistryServiceClient(c.conn(i)).RegisterProxy(ctx, &berthv1.RegisterProxyRequest{
		Proxy: &berthv1.Proxy{Id: key, Labels: map[string]string{"value": value}},
	})
	return err
}

// mustWrite registers proxy key with label value=value through the nodes
// of among, failing over between them and following "not leader" hints,
// until it is acknowledged or dockerWait passes.
func (c *dockerCluster) mustWrite(among []int, key, value string) {
	c.t.Helper()
	next := 0
	c.eventually(fmt.Sprintf("write %s=%s acknowledged", key, value), func() (bool, string) {
		var errs []string
		for range among {
			i := among[next%len(among)]
			err := c.write(i, key, value)
			if err == nil {
				return true, ""
			}
			errs = append(errs, fmt.Sprintf("%s: %v", c.nodes[i].id, err))
			next++
			if nl, ok := client.AsNotLeader(err); ok {
				if j := c.byAdvertise(nl.LeaderAddress); j >= 0 && slices.Contains(among, j) {
					next = slices.Index(among, j)
				}
			}
		}
		return false, strings.Join(errs, "; ")
	})
}

// read is one GetProxy of key on node i.
func (c *dockerCluster) read(i int, key string, consistency berthv1.Consistency) (value string, found bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), dockerCallTimeout)
	defer cancel()
	resp, err := berthv1.NewAdminServiceClient(c.conn(i)).GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: key, Consistency: consistency})
	switch {
	case status.Code(err) == codes.NotFound:
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	return resp.GetProxy().GetLabels()["value"], true, nil
}

// mustRead reads key on node i, retrying only failed calls, and fails the
// test unless the answer is (want, wantFound).
func (c *dockerCluster) mustRead(i int, key string, consistency berthv1.Consistency, want string, wantFound bool) {
	c.t.Helper()
	var (
		got   string
		found bool
	)
	c.eventually(fmt.Sprintf("a %s read of %s on %s", consistency, key, c.nodes[i].id), func() (bool, string) {
		var err error
		got, found, err = c.read(i, key, consistency)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if got != want || found != wantFound {
		c.t.Fatalf("%s read of %s on %s: got %q (found %v), want %q (found %v)", consistency, key, c.nodes[i].id, got, found, want, wantFound)
	}
}

// waitRead polls key on node i until it reads want.
func (c *dockerCluster) waitRead(i int, key string, consistency berthv1.Consistency, want string) {
	c.t.Helper()
	c.eventually(fmt.Sprintf("%s on %s to read %s (%s)", key, c.nodes[i].id, want, consistency), func() (bool, string) {
		got, found, err := c.read(i, key, consistency)
		if err != nil {
			return false, err.Error()
		}
		return found && got == want, fmt.Sprintf("%q (found %v)", got, found)
	})
}

// readLinearizable returns key's value from the first node of among that
// serves a linearizable read.
func (c *dockerCluster) readLinearizable(among []int, key string) (string, bool) {
	c.t.Helper()
	var (
		got   string
		found bool
	)
	next := 0
	c.eventually("a linearizable read of "+key, func() (bool, string) {
		i := among[next%len(among)]
		next++
		var err error
		got, found, err = c.read(i, key, berthv1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", c.nodes[i].id, err)
		}
		return true, ""
	})
	return got, found
}

// execCtl runs berthctl inside node i's container against its own gRPC
// port: the way to ask a node the test process cannot reach. The error is
// for a berthctl that could not run at all; its own failures are in the
// result. Safe from any goroutine.
func (c *dockerCluster) execCtl(i int, args ...string) (e2eResult, error) {
	full := append([]string{"--insecure", "--addr", "127.0.0.1:" + dockerGRPCPort, "--retries", "0", "--call-timeout", "5s"}, args...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", append([]string{"exec", c.nodes[i].name, "/usr/local/bin/berthctl"}, full...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := e2eResult{args: full, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && ctx.Err() == nil:
		r.code = exit.ExitCode()
	default:
		return r, fmt.Errorf("docker exec %s berthctl %s: %w (stderr: %s)", c.nodes[i].name, strings.Join(full, " "), err, stderr.String())
	}
	return r, nil
}

// mustExecCtl is execCtl that fails the test if berthctl could not run.
func (c *dockerCluster) mustExecCtl(i int, args ...string) e2eResult {
	c.t.Helper()
	r, err := c.execCtl(i, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return r
}

// execStatus is `status cluster -o json` served by node i itself.
func (c *dockerCluster) execStatus(i int) (*berthv1.ClusterStatusResponse, error) {
	r, err := c.execCtl(i, "status", "cluster", "-o", "json")
	if err != nil {
		return nil, err
	}
	if r.code != 0 {
		return nil, errors.New(r.String())
	}
	st := &berthv1.ClusterStatusResponse{}
	if err := protojson.Unmarshal([]byte(r.stdout), st); err != nil {
		return nil, fmt.Errorf("not a ClusterStatusResponse: %w: %s", err, r)
	}
	return st, nil
}

// eventually polls cond every 200ms until it holds or dockerWait passes.
func (c *dockerCluster) eventually(what string, cond func() (bool, string)) {
	c.t.Helper()
	e2eEventually(c.t, dockerWait, what, cond)
}

func dockerLastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func dockerTailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
