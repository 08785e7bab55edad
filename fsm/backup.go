package fsm

import (
	"io"
	"slices"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Backup is a copy of the registry in the snapshot format: taken from a
// State to save it, or read back from saved bytes to restore it. It holds
// object pointers only (the objects are immutable), so taking one under a
// read lock is cheap and writing it needs no lock.
type Backup struct {
	d *snapshotData
}

// Backup copies the state's object pointers for a backup. Call it under
// the FSM's read lock (in View or Node.Read); write it after.
func (s *State) Backup() *Backup {
	return &Backup{d: s.capture(0)}
}

// Empty reports whether the registry holds nothing an operator put there or
// a proxy reported: no proxy, connection, move or admin token. Control-plane
// servers do not count; every running cluster has them.
func (s *State) Empty() bool {
	return len(s.proxies) == 0 && len(s.conns) == 0 && len(s.moves) == 0 && len(s.tokens) == 0
}

// ReadBackup reads a snapshot stream with every check Restore makes
// (header, records, references, the trailer's counts, nothing after it),
// so a stream it accepts is one Restore accepts too.
func ReadBackup(r io.Reader) (*Backup, error) {
	st, applied, err := readSnapshot(r)
	if err != nil {
		return nil, err
	}
	return &Backup{d: st.capture(applied)}, nil
}

// Index is the applied index the backup was read at (0 for one taken
// from a State: the caller knows the index it read at).
func (b *Backup) Index() uint64 { return b.d.applied }

// Counts says how many objects of each kind the backup holds.
func (b *Backup) Counts() *berthv1.SnapshotTrailer {
	return &berthv1.SnapshotTrailer{
		Proxies:         uint64(len(b.d.proxies)),
		Connections:     uint64(len(b.d.conns)),
		Moves:           uint64(len(b.d.moves)),
		Servers:         uint64(len(b.d.servers)),
		AdminTokens:     uint64(len(b.d.tokens)),
		AppliedRequests: uint64(len(b.d.requests)),
	}
}

// ReplaceServers swaps the backup's control-plane servers for servers.
// Membership belongs to the cluster a backup is restored into: the saved
// cluster's addresses would send every forward to machines that are gone.
func (b *Backup) ReplaceServers(servers []*berthv1.Server) {
	b.d.servers = slices.Clone(servers)
}

// Write writes the backup in the snapshot format (the bytes Raft stores
// and FSM.Restore reads) with index as its applied index. Every object
// keeps its own version.
func (b *Backup) Write(w io.Writer, index uint64) error {
	d := *b.d
	d.applied = index
	// writeTo sorts in place; work on copies so a Backup can be written
	// again, and concurrently with reads of its counts.
	d.proxies, d.conns, d.moves = slices.Clone(d.proxies), slices.Clone(d.conns), slices.Clone(d.moves)
	d.servers, d.endpoints, d.tokens = slices.Clone(d.servers), slices.Clone(d.endpoints), slices.Clone(d.tokens)
	return d.writeTo(w)
}
