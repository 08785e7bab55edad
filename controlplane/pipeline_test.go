package controlplane

import (
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// fakePipeline hands out responses on an unbuffered channel, as the
// transport's decoder does.
type fakePipeline struct {
	done   chan raft.AppendFuture
	closed chan struct{}
	once   sync.Once
}

func (p *fakePipeline) AppendEntries(*raft.AppendEntriesRequest, *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	return nil, nil
}
func (p *fakePipeline) Consumer() <-chan raft.AppendFuture { return p.done }
func (p *fakePipeline) Close() error {
	p.once.Do(func() { close(p.closed) }) // the transport's Close is idempotent too
	return nil
}

type fakeFuture struct {
	raft.AppendFuture
	n int
}

// The transport's decoder never blocks on a reader that went away (Raft's
// pipelineDecode after a failed append), and responses still come out in
// order to a reader that is there.
func TestRelayedPipelineNeverBlocksTheDecoder(t *testing.T) {
	inner := &fakePipeline{done: make(chan raft.AppendFuture), closed: make(chan struct{})}
	p := newRelayedPipeline(inner)
	decoded := make(chan struct{})
	go func() {
		defer close(decoded)
		for i := range 300 {
			inner.done <- fakeFuture{n: i}
		}
	}()
	select {
	case <-decoded:
	case <-time.After(30 * time.Second):
		t.Fatal("the decoder blocked with nobody reading the pipeline")
	}
	for i := range 300 {
		if f := (<-p.Consumer()).(fakeFuture); f.n != i {
			t.Fatalf("response %d came out as %d", i, f.n)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inner.closed:
	default:
		t.Fatal("Close did not close the transport's pipeline")
	}
	_ = p.Close() // twice is harmless
}
