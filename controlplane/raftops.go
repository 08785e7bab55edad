package controlplane

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// raftOps counts the Raft operations in flight so that Close can let them
// finish before it shuts Raft down.
//
// hashicorp/raft queues verify, apply and barrier futures in buffered
// channels and, at shutdown, drops whatever is still queued: such a
// future's Error never returns (only a few future kinds watch the shutdown
// channel). So every call that makes one of those futures goes through
// raftOps, Close stops new calls and waits for the running ones, and only
// then is Raft shut down. While Raft runs, every future is answered: a
// leader without a quorum steps down within its lease and fails what it
// holds, and a follower fails what it is handed at once.
type raftOps struct {
	mu      sync.Mutex
	closed  bool
	pending sync.WaitGroup
}

// enter registers an operation; false once the node is closing. Every true
// enter is paired with one leave after the operation's future has answered.
func (o *raftOps) enter() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.pending.Add(1)
	return true
}

func (o *raftOps) leave() { o.pending.Done() }

// await starts an operation with start and waits for its future.
func (o *raftOps) await(start func() raft.Future) error {
	if !o.enter() {
		return ErrShutdown
	}
	defer o.leave()
	return start().Error()
}

// close refuses new operations and waits up to limit for the running ones.
// It reports whether they all finished.
func (o *raftOps) close(limit time.Duration) bool {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	done := make(chan struct{})
	go func() { o.pending.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(limit):
		return false
	}
}
