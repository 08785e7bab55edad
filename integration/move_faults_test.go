package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Faults in the middle of moves. Each case puts 6 agents on proxy-0 and
// none on proxy-1, commits a rebalance (moves PENDING), injects its fault
// at once, and then checks that the system settles with every live agent
// holding exactly one connection, on a live proxy, and that the registry
// matches what the proxies actually hold.
func TestFaultsDuringMoves(t *testing.T) {
	cases := []struct {
		name  string
		fault func(t *testing.T, e *dataplanetest.Env, agents []*agent.Agent) (liveAgents int)
	}{
		{"target proxy killed", func(t *testing.T, e *dataplanetest.Env, _ []*agent.Agent) int {
			e.StopProxy(1)
			return 6
		}},
		{"source proxy killed", func(t *testing.T, e *dataplanetest.Env, _ []*agent.Agent) int {
			e.StopProxy(0)
			return 6
		}},
		{"agent killed", func(t *testing.T, e *dataplanetest.Env, agents []*agent.Agent) int {
			_ = agents[0].Close()
			return 5
		}},
		{"control-plane leader killed", func(t *testing.T, e *dataplanetest.Env, _ []*agent.Agent) int {
			e.CP.Stop(e.CP.Leader())
			return 6
		}},
		// Issue 13, scenario 2 from the data plane's side (the e2e
		// TestRobustnessAllNodesKilledAtOnce checks the registry's
		// durability under kill -9): the proxies lose every node at once
		// mid-move and must reconcile with the restarted cluster.
		{"whole control plane stopped at once and restarted", func(t *testing.T, e *dataplanetest.Env, _ []*agent.Agent) int {
			var wg sync.WaitGroup
			for i := range e.CP.Len() {
				wg.Go(func() { e.CP.Stop(i) })
			}
			wg.Wait()
			time.Sleep(time.Second) // the proxies notice and retry
			for i := range e.CP.Len() {
				e.CP.Start(i)
			}
			return 6
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := dataplanetest.Start(t, dataplanetest.Options{
				ConfigureNode: func(_ int, cfg *controlplane.Config) {
					cfg.Rebalance.Enabled = false // moves only when the test asks
					cfg.Rebalance.Limits.MinAge = 0
					cfg.Rebalance.MoveTimeout = 2 * time.Second
					cfg.Heartbeat = controlplane.HeartbeatConfig{UnhealthyAfter: time.Second, DownAfter: 3 * time.Second, Grace: 0, Interval: 100 * time.Millisecond}
				},
				ConfigureProxy: func(_ int, cfg *proxy.Config) { cfg.DrainTimeout = 2 * time.Second },
			})
			up := dataplanetest.Upstream(t, "svc")
			addrs := e.TunnelAddrs()
			// Agents know both proxies (to fail over) but start on proxy-0:
			// proxy-1 is down while they connect, then comes back empty.
			e.StopProxy(1)
			var agents []*agent.Agent
			for i := range 6 {
				agents = append(agents, e.Agent(fmt.Sprintf("slot-%d", i), []string{addrs[0], addrs[1]}, map[string]string{"web": up}))
			}
			e.WaitConnections("web", 6)
			e.StartProxy(1)
			e.WaitControlPlane(1)
			controlplanetest.Eventually(t, 20*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				dry, err := e.CP.Admin(e.CP.Leader()).Rebalance(ctx, &berthv1.RebalanceRequest{DryRun: true})
				if err != nil || len(dry.Moves) < 2 {
					return fmt.Errorf("plan not ready: %v %v", dry, err)
				}
				return nil
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			resp, err := e.CP.Admin(e.CP.Leader()).Rebalance(ctx, &berthv1.RebalanceRequest{})
			if err != nil || len(resp.Moves) == 0 {
				t.Fatalf("rebalance: %v %v", resp, err)
			}
			live := tc.fault(t, e, agents)
			settled(t, e, live)
		})
	}
}

// settled waits until every live agent holds exactly one connection in
// the registry, on a running proxy, no move is left unfinished, and each
// running proxy holds exactly the tunnels the registry says.
func settled(t *testing.T, e *dataplanetest.Env, liveAgents int) {
	t.Helper()
	var last string
	controlplanetest.Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var admin berthv1.AdminServiceClient
		for i := range e.CP.Len() {
			if e.CP.Node(i) != nil {
				admin = e.CP.Admin(i)
				break
			}
		}
		conns, err := admin.ListConnections(ctx, &berthv1.ListConnectionsRequest{Endpoint: "web", Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if err != nil {
			return err
		}
		bySlot := map[string][]string{}
		perProxy := map[string]int{}
		for _, c := range conns.Connections {
			bySlot[c.Slot] = append(bySlot[c.Slot], c.ProxyId)
			perProxy[c.ProxyId]++
		}
		last = fmt.Sprint(bySlot)
		if len(bySlot) != liveAgents {
			return fmt.Errorf("%d agents hold connections, want %d: %v", len(bySlot), liveAgents, bySlot)
		}
		for slot, holders := range bySlot {
			if len(holders) != 1 {
				return fmt.Errorf("agent %s has %d connections: %v", slot, len(holders), holders)
			}
		}
		for i := range e.Len() {
			id := fmt.Sprintf("proxy-%d", i)
			p := e.Proxy(i)
			if p == nil {
				if perProxy[id] != 0 {
					return fmt.Errorf("stopped %s still holds %d connections in the registry", id, perProxy[id])
				}
				continue
			}
			if p.Connections() != perProxy[id] {
				return fmt.Errorf("%s holds %d tunnels, the registry says %d", id, p.Connections(), perProxy[id])
			}
		}
		moves, err := admin.ListMoves(ctx, &berthv1.ListMovesRequest{Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE,
			States: []berthv1.MoveState{berthv1.MoveState_MOVE_STATE_PENDING, berthv1.MoveState_MOVE_STATE_ACCEPTED}})
		if err != nil {
			return err
		}
		if n := len(moves.Moves); n != 0 {
			return fmt.Errorf("%d moves unfinished", n)
		}
		return nil
	})
	t.Logf("settled: agent slot -> proxy: %s", last)
}
