package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// fastRebalance makes the planner act within a test's patience.
func fastRebalance(_ int, cfg *controlplane.Config) {
	cfg.Rebalance.Interval = 200 * time.Millisecond
	cfg.Rebalance.MovesPerSecond = 50
	cfg.Rebalance.MoveTimeout = 10 * time.Second
	cfg.Rebalance.Limits.MinAge = 0
	cfg.Rebalance.Limits.CoolDown = 2 * time.Second
	cfg.Heartbeat.Grace = 0
}

// traffic keeps requests flowing through every proxy and counts failures.
type traffic struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	done       chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

func startTraffic(t testing.TB, e *dataplanetest.Env, endpoint string, workers int) *traffic {
	tr := &traffic{done: make(chan struct{})}
	// A test that fails early still stops its load before the
	// environment's cleanups look for leaked goroutines.
	t.Cleanup(func() { tr.stop() })
	for w := range workers {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			c := &http.Client{Timeout: 10 * time.Second}
			defer c.CloseIdleConnections()
			for n := 0; ; n++ {
				select {
				case <-tr.done:
					return
				default:
				}
				p := (w + n) % e.Len()
				if e.Proxy(p) == nil {
					continue
				}
				code, body, hdr, err := e.Get(c, p, endpoint, "/x")
				if err != nil || code != 200 || body == "" {
					tr.failed.Add(1)
					tr.mu.Lock()
					if len(tr.errs) < 10 {
						tr.errs = append(tr.errs, fmt.Sprintf("proxy-%d: %d %q %v", p, code, hdr.Get(proxy.ErrorHeader), err))
					}
					tr.mu.Unlock()
					continue
				}
				tr.ok.Add(1)
			}
		}()
	}
	return tr
}

// stop ends the traffic and returns what it saw.
func (tr *traffic) stop() (ok, failed int64, errs []string) {
	tr.stopOnce.Do(func() { close(tr.done) })
	tr.wg.Wait()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.ok.Load(), tr.failed.Load(), tr.errs
}

func (tr *traffic) finish(t *testing.T) {
	t.Helper()
	ok, failed, errs := tr.stop()
	t.Logf("traffic: %d requests succeeded, %d failed", ok, failed)
	if failed != 0 || ok == 0 {
		t.Fatalf("%d downstream requests failed: %v", failed, errs)
	}
}

// counts is ACTIVE connections per proxy per the registry (a connection
// being moved away is MOVING until its last stream ends and it closes).
func counts(t *testing.T, e *dataplanetest.Env) map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.CP.Admin(e.CP.Leader()).ListConnections(ctx, &berthv1.ListConnectionsRequest{Endpoint: "web"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, c := range resp.Connections {
		if c.State == berthv1.ConnectionState_CONNECTION_STATE_ACTIVE {
			out[c.ProxyId]++
		}
	}
	return out
}

// describeMoves lists every connection and move, for failure messages.
func describeMoves(t *testing.T, e *dataplanetest.Env) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	admin := e.CP.Admin(e.CP.Leader())
	var b strings.Builder
	if resp, err := admin.ListConnections(ctx, &berthv1.ListConnectionsRequest{}); err == nil {
		for _, c := range resp.Connections {
			fmt.Fprintf(&b, "  connection %s agent=%s proxy=%s %v move=%s endpoints=%v\n", c.Id, c.AgentId, c.ProxyId, c.State, c.MoveId, c.Endpoints)
		}
	}
	if resp, err := admin.ListMoves(ctx, &berthv1.ListMovesRequest{}); err == nil {
		for _, m := range resp.Moves {
			fmt.Fprintf(&b, "  move %s %s %s->%s %v new=%s %q\n", m.Id, m.ConnectionId, m.FromProxyId, m.ToProxyId, m.State, m.NewConnectionId, m.AbortReason)
		}
	}
	if resp, err := admin.ListProxies(ctx, &berthv1.ListProxiesRequest{}); err == nil {
		for _, p := range resp.Proxies {
			fmt.Fprintf(&b, "  proxy %s %v %v\n", p.Id, p.Status, p.Health)
		}
	}
	return b.String()
}

// longStreams holds WebSocket and TCP streams open through the proxies and
// exchanges a message on each at every check.
type longStreams struct {
	ws  []*websocket.Conn
	tcp []net.Conn
}

func openLongStreams(t *testing.T, e *dataplanetest.Env) *longStreams {
	ls := &longStreams{}
	for p := range e.Len() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, _, err := websocket.Dial(ctx, "ws://"+e.DownstreamAddr(p)+"/ws", &websocket.DialOptions{Host: "ws.berth.test"})
		cancel()
		if err != nil {
			t.Fatalf("websocket through proxy-%d: %v", p, err)
		}
		ls.ws = append(ls.ws, c)
		ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := agent.DialEndpoint(ctx, e.DownstreamAddr(p), "tcp", nil)
		cancel()
		if err != nil {
			t.Fatalf("tcp through proxy-%d: %v", p, err)
		}
		ls.tcp = append(ls.tcp, conn)
	}
	return ls
}

