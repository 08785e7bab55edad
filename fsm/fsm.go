package fsm

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Observer receives what the FSM applies, in log order. Its methods are
// called with the FSM's write lock held: they must not block, and must not
// call back into the FSM.
type Observer interface {
	// Publish hands over the events of the entry applied at index. It is
	// called for every entry, with no events when nothing changed (a
	// refused command, a no-op), so the observer always knows the applied
	// index. The events and their objects are shared: do not modify them.
	Publish(index uint64, events []*berthv1.Event)
	// Reset says the state was replaced by Restore at index; subscribers
	// must re-snapshot.
	Reset(index uint64)
}

// FSM is the raft.FSM holding the registry State. It is a thin adapter:
// Apply decodes the entry and hands it to State.Apply; Snapshot and Restore
// stream the state. Reads go through View, under a read lock.
type FSM struct {
	obs Observer

	mu      sync.RWMutex
	state   *State
	applied uint64
}

var _ raft.FSM = (*FSM)(nil)

// New returns an FSM with an empty registry. obs may be nil.
func New(obs Observer) *FSM {
	return &FSM{obs: obs, state: NewState()}
}

// Apply applies a committed log entry and returns its *berthv1.CommandResult
// (never nil). It must be deterministic: it is, because State.Apply is and
// nothing else is consulted. A LogCommand entry that does not decode is
// refused with RESULT_CODE_INVALID_ARGUMENT; other entry types (no-op,
// barrier, configuration) change nothing and are OK. Either way the applied
// index advances and the Observer is told.
func (f *FSM) Apply(l *raft.Log) interface{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	var (
		res    *berthv1.CommandResult
		events []*berthv1.Event
	)
	switch l.Type {
	case raft.LogCommand:
		cmd, err := Decode(l.Data)
		if err != nil {
			res = &berthv1.CommandResult{Index: l.Index}
			res.Code, res.Message = codeAndMessage(err)
			break
		}
		res, events = f.state.Apply(l.Index, cmd)
	default:
		res = &berthv1.CommandResult{Index: l.Index, Code: berthv1.ResultCode_RESULT_CODE_OK}
	}
	f.applied = l.Index
	if f.obs != nil {
		f.obs.Publish(l.Index, events)
	}
	return res
}

// Snapshot captures the state for Persist. It only copies the maps of
// object pointers (the objects are immutable), so it is quick on the FSM
// goroutine; sorting and marshalling happen in Persist, concurrently with
// Apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &fsmSnapshot{data: f.state.capture(f.applied)}, nil
}

// Restore replaces the state with the snapshot read from rc. The new state
// is built completely, indexes and endpoints included, before it is swapped
// in; a truncated or corrupt snapshot returns an error and leaves the
// current state as it was. On success the Observer is Reset to the
// snapshot's index.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, applied, err := readSnapshot(rc)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state, f.applied = st, applied
	if f.obs != nil {
		f.obs.Reset(applied)
	}
	return nil
}

// AppliedIndex returns the index of the last applied log entry (or of the
// restored snapshot).
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// View runs fn with a consistent read-only view of the state and the index
// it reflects, under the read lock: Apply waits until fn returns, so keep
// fn short. fn must not retain s after returning and must not modify the
// objects it reads (it may keep them: they are immutable).
func (f *FSM) View(fn func(s *State, applied uint64)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state, f.applied)
}

type fsmSnapshot struct {
	data *snapshotData
}

// Persist writes the snapshot to sink and closes it, or cancels it on
// error. It runs concurrently with Apply, on data Apply never modifies.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.data.writeTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release drops the captured pointers.
func (s *fsmSnapshot) Release() { s.data = nil }
