package controlplane

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// leaderState records the latest term in which this node, as leader, has
// committed an entry of its own (so its commit index covers every earlier
// leader's commits and linearizable reads may use it).
type leaderState struct {
	mu        sync.Mutex
	readyTerm uint64
	changed   chan struct{}
}

func (l *leaderState) setReady(term uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.readyTerm = term
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}

func (l *leaderState) waitReady(ctx context.Context, term uint64) error {
	for {
		l.mu.Lock()
		if l.readyTerm >= term {
			l.mu.Unlock()
			return nil
		}
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the new leader's first commit: %w", ctx.Err())
		}
	}
}

// watchLeadership runs the leader's duties for as long as this node leads,
// and stops them the moment it does not.
func (n *Node) watchLeadership() {
	stop := func() {}
	defer func() { stop() }()
	for {
		select {
		case <-n.ctx.Done():
			return
		case isLeader := <-n.leaderNotify:
			stop()
			stop = func() {}
			n.metrics.leadershipChanges.Inc()
			if !isLeader {
				n.logger.Info("lost leadership")
				continue
			}
			n.logger.Info("gained leadership", "term", n.raft.CurrentTerm())
			stop = n.startLeader()
		}
	}
}

// startLeader runs the leader's duties in the background and returns a
// function that stops them and waits until they have.
func (n *Node) startLeader() func() {
	ctx, cancel := context.WithCancel(n.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.runLeader(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// runLeader runs while this node is leader: commit a barrier for the term, make
// sure every member's metadata is in the registry, then judge proxies'
// heartbeats until leadership ends.
func (n *Node) runLeader(ctx context.Context) {
	term := n.raft.CurrentTerm()
	for {
		err := n.ops.await(func() raft.Future { return n.raft.Barrier(n.cfg.ApplyLimit.Timeout) })
		if err == nil {
			break
		}
		n.logger.Warn("leader barrier failed", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	n.lead.setReady(term)
	n.beats.startTerm(n.clock.Monotonic())
	n.registerSelf(ctx)
	reb := newRebalancer(n, n.cfg.Rebalance)
	n.reb.Store(reb)
	defer n.reb.CompareAndSwap(reb, nil)
	if n.cfg.Rebalance.Enabled {
		go reb.run(ctx)
	}

	tick := time.NewTicker(n.cfg.Heartbeat.Interval)
	defer tick.Stop()
	dead := &reaper{deadSince: make(map[string]time.Time)}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			n.judgeHeartbeats(ctx)
			if n.cfg.RemoveDeadAfter > 0 {
				n.reapDead(ctx, dead)
			}
		}
	}
}

// registerSelf commits this node's metadata when the registry lacks it or
// has it stale, so followers can find the leader's gRPC address.
func (n *Node) registerSelf(ctx context.Context) {
	self := n.selfServer()
	var have *berthv1.Server
	n.fsm.View(func(s *fsm.State, _ uint64) { have, _ = s.Server(self.Id) })
	if have != nil && have.RaftAddress == self.RaftAddress && have.GrpcAddress == self.GrpcAddress {
		return
	}
	cmd := &berthv1.Command{Kind: &berthv1.Command_UpsertServer{UpsertServer: &berthv1.UpsertServerCommand{Server: proto.Clone(self).(*berthv1.Server)}}}
	if _, err := n.Apply(ctx, cmd); err != nil {
		n.logger.Warn("registering own metadata failed", "err", err)
	}
}
