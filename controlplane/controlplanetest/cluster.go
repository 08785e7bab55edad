// Package controlplanetest runs real control-plane clusters inside a test
// process: every node has its own data dir, real TCP listeners on
// 127.0.0.1, real Raft with fsync, and a fault-injecting network between
// nodes (Isolate, Heal), in the spirit of hashicorp/raft's testing.go.
package controlplanetest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/pki"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Options shape a test cluster.
type Options struct {
	// Configure adjusts each node's config before it starts.
	Configure func(i int, cfg *controlplane.Config)
	// Clock for every node (nil: wall clock).
	Clock controlplane.Clock
	// ClockFor, when set, gives node i its own clock instead.
	ClockFor func(i int) controlplane.Clock
	// Logs go to t.Log (shown on failure) when true; discarded otherwise.
	Logs bool
	// LogStore, when set, wraps node i's Raft log store each time it
	// starts (FaultyLogStore injects disk errors).
	LogStore func(i int, s raft.LogStore) raft.LogStore
	// TLS runs the cluster with mutual TLS: a private CA, a server
	// certificate per node; Conn then dials with a server certificate and
	// DialAs with any role.
	TLS bool
	// Build, when set, is the build node i reports (Deps.Build).
	Build func(i int) *berthv1.BuildInfo
}

// Cluster is a running test cluster.
type Cluster struct {
	t       testing.TB
	opts    Options
	Network *Network

	mu    sync.Mutex
	nodes []*controlplane.Node // nil while stopped
	cfgs  []controlplane.Config
	conns []*grpc.ClientConn

	// PKIDir holds the CA (ca.pem, ca-key.pem) and issued certificates
	// when Options.TLS is set.
	PKIDir string
}

// FastRaft is a Raft timing that elects in well under a second on a loaded
// two-core machine without flapping.
func FastRaft(cfg *controlplane.Config) {
	cfg.Raft.HeartbeatTimeout = 400 * time.Millisecond
	cfg.Raft.ElectionTimeout = 400 * time.Millisecond
	cfg.Raft.LeaderLeaseTimeout = 200 * time.Millisecond
}

