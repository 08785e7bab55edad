package controlplane

import (
	"context"

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
