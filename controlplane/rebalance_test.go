package controlplane_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// imbalanced registers two proxies and opens n connections on the first.
func imbalanced(t *testing.T, c *controlplanetest.Cluster, node, n int) {
	t.Helper()
	register(t, c, node, "p1")
	register(t, c, node, "p2")
	var evs []*berthv1.ConnectionEvent
	for i := range n {
		evs = append(evs, opens(conn(fmt.Sprintf("c%02d", i), "web"))...)
	}
	stream, err := c.Registry(node).Session(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &sessionClient{t: t, stream: stream, seen: map[string]*berthv1.Event{}}
	s.send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Hello{Hello: &berthv1.SessionHello{ProxyId: "p1"}}})
	if ack := s.events(evs); ack.Result.Code != berthv1.ResultCode_RESULT_CODE_OK || len(ack.Result.EventErrors) > 0 {
		t.Fatalf("opens: %v", ack)
	}
}

// reportLoad makes p1 and p2 fresh in node's heartbeat memory.
func reportLoad(t *testing.T, c *controlplanetest.Cluster, node int) error {
	_, err := berthv1.NewClusterServiceClient(c.Conn(node)).ReportLoad(ctxT(t), &berthv1.ReportLoadRequest{Samples: []*berthv1.LoadSample{
		{ProxyId: "p1"}, {ProxyId: "p2"}}})
	return err
}

func moves(t *testing.T, c *controlplanetest.Cluster, node int) []*berthv1.Move {
	t.Helper()
	resp, err := c.Admin(node).ListMoves(ctxT(t), &berthv1.ListMovesRequest{Consistency: berthv1.Consistency_CONSISTENCY_STALE})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Moves
}

func TestRebalancePlansOnTheLeader(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Enabled = false // only on request here
		cfg.Rebalance.Limits.MinAge = 0
		cfg.Heartbeat.Grace = time.Hour
	}})
	l := c.Leader()
	f := follower(c)
	imbalanced(t, c, f, 10)
	if err := reportLoad(t, c, l); err != nil {
		t.Fatal(err)
	}
	// A dry run through a follower: the leader's plan, nothing committed.
	dry, err := c.Admin(f).Rebalance(ctxT(t), &berthv1.RebalanceRequest{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	// 10 against 0 with a ±10 % band: p1 sheds to the band's upper edge.
	if len(dry.Moves) < 4 || len(dry.Moves) > 5 || dry.Imbalance <= 0 {
		t.Fatalf("dry run: %d moves, imbalance %v", len(dry.Moves), dry.Imbalance)
	}
	for _, m := range dry.Moves {
		if m.FromProxyId != "p1" || m.ToProxyId != "p2" || m.Reason == "" {
			t.Fatalf("planned move %v", m)
		}
	}
	if got := moves(t, c, l); len(got) != 0 {
		t.Fatalf("a dry run committed %d moves", len(got))
	}
	// The real thing commits them as PENDING with deadlines.
	done, err := c.Admin(f).Rebalance(ctxT(t), &berthv1.RebalanceRequest{})
	if err != nil || len(done.Moves) != len(dry.Moves) {
		t.Fatalf("rebalance: %v %v", done, err)
	}
	c.WaitApplied()
	for _, m := range moves(t, c, f) {
		if m.State != berthv1.MoveState_MOVE_STATE_PENDING || m.DeadlineUnixMs == 0 {
			t.Fatalf("committed move %v", m)
		}
	}
	// Status shows balance targets.
	list, err := c.Admin(f).ListProxies(ctxT(t), &berthv1.ListProxiesRequest{})
	if err != nil || list.TargetConnections["p1"] != 5 || list.ConnectionCounts["p1"] != 10 {
		t.Fatalf("balance view: %v %v %v", list.GetTargetConnections(), list.GetConnectionCounts(), err)
	}
}

// A plan the FSM refuses as a batch because one move is out of date (its
// connection changed after the plan was made) still commits the rest.
func TestRebalanceCommitsAroundAStaleMove(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Enabled = false
	}})
	imbalanced(t, c, 0, 3)
	deadline := time.Now().Add(time.Minute).UnixMilli()
	plan := []*berthv1.Move{
		{Id: "mv-good-1", ConnectionId: "c00", FromProxyId: "p1", ToProxyId: "p2", Reason: "balance", DeadlineUnixMs: deadline},
		{Id: "mv-stale", ConnectionId: "gone", FromProxyId: "p1", ToProxyId: "p2", Reason: "balance", DeadlineUnixMs: deadline},
		{Id: "mv-good-2", ConnectionId: "c01", FromProxyId: "p1", ToProxyId: "p2", Reason: "balance", DeadlineUnixMs: deadline},
	}
	done, err := c.Node(0).CommitMoves(ctxT(t), plan)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 2 || done[0].Id != "mv-good-1" || done[1].Id != "mv-good-2" {
		t.Fatalf("committed %v, want the two good moves", done)
	}
	got := map[string]berthv1.MoveState{}
	for _, m := range moves(t, c, 0) {
		got[m.Id] = m.State
	}
	if len(got) != 2 || got["mv-good-1"] != berthv1.MoveState_MOVE_STATE_PENDING || got["mv-good-2"] != berthv1.MoveState_MOVE_STATE_PENDING {
		t.Fatalf("registry moves %v", got)
	}
}

