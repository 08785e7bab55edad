package fsm

import (
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// The request table makes resending a command exactly-once. A node that
// forwards a write to the leader and loses the answer (the leader died or
// the connection broke after the entry was appended) cannot tell whether
// the write applied; sending it again could apply it a second time, later,
// on top of writes that came after it. Applying a registration twice is
// harmless on its own, but a second application after someone else's
// write silently reverts that write, which is not linearizable. So every
// command carries a request id, and the table remembers the ids applied
// recently with their results: a command whose id is remembered changes
// nothing and answers with the first result. Refused commands are not
// remembered: they changed nothing, so a resend is their first effect.
//
// What is remembered, and when it is forgotten, depends only on the log:
// entries leave in the order they came, once there are more than
// MaxRequests or once they are RequestWindow older (by their commands'
// now_unix_ms) than the newest. Every replica forgets the same entries at
// the same index, and snapshots carry the table.
const (
	// MaxRequestIDBytes bounds Command.request_id.
	MaxRequestIDBytes = 64
	// MaxRequests is how many request ids the table holds at most: with
	// their results, about 240 bytes each (measured), so 30 MB when full.
	// It covers the default 10 s apply timeout up to 13,000 writes a
	// second; past that the oldest ids go before the window ends.
	MaxRequests = 1 << 17
	// RequestWindow is how long, in command time, a request id is
	// remembered. A resend is only safe within it: a node gives up on a
	// write well before (its apply timeout must be shorter).
	RequestWindow int64 = 5 * 60 * 1000
)

// appliedRequest is one remembered request. result is shared with the
// caller that got it first and must not be modified.
type appliedRequest struct {
	id     string
	unixMs int64
	result *berthv1.CommandResult
}

// requestTable is the FIFO of remembered requests with an index by id.
type requestTable struct {
	byID map[string]*appliedRequest
	fifo []*appliedRequest // oldest first; fifo[head:] are live
	head int
	// newest is the largest unixMs seen: clocks of different proposers
	// need not agree, and the window must not move backwards. Entries leave
	// from the front only, so one stamped by a lagging clock stays until
	// those applied before it have gone.
	newest int64
}

func newRequestTable() requestTable {
	return requestTable{byID: map[string]*appliedRequest{}}
}

func (t *requestTable) lookup(id []byte) (*berthv1.CommandResult, bool) {
	if len(id) == 0 {
		return nil, false
	}
	r, ok := t.byID[string(id)]
	if !ok {
		return nil, false
	}
	return r.result, true
}

// add remembers id's result, then forgets what is too old or too many.
func (t *requestTable) add(id []byte, unixMs int64, result *berthv1.CommandResult) {
	if len(id) == 0 {
		return
	}
	r := &appliedRequest{id: string(id), unixMs: unixMs, result: result}
	t.byID[r.id] = r
	t.fifo = append(t.fifo, r)
	t.newest = max(t.newest, unixMs)
	t.prune()
}

func (t *requestTable) prune() {
	for t.head < len(t.fifo) {
		r := t.fifo[t.head]
		if len(t.fifo)-t.head <= MaxRequests && r.unixMs >= t.newest-RequestWindow {
			break
		}
		delete(t.byID, r.id)
		t.fifo[t.head] = nil
		t.head++
	}
	// Reclaim the dead prefix once it is half the slice.
	if t.head > 1024 && t.head*2 >= len(t.fifo) {
		t.fifo = append(t.fifo[:0:0], t.fifo[t.head:]...)
		t.head = 0
	}
}

// live returns the remembered requests, oldest first. The slice is a copy;
// the entries are shared and immutable.
func (t *requestTable) live() []*appliedRequest {
	return append([]*appliedRequest(nil), t.fifo[t.head:]...)
}

// Len is how many request ids are remembered.
func (t *requestTable) Len() int { return len(t.fifo) - t.head }
