package controlplane

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Forward batching: on a follower, writes that arrive while earlier
// forwards are in flight to the leader are coalesced into one ApplyBatch
// call, so the gRPC costs on both ends (framing, a stream, a handler) are
// paid once per batch. At most maxForwardsInFlight calls run at once; a
// write that arrives while a slot is free goes at once, alone.
const (
	maxForwardsInFlight = 4
	forwardQueue        = 4096
)

type forward struct {
	ctx  context.Context
	cmd  *berthv1.Command
	size int
	done chan forwardResult // buffered, 1
}

type forwardResult struct {
	res *berthv1.CommandResult
	err error
}

type forwarder struct {
	n     *Node
	queue chan *forward
	slots chan struct{}
}

func newForwarder(n *Node) *forwarder {
	return &forwarder{n: n, queue: make(chan *forward, forwardQueue), slots: make(chan struct{}, maxForwardsInFlight)}
}

// forward sends cmd (size is its encoded length) to the leader with
// whatever else is queued, and waits for its result. Errors are those of
// one forwarded Apply: *client.NotLeaderError, errForwardUnavailable, or
// the leader's refusal.
func (f *forwarder) forward(ctx context.Context, cmd *berthv1.Command, size int) (*berthv1.CommandResult, error) {
	fw := &forward{ctx: ctx, cmd: cmd, size: size, done: make(chan forwardResult, 1)}
	select {
	case f.queue <- fw:
	case <-ctx.Done():
		return nil, fmt.Errorf("queueing forward: %w", ctx.Err())
	case <-f.n.ctx.Done():
		return nil, ErrShutdown
	}
	select {
	case r := <-fw.done:
		return r.res, r.err
	case <-ctx.Done():
		// Queued or sent: it may still commit.
		return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
	case <-f.n.ctx.Done():
		return nil, ErrShutdown
	}
}

// run takes a free slot, then whatever is queued up to a batch's budget,
// and sends it; the next batch forms while this one is in flight.
func (f *forwarder) run() {
	for {
		select {
		case f.slots <- struct{}{}:
		case <-f.n.ctx.Done():
			f.failQueued(ErrShutdown)
			return
		}
		var first *forward
		select {
		case first = <-f.queue:
		case <-f.n.ctx.Done():
			f.failQueued(ErrShutdown)
			return
		}
		batch, size := []*forward{first}, first.size
	fill:
		for len(batch) < fsm.MaxBatchCommands && size < maxBatchBytes {
			select {
			case fw := <-f.queue:
				batch = append(batch, fw)
				size += fw.size
			default:
				break fill
			}
		}
		f.n.wg.Add(1) // run is tracked, so the group is not at zero here
		go func() {
			defer f.n.wg.Done()
			defer func() { <-f.slots }()
			f.send(batch)
		}()
	}
}

// send forwards the batch's live commands in one call and hands each its
// result. The call lives until the latest caller's deadline.
func (f *forwarder) send(batch []*forward) {
	live := batch[:0]
	var deadline time.Time
	for _, fw := range batch {
		if err := fw.ctx.Err(); err != nil {
			fw.done <- forwardResult{err: fmt.Errorf("before forwarding: %w", err)}
			continue
		}
		live = append(live, fw)
		// Apply gives every write a deadline; one without falls back to
		// the apply timeout below.
		if d, ok := fw.ctx.Deadline(); ok && d.After(deadline) {
			deadline = d
		}
	}
	if len(live) == 0 {
		return
	}
	fail := func(err error) {
		for _, fw := range live {
			fw.done <- forwardResult{err: err}
		}
	}
	leaderID, addr := f.n.leader()
	if addr == "" {
		fail(&client.NotLeaderError{LeaderID: leaderID})
		return
	}
	c, err := f.n.peers.cluster(addr)
	if err != nil {
		fail(err)
		return
	}
	if deadline.IsZero() {
		deadline = time.Now().Add(f.n.cfg.ApplyLimit.Timeout)
	}
	ctx, cancel := context.WithDeadline(f.n.ctx, deadline)
	defer cancel()
	cmds := make([]*berthv1.Command, len(live))
	for i, fw := range live {
		cmds[i] = fw.cmd
	}
	f.n.metrics.forwarded.Add(float64(len(live)))
	f.n.metrics.forwardBatchSize.Observe(float64(len(live)))
	resp, err := c.ApplyBatch(ctx, &berthv1.ApplyBatchRequest{Commands: cmds})
	if err != nil {
		fail(forwardError(err, leaderID))
		return
	}
	if len(resp.Results) != len(live) {
		fail(fmt.Errorf("forward to leader %s: %d commands got %d results", leaderID, len(live), len(resp.Results)))
		return
	}
	for i, fw := range live {
		fw.done <- forwardResult{res: resp.Results[i]}
	}
}

// forwardError maps a failed forward to what applyOrForward retries: the
// leader moved, or the call failed in transit.
func forwardError(err error, leaderID string) error {
	if nl, ok := client.AsNotLeader(err); ok {
		return nl
	}
	if status.Code(err) == codes.Unavailable {
		return fmt.Errorf("%w: forward to %s: %w", errForwardUnavailable, leaderID, err)
	}
	return fmt.Errorf("forward to leader %s: %w", leaderID, err)
}

func (f *forwarder) failQueued(err error) {
	for {
		select {
		case fw := <-f.queue:
			fw.done <- forwardResult{err: err}
		default:
			return
		}
	}
}
