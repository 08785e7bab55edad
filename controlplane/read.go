package controlplane

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Read runs fn over this node's registry state once it is fresh enough for
// the consistency asked, and returns the index the read was served at.
//
//   - STALE: whatever this node has applied, with or without a leader.
//   - DEFAULT: at least what the leader had applied when the read arrived.
//   - LINEARIZABLE: the leader verifies with a quorum that it still leads,
//     and the read waits for the commit index it had then; it reflects every
//     write acknowledged before the read began, from any node.
//
// Followers ask the leader for the index and serve the read from their own
// state (the read-index scheme), so reads scale with nodes.
func (n *Node) Read(ctx context.Context, c berthv1.Consistency, fn func(s *fsm.State)) (uint64, error) {
	var (
		index uint64
		err   error
	)
	switch c {
	case berthv1.Consistency_CONSISTENCY_STALE:
	case berthv1.Consistency_CONSISTENCY_UNSPECIFIED, berthv1.Consistency_CONSISTENCY_DEFAULT:
		index, err = n.readIndex(ctx, false)
	case berthv1.Consistency_CONSISTENCY_LINEARIZABLE:
		index, err = n.readIndex(ctx, true)
	default:
		return 0, fmt.Errorf("%w: consistency %d is not one of STALE, DEFAULT, LINEARIZABLE", ErrInvalidArgument, c)
	}
	if err != nil {
		return 0, err
	}
	if err := n.applied.wait(ctx, index); err != nil {
		return 0, err
	}
	var served uint64
	n.fsm.View(func(s *fsm.State, applied uint64) {
		served = applied
		fn(s)
	})
	return served, nil
}

// readIndex returns the index a read must wait for. verify asks the leader
// to confirm its leadership with a quorum first.
func (n *Node) readIndex(ctx context.Context, verify bool) (uint64, error) {
	if n.raft.State() == raft.Leader {
		return n.localReadIndex(ctx, verify)
	}
	leaderID, addr := n.leader()
	if addr == "" {
		return 0, &client.NotLeaderError{LeaderID: leaderID}
	}
	c, err := n.peers.cluster(addr)
	if err != nil {
		return 0, err
	}
	resp, err := c.ReadIndex(ctx, &berthv1.ReadIndexRequest{Verify: verify})
	if err != nil {
		if nl, ok := client.AsNotLeader(err); ok {
			return 0, nl
		}
		return 0, fmt.Errorf("read index from leader %s: %w", leaderID, err)
	}
	return resp.Index, nil
}

// localReadIndex is readIndex on the leader. A new leader first commits an
// entry of its own term (the barrier in its leader tasks); until then its
// commit index may trail entries earlier leaders committed.
func (n *Node) localReadIndex(ctx context.Context, verify bool) (uint64, error) {
	if !verify {
		return n.fsm.AppliedIndex(), nil
	}
	if err := n.ops.await(n.raft.VerifyLeader); err != nil {
		return 0, fmt.Errorf("verify leadership: %w", err)
	}
	if err := n.lead.waitReady(ctx, n.raft.CurrentTerm()); err != nil {
		return 0, err
	}
	// The commit index may end in entries the FSM never sees (Raft's no-op,
	// barriers, configuration changes), so waiting for the FSM to reach it
	// could wait for the next write. Wait instead until Raft has processed
	// everything up to it, and hand out the FSM's index at that point: every
	// node's FSM reaches that index.
	commit := n.raft.CommitIndex()
	if err := waitRaftApplied(ctx, n, commit); err != nil {
		return 0, err
	}
	return n.fsm.AppliedIndex(), nil
}

// waitRaftApplied polls until Raft has applied index (including entries the
// FSM does not see). Raft offers no notification for this; on a leader that
// keeps up, the first check passes.
func waitRaftApplied(ctx context.Context, n *Node, index uint64) error {
	for n.raft.AppliedIndex() < index {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for Raft to apply %d: %w", index, ctx.Err())
		case <-n.ctx.Done():
			return ErrShutdown
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}