func (ls *longStreams) check(t *testing.T, round int) {
	t.Helper()
	for i, c := range ls.ws {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		msg := fmt.Sprintf("ws %d/%d", i, round)
		err := c.Write(ctx, websocket.MessageText, []byte(msg))
		var got []byte
		if err == nil {
			_, got, err = c.Read(ctx)
		}
		cancel()
		if err != nil || string(got) != msg {
			t.Fatalf("websocket %d was cut or garbled in round %d: %q %v", i, round, got, err)
		}
	}
	for i, c := range ls.tcp {
		line := fmt.Sprintf("tcp %d/%d\n", i, round)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, len(line))
		_, err := io.WriteString(c, line)
		if err == nil {
			_, err = io.ReadFull(c, buf)
		}
		if err != nil || string(buf) != line {
			t.Fatalf("tcp stream %d was cut in round %d: %q %v", i, round, buf, err)
		}
	}
}

func (ls *longStreams) close() {
	for _, c := range ls.ws {
		_ = c.Close(websocket.StatusNormalClosure, "")
	}
	for _, c := range ls.tcp {
		_ = c.Close()
	}
}

func TestScaleOutAndDrainLoseNothing(t *testing.T) {
	// Long-lived streams finish on the old tunnel: neither side may cut it.
	e := dataplanetest.Start(t, dataplanetest.Options{ConfigureNode: fastRebalance,
		ConfigureProxy: func(_ int, cfg *proxy.Config) { cfg.DrainTimeout = 2 * time.Minute },
		ConfigureAgent: func(cfg *agent.Config) { cfg.DrainTimeout = 2 * time.Minute },
	})
	up := dataplanetest.Upstream(t, "svc")
	demo := startDemo(t)
	echo := startTCPEcho(t)
	const agents = 12
	addrs := e.TunnelAddrs()
	for i := range agents {
		e.Agent(fmt.Sprintf("agent-%02d", i), []string{addrs[i%2], addrs[(i+1)%2]},
			map[string]string{"web": up, "ws": demo, "tcp": echo})
	}
	e.WaitConnections("web", agents)
	// Everyone routes before load starts.
	c := httpClient(t)
	for p := range 2 {
		expectBody(t, e, c, p, "web", "/x", "svc /x")
	}
	tr := startTraffic(t, e, "web", 8)
	streams := openLongStreams(t, e)
	streams.check(t, 0)

	// Scale out: a third proxy gets its share.
	e.AddProxy()
	start := time.Now()
	controlplanetest.Eventually(t, 60*time.Second, func() error {
		n := counts(t, e)
		if n["proxy-2"] < 3 || n["proxy-2"] > 5 || len(n) != 3 {
			return fmt.Errorf("connections per proxy: %v\n%s", n, describeMoves(t, e))
		}
		return nil
	})
	t.Logf("scale-out balanced in %v", time.Since(start))
	streams.check(t, 1)

	// Drain proxy-0: it empties.
	onZero := counts(t, e)["proxy-0"]
	if _, err := e.CP.Admin(0).DrainProxy(context.Background(), &berthv1.DrainProxyRequest{ProxyId: "proxy-0"}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.Eventually(t, 60*time.Second, func() error {
		n := counts(t, e)
		if n["proxy-0"] != 0 || n["proxy-1"]+n["proxy-2"] != agents {
			return fmt.Errorf("connections per proxy: %v\n%s", n, describeMoves(t, e))
		}
		return nil
	})
	streams.check(t, 2)
	tr.finish(t)
	// Old tunnels that still carry a long-lived stream close once it ends.
	streams.close()
	var finished []*berthv1.Move
	controlplanetest.Eventually(t, 60*time.Second, func() error {
		if conns := e.WaitConnections("web", agents); len(conns) != agents {
			return fmt.Errorf("%d connections", len(conns))
		}
		for _, c := range e.WaitConnections("web", agents) {
			if c.ProxyId == "proxy-0" {
				return fmt.Errorf("proxy-0 still holds %s", c.Id)
			}
		}
		// A move whose old connection carried a long stream finishes once
		// that stream has ended and the old connection is closed.
		resp, err := e.CP.Admin(e.CP.Leader()).ListMoves(context.Background(), &berthv1.ListMovesRequest{Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if err != nil {
			return err
		}
		for _, m := range resp.Moves {
			if m.State == berthv1.MoveState_MOVE_STATE_PENDING || m.State == berthv1.MoveState_MOVE_STATE_ACCEPTED {
				return fmt.Errorf("move %s is still %v\n%s", m.Id, m.State, describeMoves(t, e))
			}
		}
		finished = resp.Moves
		return nil
	})

	// Every move finished; none was aborted.
	completed := 0
	for _, m := range finished {
		if m.State == berthv1.MoveState_MOVE_STATE_COMPLETED {
			completed++
		}
	}
	t.Logf("%d moves, %d completed", len(finished), completed)
	// At least one move for the scale-out and one per connection drained.
	if completed != len(finished) || completed < onZero+1 {
		t.Fatalf("%d of %d moves completed; proxy-0 held %d before the drain\n%s", completed, len(finished), onZero, describeMoves(t, e))
	}
}
