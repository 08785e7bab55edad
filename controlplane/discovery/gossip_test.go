package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// fastGossip shortens memberlist's timings so failure detection takes
// about a second on loopback.
func fastGossip(c *memberlist.Config) {
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.SuspicionMult = 2
	c.GossipInterval = 20 * time.Millisecond
	c.PushPullInterval = 200 * time.Millisecond
	c.GossipToTheDeadTime = 2 * time.Second
	c.TCPTimeout = time.Second
}

type gossipOpts struct {
	grpc   string
	secret string
	bind   string
	seeds  []string
}

// testNode is a Gossip with a count of its completed failure-detection
// probes, a measure of gossip rounds.
type testNode struct {
	*Gossip
	probes *atomic.Int64
}

type probeCounter struct{ n *atomic.Int64 }

func (p probeCounter) AckPayload() []byte { return nil }
func (p probeCounter) NotifyPingComplete(*memberlist.Node, time.Duration, []byte) {
	p.n.Add(1)
}

func startGossip(t *testing.T, logger *slog.Logger, o gossipOpts) testNode {
	t.Helper()
	cfg := Default()
	cfg.Mode = ModeGossip
	cfg.PollInterval = 100 * time.Millisecond
	cfg.Gossip.Bind = "127.0.0.1:0"
	if o.bind != "" {
		cfg.Gossip.Bind = o.bind
	}
	cfg.Gossip.Secret = o.secret
	cfg.Gossip.Join = o.seeds
	cfg.Gossip.Profile = ProfileLocal
	probes := new(atomic.Int64)
	cfg.Gossip.tune = func(c *memberlist.Config) {
		fastGossip(c)
		c.Ping = probeCounter{probes}
	}
	d, err := New(cfg, o.grpc, logger.With("node", o.grpc))
	if err != nil {
		t.Fatalf("start gossip %s: %v", o.grpc, err)
	}
	g := d.(*Gossip)
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("close %s: %v", o.grpc, err)
		}
	})
	return testNode{g, probes}
}

func sees(g testNode, want ...string) bool {
	got, err := g.Discover(context.Background())
	return err == nil && slices.Equal(got, want)
}

func TestGossipCluster(t *testing.T) {
	logger := testLogger(t)
	checkNoLeaks(t)
	const secret = "correct horse battery staple"
	a := startGossip(t, logger, gossipOpts{grpc: "127.0.0.1:7001", secret: secret})
	b := startGossip(t, logger, gossipOpts{grpc: "127.0.0.1:7002", secret: secret, seeds: []string{a.LocalAddr()}})
	c := startGossip(t, logger, gossipOpts{grpc: "127.0.0.1:7003", secret: secret, seeds: []string{b.LocalAddr()}})

	converged := func() bool {
		return sees(a, "127.0.0.1:7002", "127.0.0.1:7003") &&
			sees(b, "127.0.0.1:7001", "127.0.0.1:7003") &&
			sees(c, "127.0.0.1:7001", "127.0.0.1:7002")
	}
	eventually(t, 10*time.Second, converged, "three nodes with one secret did not converge")

	t.Run("other secret never joins", func(t *testing.T) {
		d := startGossip(t, logger, gossipOpts{
			grpc: "127.0.0.1:7004", secret: "another secret",
			seeds: []string{a.LocalAddr(), b.LocalAddr(), c.LocalAddr()},
		})
		// Joining the other way is refused too.
		if _, err := a.ml.Join([]string{d.LocalAddr()}); err == nil {
			t.Error("a joined a node with another secret")
		}
		// Watch for a bounded time: until d has retried its seeds several
		// times and each of the others has completed several probe rounds
		// (with as many push/pull exchanges: same interval) since d started.
		const rounds = 5
		nodes := []testNode{a, b, c}
		start := make([]int64, len(nodes))
		for i, g := range nodes {
			start[i] = g.probes.Load()
		}
		eventually(t, 20*time.Second, func() bool {
			if !converged() {
				t.Fatal("the cluster changed while a node with another secret knocked")
			}
			for _, g := range nodes {
				if g.ml.NumMembers() != 3 {
					t.Fatalf("%s has %d members", g.name, g.ml.NumMembers())
				}
			}
			if got, err := d.Discover(context.Background()); err != nil || len(got) != 0 {
				t.Fatalf("node with another secret discovered %q, %v", got, err)
			}
			if d.ml.NumMembers() != 1 {
				t.Fatalf("node with another secret has %d members", d.ml.NumMembers())
			}
			for i, g := range nodes {
				if g.probes.Load() < start[i]+rounds {
					return false
				}
			}
			return d.joinRounds.Load() >= rounds
		}, "gossip rounds did not complete")
	})

	t.Run("closed node disappears", func(t *testing.T) {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Discover(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Discover after Close = %v, want ErrClosed", err)
		}
		eventually(t, 10*time.Second, func() bool {
			return sees(a, "127.0.0.1:7002") && sees(b, "127.0.0.1:7001")
		}, "closed node still discovered")
	})

	t.Run("crashed node disappears", func(t *testing.T) {
		// Shutdown without Leave: the others must detect the failure.
		b.crash()
		eventually(t, 10*time.Second, func() bool { return sees(a) }, "crashed node still discovered")
	})
}