// MakeCluster starts n nodes: the first bootstraps, the rest join it through
// the cluster API. It returns once every node is a member and one leads.
func MakeCluster(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	goroutines := runtime.NumGoroutine()
	c := &Cluster{t: t, opts: opts, Network: NewNetwork()}
	if opts.TLS {
		c.PKIDir = t.TempDir()
		if err := pki.CreateCA(c.PKIDir, "test CA", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		cfg := controlplane.Default()
		cfg.ID = fmt.Sprintf("cp%d", i)
		cfg.DataDir = t.TempDir()
		cfg.RaftAddr = "127.0.0.1:0"
		cfg.GRPCAddr = "127.0.0.1:0"
		cfg.HTTPAddr = ""
		cfg.Discovery.Mode = ""
		cfg.Insecure = !opts.TLS
		if opts.TLS {
			cfg.TLS = c.Files(pki.RoleServer, cfg.ID)
		}
		cfg.Bootstrap = i == 0
		FastRaft(&cfg)
		if opts.Configure != nil {
			opts.Configure(i, &cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
		c.nodes = append(c.nodes, nil)
		c.conns = append(c.conns, nil)
		c.Start(i)
		if i == 0 {
			c.Leader()
			continue
		}
		node := c.Node(i)
		Eventually(t, 20*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := berthv1.NewClusterServiceClient(c.Conn(0)).Join(ctx, &berthv1.JoinRequest{Server: &berthv1.Server{
				Id: node.ID(), RaftAddress: node.RaftAddr(), GrpcAddress: node.GRPCAddr()}})
			return err
		})
	}
	c.WaitMembers(n)
	t.Cleanup(func() {
		c.Close()
		checkLeaks(t, goroutines)
	})
	return c
}

// Start starts node i (again), on the same data dir and addresses.
func (c *Cluster) Start(i int) *controlplane.Node {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodes[i] != nil {
		c.t.Fatalf("node %d already running", i)
	}
	cfg := c.cfgs[i]
	logger := slog.New(slog.DiscardHandler)
	if c.opts.Logs {
		logger = slog.New(slog.NewTextHandler(tWriter{c.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var n *controlplane.Node
	// A restarted node reuses its ports; the old socket may linger briefly.
	Eventually(c.t, 10*time.Second, func() error {
		ln, err := net.Listen("tcp", cfg.GRPCAddr)
		if err != nil {
			return err
		}
		deps := controlplane.Deps{Clock: c.opts.Clock, Network: c.Network.For(cfg.ID), GRPCListener: ln}
		if c.opts.ClockFor != nil {
			deps.Clock = c.opts.ClockFor(i)
		}
		if c.opts.Build != nil {
			deps.Build = c.opts.Build(i)
		}
		if c.opts.LogStore != nil {
			deps.WrapLogStore = func(s raft.LogStore) raft.LogStore { return c.opts.LogStore(i, s) }
		}
		n, err = controlplane.New(cfg, logger, deps)
		if err != nil {
			_ = ln.Close()
		}
		return err
	})
	c.Network.Own(n.GRPCAddr(), cfg.ID)
	// Pin the ports so a restart comes back where peers expect it.
	c.cfgs[i].RaftAddr, c.cfgs[i].RaftAdvertise = n.RaftAddr(), n.RaftAddr()
	c.cfgs[i].GRPCAddr, c.cfgs[i].GRPCAdvertise = n.GRPCAddr(), n.GRPCAddr()
	c.cfgs[i].Bootstrap = false
	c.nodes[i] = n
	return n
}

// Stop shuts node i down cleanly, keeping its data dir.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	c.mu.Lock()
	n := c.nodes[i]
	c.nodes[i] = nil
	conn := c.conns[i]
	c.conns[i] = nil
	c.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
	if n != nil {
		if err := n.Close(); err != nil {
			c.t.Logf("stopping node %d: %v", i, err)
		}
	}
}

// Wipe empties stopped node i's data dir, as a replaced disk would be: it
// starts next time with no log, no snapshot and no Raft configuration, on
// the same addresses, and must be added to the cluster again.
func (c *Cluster) Wipe(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodes[i] != nil {
		c.t.Fatalf("wiping running node %d", i)
	}
	dir := c.cfgs[i].DataDir
	if err := os.RemoveAll(dir); err != nil {
		c.t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
}

// Close stops every node.
func (c *Cluster) Close() {
	for i := range c.nodes {
		c.Stop(i)
	}
}

// Len is the number of node slots.
func (c *Cluster) Len() int { return len(c.nodes) }

// Node returns node i, or nil while it is stopped.
func (c *Cluster) Node(i int) *controlplane.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Addr is node i's gRPC address (stable across restarts).
func (c *Cluster) Addr(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfgs[i].GRPCAddr
}

// Index returns the slot of the node with id.
func (c *Cluster) Index(id string) int {
	for i, cfg := range c.cfgs {
		if cfg.ID == id {
			return i
		}
	}
	c.t.Fatalf("no node %q", id)
	return -1
}

// Conn is a client connection to node i's gRPC port, as a client outside
// the cluster would have (not subject to Isolate).
func (c *Cluster) Conn(i int) *grpc.ClientConn {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns[i] == nil {
		c.conns[i] = c.dial(c.cfgs[i].GRPCAddr, pki.RoleServer, "harness")
	}
	return c.conns[i]
}

// Files issues (once) a certificate for role and name from the cluster's
// CA and returns the files a component is configured with.
func (c *Cluster) Files(role pki.Role, name string) pki.Files {
	c.t.Helper()
	dir := filepath.Join(c.PKIDir, string(role))
	cert, key := pki.CertFiles(dir, name)
	if _, err := os.Stat(cert); err != nil {
		if err := pki.CreateCert(c.PKIDir, dir, role, name, []string{"127.0.0.1", "localhost"}, time.Hour); err != nil {
			c.t.Fatal(err)
		}
	}
	return pki.Files{CA: filepath.Join(c.PKIDir, pki.CACertFile), Cert: cert, Key: key}
}

// DialAs connects to node i's gRPC port with a certificate of role (TLS
// clusters only); the connection closes with the test.
func (c *Cluster) DialAs(i int, role pki.Role, name string) *grpc.ClientConn {
	c.t.Helper()
	conn := c.dial(c.Addr(i), role, name)
	c.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func (c *Cluster) dial(addr string, role pki.Role, name string) *grpc.ClientConn {
	c.t.Helper()
	creds := insecure.NewCredentials()
	if c.opts.TLS {
		r, err := pki.NewReloader(c.Files(role, name), nil)
		if err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(r.Close)
		creds = credentials.NewTLS(r.ClientConfig("", pki.RoleServer))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		c.t.Fatalf("dial %s: %v", addr, err)
	}
	return conn
}

// Admin is node i's AdminService.
func (c *Cluster) Admin(i int) berthv1.AdminServiceClient {
	return berthv1.NewAdminServiceClient(c.Conn(i))
}

// Registry is node i's RegistryService.
func (c *Cluster) Registry(i int) berthv1.RegistryServiceClient {
	return berthv1.NewRegistryServiceClient(c.Conn(i))
}

// Leader waits until exactly one running, non-isolated node leads and every
// other running node agrees, and returns its slot.
func (c *Cluster) Leader() int {
	c.t.Helper()
	leader := -1
	Eventually(c.t, 20*time.Second, func() error {
		leader = -1
		for i := range c.nodes {
			n := c.Node(i)
			if n == nil || c.Network.blocked(n.ID(), "") {
				continue
			}
			if n.IsLeader() {
				if leader >= 0 {
					return fmt.Errorf("two leaders: %d and %d", leader, i)
				}
				leader = i
			}
		}
		if leader < 0 {
			return fmt.Errorf("no leader")
		}
		want := c.cfgs[leader].ID
		for i := range c.nodes {
			n := c.Node(i)
			if n == nil || c.Network.blocked(n.ID(), "") {
				continue
			}
			if _, id := n.Raft().LeaderWithID(); string(id) != want {
				return fmt.Errorf("node %d follows %q, not %q", i, id, want)
			}
		}
		return nil
	})
	return leader
}

// WaitMembers waits until the leader's configuration has want servers and
// every running node has applied the leader's index.
func (c *Cluster) WaitMembers(want int) {
	c.t.Helper()
	Eventually(c.t, 20*time.Second, func() error {
		l := c.Node(c.Leader())
		f := l.Raft().GetConfiguration()
		if err := f.Error(); err != nil {
			return err
		}
		if got := len(f.Configuration().Servers); got != want {
			return fmt.Errorf("%d members, want %d", got, want)
		}
		return nil
	})
	c.WaitApplied()
}

// WaitApplied waits until every running node has applied the leader's
// last index (Raft's applied index: some entries never reach the FSM).
func (c *Cluster) WaitApplied() {
	c.t.Helper()
	Eventually(c.t, 20*time.Second, func() error {
		target := c.Node(c.Leader()).Raft().LastIndex()
		for i := range c.nodes {
			if n := c.Node(i); n != nil && !c.Network.blocked(n.ID(), "") && n.Raft().AppliedIndex() < target {
				return fmt.Errorf("node %d applied %d < %d", i, n.Raft().AppliedIndex(), target)
			}
		}
		return nil
	})
}

// Isolate cuts node i off from the other nodes (clients still reach it).
func (c *Cluster) Isolate(i int) { c.Network.Isolate(c.cfgs[i].ID) }

// Heal reconnects node i.
func (c *Cluster) Heal(i int) { c.Network.Heal(c.cfgs[i].ID) }

// State is node i's Raft state.
func (c *Cluster) State(i int) raft.RaftState { return c.Node(i).Raft().State() }

// Eventually retries cond until it returns nil or timeout passes, then fails
// the test with cond's last error. It polls; it never sleeps to synchronise.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		<-tick.C
	}
}

// checkLeaks fails the test if goroutines started during it outlive it.
func checkLeaks(t testing.TB, before int) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before+2 { // a couple of runtime/grpc housekeeping goroutines may remain
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