func TestStaleLeaderSchedulesNothing(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(i int, cfg *controlplane.Config) {
		// Only node 0 (the first leader) runs the planner, so any move in
		// the registry can only come from it.
		cfg.Rebalance.Enabled = i == 0
		cfg.Rebalance.Interval = 50 * time.Millisecond
		cfg.Rebalance.Limits.MinAge = 0
		cfg.Heartbeat.Grace = time.Hour // no health judgements: the planner is the only proposer
		// A long lease: node 0 goes on believing it leads for a while
		// after it is cut off, which is the window under test.
		cfg.Raft.HeartbeatTimeout, cfg.Raft.ElectionTimeout, cfg.Raft.LeaderLeaseTimeout = time.Second, time.Second, time.Second
	}})
	l := c.Leader()
	if l != 0 {
		t.Fatalf("node %d leads; the test needs node 0", l)
	}
	imbalanced(t, c, 1, 10)
	c.WaitApplied()
	before := c.Node(0).Raft().LastIndex()
	c.Isolate(0)
	// Make the proxies fresh in node 0's memory only: its planner now
	// wants moves, which it can no longer commit.
	if err := reportLoad(t, c, 0); err != nil {
		t.Fatal(err)
	}
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if c.Node(0).Raft().LastIndex() == before {
			return fmt.Errorf("node 0 proposed nothing yet")
		}
		return nil
	})
	// The others elect a new leader (whose planner is off), then node 0
	// comes back and learns it lost.
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		for _, i := range []int{1, 2} {
			if c.Node(i).IsLeader() {
				return nil
			}
		}
		return fmt.Errorf("no new leader")
	})
	register(t, c, 1, "after")
	c.Heal(0)
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if c.Node(0).IsLeader() {
			return fmt.Errorf("node 0 still leads")
		}
		if c.Node(0).FSM().AppliedIndex() < c.Node(c.Leader()).FSM().AppliedIndex() {
			return fmt.Errorf("node 0 behind")
		}
		return nil
	})
	for i := range 3 {
		if got := moves(t, c, i); len(got) != 0 {
			t.Fatalf("node %d has %d moves a deposed leader proposed: %v", i, len(got), got)
		}
	}
}

// A new leader does not take the moves that finished before its term for
// news: an old abort puts no target in back-off (the soak saw drains stall
// after every leader change).
func TestNewLeaderIgnoresMovesFinishedBeforeItsTerm(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Enabled = false // only on request here
		cfg.Rebalance.Limits.MinAge = 0
		cfg.Rebalance.TargetBackoff = time.Hour
		cfg.Heartbeat.Grace = time.Hour
	}})
	l := c.Leader()
	imbalanced(t, c, l, 10)
	if err := reportLoad(t, c, l); err != nil {
		t.Fatal(err)
	}
	first, err := c.Admin(l).Rebalance(ctxT(t), &berthv1.RebalanceRequest{})
	if err != nil || len(first.Moves) == 0 {
		t.Fatalf("first rebalance: %v %v", first, err)
	}
	for _, m := range first.Moves {
		cmd := &berthv1.Command{Kind: &berthv1.Command_UpdateMove{UpdateMove: &berthv1.UpdateMoveCommand{
			MoveId: m.Id, State: berthv1.MoveState_MOVE_STATE_ABORTED, AbortReason: "test"}}}
		if _, err := c.Node(l).Apply(ctxT(t), cmd); err != nil {
			t.Fatal(err)
		}
	}
	next := (l + 1) % 3
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if c.Leader() == next {
			return nil
		}
		_, err := c.Admin(c.Leader()).TransferLeadership(ctxT(t), &berthv1.TransferLeadershipRequest{ServerId: c.Node(next).ID()})
		return fmt.Errorf("leader is %d (transfer: %v)", c.Leader(), err)
	})
	if err := reportLoad(t, c, next); err != nil {
		t.Fatal(err)
	}
	again, err := c.Admin(next).Rebalance(ctxT(t), &berthv1.RebalanceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Moves) == 0 {
		t.Fatal("the new leader planned nothing: it backed off a target for an abort from before its term")
	}
}
