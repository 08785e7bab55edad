package controlplane

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Proposal batching: on the leader, commands that arrive while earlier ones
// are being handed to Raft are coalesced into one CommandBatch entry, so
// Raft's per-entry costs (msgpack, bbolt keys, replication framing) are paid
// once per batch instead of once per write. A write that arrives alone is
// proposed alone, without waiting.
const (
	maxBatchBytes = 1 << 20
	proposeQueue  = 4096
)

type proposal struct {
	cmd  *berthv1.Command
	data []byte
	done chan proposalResult // buffered, 1
}

type proposalResult struct {
	res *berthv1.CommandResult
	err error
}

type proposer struct {
	n     *Node
	queue chan *proposal
}

func newProposer(n *Node) *proposer {
	return &proposer{n: n, queue: make(chan *proposal, proposeQueue)}
}

// propose queues cmd (data is its encoding) and waits for its result.
func (p *proposer) propose(ctx context.Context, cmd *berthv1.Command, data []byte) (*berthv1.CommandResult, error) {
	res, err := p.proposeAll(ctx, []*berthv1.Command{cmd}, [][]byte{data})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

// proposeAll queues cmds in order (datas are their encodings), so they
// share log entries, and waits for all their results. The first failure
// other than a refusal is returned for the whole set: the caller sends the
// commands again under their request ids.
func (p *proposer) proposeAll(ctx context.Context, cmds []*berthv1.Command, datas [][]byte) ([]*berthv1.CommandResult, error) {
	prs := make([]*proposal, len(cmds))
	for i, cmd := range cmds {
		prs[i] = &proposal{cmd: cmd, data: datas[i], done: make(chan proposalResult, 1)}
		select {
		case p.queue <- prs[i]:
		case <-ctx.Done():
			return nil, fmt.Errorf("queueing proposal: %w", ctx.Err())
		case <-p.n.ctx.Done():
			return nil, ErrShutdown
		}
	}
	results := make([]*berthv1.CommandResult, len(cmds))
	var firstErr error
	for i, pr := range prs {
		select {
		case r := <-pr.done:
			results[i] = r.res
			if r.err != nil && firstErr == nil {
				firstErr = r.err
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
		case <-p.n.ctx.Done():
			return nil, ErrShutdown
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return results, nil
}

// run takes whatever is queued, up to a size budget, and hands it to Raft
// as one entry. raft.Apply only enqueues, so the next batch forms while
// this one commits.
func (p *proposer) run() {
	for {
		var first *proposal
		select {
		case <-p.n.ctx.Done():
			p.failQueued(ErrShutdown)
			return
		case first = <-p.queue:
		}
		batch, size := []*proposal{first}, len(first.data)
	fill:
		for len(batch) < fsm.MaxBatchCommands && size < maxBatchBytes {
			select {
			case pr := <-p.queue:
				batch = append(batch, pr)
				size += len(pr.data)
			default:
				break fill
			}
		}
		p.submit(batch)
	}
}

func (p *proposer) submit(batch []*proposal) {
	data := batch[0].data
	if len(batch) > 1 {
		cmds := make([]*berthv1.Command, len(batch))
		for i, pr := range batch {
			cmds[i] = pr.cmd
		}
		var err error
		data, err = fsm.Encode(&berthv1.Command{Kind: &berthv1.Command_Batch{Batch: &berthv1.CommandBatch{Commands: cmds}}})
		if err != nil {
			finish(batch, nil, err)
			return
		}
		p.n.metrics.batchSize.Observe(float64(len(batch)))
	}
	if !p.n.ops.enter() {
		finish(batch, nil, ErrShutdown)
		return
	}
	f := p.n.raft.Apply(data, p.n.cfg.ApplyLimit.Timeout)
	go func() {
		err := f.Error()
		p.n.ops.leave()
		if err != nil {
			if errors.Is(err, raft.ErrLeadershipLost) {
				err = fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
			}
			finish(batch, nil, err)
			return
		}
		res, ok := f.Response().(*berthv1.CommandResult)
		if !ok || res == nil {
			finish(batch, nil, fmt.Errorf("fsm returned %T, not a command result", f.Response()))
			return
		}
		if len(batch) == 1 {
			batch[0].done <- proposalResult{res: res}
			return
		}
		if len(res.Results) != len(batch) {
			finish(batch, nil, fmt.Errorf("batch of %d got %d results: %s", len(batch), len(res.Results), res.Message))
			return
		}
		for i, pr := range batch {
			pr.done <- proposalResult{res: res.Results[i]}
		}
	}()
}

func finish(batch []*proposal, res *berthv1.CommandResult, err error) {
	for _, pr := range batch {
		pr.done <- proposalResult{res: res, err: err}
	}
}

func (p *proposer) failQueued(err error) {
	for {
		select {
		case pr := <-p.queue:
			pr.done <- proposalResult{err: err}
		default:
			return
		}
	}
}
