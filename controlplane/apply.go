package controlplane

import (
	"context"
	"crypto/rand"
	"errors"
	"time"

	"github.com/hashicorp/raft"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Apply proposes cmd and returns its result once applied. Any node accepts
// it: a follower forwards to the leader. The command's time is stamped here
// when the caller left it empty. A refused command returns its result and
// the fsm sentinel error it maps to; a batch whose events were partly
// refused returns a nil error and lists them in the result.
//
// Apply names the command with a fresh request id unless it has one, so
// that sending it again after an unanswered attempt (a forward cut off by a
// leader change) applies it at most once: the FSM answers a resend with the first
// result. The id is written into cmd: never reuse a command value for
// another write. Without a reachable leader Apply retries until ctx ends (bounded
// by the apply timeout) and then returns *client.NotLeaderError.
func (n *Node) Apply(ctx context.Context, cmd *berthv1.Command) (*berthv1.CommandResult, error) {
	if cmd.NowUnixMs == 0 {
		cmd.NowUnixMs = n.clock.Now().UnixMilli()
	}
	if len(cmd.RequestId) == 0 {
		cmd.RequestId = newRequestID()
	}
	if err := fsm.ValidateCommand(cmd); err != nil {
		return nil, err
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyLimit.Timeout)
	defer cancel()
	start := time.Now()
	res, err := n.applyOrForward(ctx, cmd, data)
	n.metrics.observeApply(time.Since(start), err)
	if err != nil {
		return nil, err
	}
	return res, fsm.ResultError(res)
}

func (n *Node) applyOrForward(ctx context.Context, cmd *berthv1.Command, data []byte) (*berthv1.CommandResult, error) {
	backoff := 10 * time.Millisecond
	for {
		res, err := n.tryApply(ctx, cmd, data)
		if err == nil || !retryable(err) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-n.ctx.Done():
			return nil, ErrShutdown
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

// errForwardUnavailable marks a forward that failed in transit (the leader
// is gone or unreachable) or that the leader answered with Unavailable: the
// command may or may not have been appended.
var errForwardUnavailable = errors.New("leader unreachable")

// retryable errors mean the command was not appended, or that it may have
// been and sending it again is safe: the request id makes a second copy in
// the log a no-op (fsm's request table). Idempotence alone would not do:
// a registration applied again after a later write to the same proxy
// would silently revert that write.
func retryable(err error) bool {
	var notLeader *client.NotLeaderError
	return errors.As(err, &notLeader) || errors.Is(err, raft.ErrNotLeader) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, errForwardUnavailable)
}

// newRequestID is 16 random bytes: unique without coordination.
func newRequestID() []byte {
	id := make([]byte, 16)
	_, _ = rand.Read(id) // never fails (crypto/rand)
	return id
}

func (n *Node) tryApply(ctx context.Context, cmd *berthv1.Command, data []byte) (*berthv1.CommandResult, error) {
	if n.raft.State() == raft.Leader {
		return n.applyLocal(ctx, cmd, data)
	}
	return n.forwarder.forward(ctx, cmd, len(data))
}

// applyLocal proposes cmd on this node, which must be the leader, through
// the batching proposer.
func (n *Node) applyLocal(ctx context.Context, cmd *berthv1.Command, data []byte) (*berthv1.CommandResult, error) {
	return n.proposer.propose(ctx, cmd, data)
}
