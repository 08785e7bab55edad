package controlplane

import (
	"sync"

	"github.com/hashicorp/raft"
)

// pipelinedTransport is Raft's TCP transport with a fix for a deadlock in
// hashicorp/raft's pipelined replication (hashicorp/raft#612; the same hang
// led grafana/pyroscope to turn pipelining off). When a follower answers
// an AppendEntries with Success=false (a log gap, a failing disk),
// raft's pipelineDecode returns and stops reading the pipeline's responses;
// the transport's decoder then blocks handing over the next response, the
// pipeline's in-flight queue fills, and the replication goroutine blocks in
// its next send for ever, before it can notice the decoder is gone. That
// follower gets heartbeats but no more entries, and Raft's Shutdown waits
// on the blocked goroutine. TestRobustnessLossyDelayedPeerLinks hung in
// teardown this way.
//
// The fix keeps pipelining (its throughput matters on the write path) and
// puts a relay between the transport's responses and Raft: it always takes
// the next response, queueing them while Raft is not reading, so the
// decoder never blocks and the replication goroutine gets to see that the
// pipeline is finished and close it.
type pipelinedTransport struct {
	*raft.NetworkTransport
}

// AppendEntriesPipeline opens the transport's pipeline behind a relay.
func (t pipelinedTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return newRelayedPipeline(p), nil
}

type relayedPipeline struct {
	raft.AppendPipeline
	out  chan raft.AppendFuture
	stop chan struct{}
	once sync.Once
}

func newRelayedPipeline(p raft.AppendPipeline) *relayedPipeline {
	r := &relayedPipeline{AppendPipeline: p, out: make(chan raft.AppendFuture), stop: make(chan struct{})}
	go r.relay()
	return r
}

// relay moves responses from the transport to Raft, holding them while
// Raft does not read, until Close. The queue is bounded by the sends Raft
// makes before it notices the pipeline is finished.
func (r *relayedPipeline) relay() {
	in := r.AppendPipeline.Consumer()
	var queue []raft.AppendFuture
	for {
		var (
			out  chan raft.AppendFuture
			next raft.AppendFuture
		)
		if len(queue) > 0 {
			out, next = r.out, queue[0]
		}
		select {
		case f := <-in:
			queue = append(queue, f)
		case out <- next:
			queue[0] = nil
			queue = queue[1:]
		case <-r.stop:
			return
		}
	}
}

// Consumer is the relayed responses.
func (r *relayedPipeline) Consumer() <-chan raft.AppendFuture { return r.out }

// Close stops the relay and the transport's pipeline.
func (r *relayedPipeline) Close() error {
	r.once.Do(func() { close(r.stop) })
	return r.AppendPipeline.Close()
}
