package controlplane

import (
	"context"

	dto "github.com/prometheus/client_model/go"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// CommitMoves commits planned moves the way the leader's rebalance runner
// does; only tests see it.
func (n *Node) CommitMoves(ctx context.Context, moves []*berthv1.Move) ([]*berthv1.Move, error) {
	r := n.reb.Load()
	if r == nil {
		return nil, n.notLeader()
	}
	return r.commit(ctx, moves, n.clock.Now())
}

// ForwardBatches reports how many ApplyBatch calls this node sent as a
// follower and how many writes they carried.
func (n *Node) ForwardBatches() (calls uint64, writes float64) {
	var m dto.Metric
	_ = n.metrics.forwardBatchSize.Write(&m)
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}