// TestGossipRetriesSeeds starts a node whose only seed is not up yet, then
// starts the seed: the periodic retry must connect them.
func TestGossipRetriesSeeds(t *testing.T) {
	logger := testLogger(t)
	checkNoLeaks(t)
	seedAddr := freeGossipAddr(t)
	a := startGossip(t, logger, gossipOpts{grpc: "127.0.0.1:7001", secret: "s", seeds: []string{seedAddr}})
	// Two attempts begun means the first one, made before the seed
	// existed, has ended.
	eventually(t, 5*time.Second, func() bool { return a.joinRounds.Load() >= 2 }, "no join retry")
	if !sees(a) {
		t.Fatal("a discovered something before the seed started")
	}
	startGossip(t, logger, gossipOpts{grpc: "127.0.0.1:7002", secret: "s", bind: seedAddr})
	eventually(t, 10*time.Second, func() bool { return sees(a, "127.0.0.1:7002") }, "seed never joined")
}

// freeGossipAddr returns a loopback address whose port was free for both TCP
// and UDP a moment ago.
func freeGossipAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}

// TestGossipWithoutGRPCAddress: a member without a gRPC address (a proxy or
// berthctl) sees the servers but is not discovered itself.
func TestGossipWithoutGRPCAddress(t *testing.T) {
	logger := testLogger(t)
	checkNoLeaks(t)
	a := startGossip(t, logger, gossipOpts{grpc: "127.0.0.1:7001", secret: "s"})
	p := startGossip(t, logger, gossipOpts{secret: "s", seeds: []string{a.LocalAddr()}})
	eventually(t, 10*time.Second, func() bool { return sees(p, "127.0.0.1:7001") && a.ml.NumMembers() == 2 },
		"proxy did not join")
	if !sees(a) {
		got, _ := a.Discover(context.Background())
		t.Fatalf("server discovered %q, want nothing", got)
	}
}

func TestGossipBadSecretFile(t *testing.T) {
	cfg := Default()
	cfg.Mode = ModeGossip
	cfg.Gossip.Bind = "127.0.0.1:0"
	cfg.Gossip.SecretFile = t.TempDir() + "/missing"
	if _, err := New(cfg, "127.0.0.1:7001", testLogger(t)); err == nil {
		t.Fatal("New accepted a missing secret file")
	}
}

func TestLogWriter(t *testing.T) {
	var got []string
	h := recordHandler{out: &got}
	w := logWriter{slog.New(h)}
	for _, line := range []string{
		"[DEBUG] memberlist: Stream connection from=127.0.0.1:1\n",
		"[INFO] memberlist: Marking x as failed\n",
		"[WARN] memberlist: Was able to connect\n",
		"[ERR] memberlist: Failed to decrypt\n",
		"no prefix\n",
	} {
		if _, err := w.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"DEBUG Stream connection from=127.0.0.1:1",
		"DEBUG Marking x as failed",
		"WARN Was able to connect",
		"ERROR Failed to decrypt",
		"DEBUG no prefix",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

type recordHandler struct{ out *[]string }

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	*h.out = append(*h.out, fmt.Sprintf("%s %s", r.Level, r.Message))
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

// crash stops g without leaving the cluster, as a killed process would.
func (g *Gossip) crash() {
	g.closeOnce.Do(func() {
		g.closed.Store(true)
		g.stop()
		<-g.done
		_ = g.ml.Shutdown()
	})
}
