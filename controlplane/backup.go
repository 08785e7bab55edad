package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/metadata"

	"github.com/berthhq/berth/controlplane/backup"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// snapshotChunkBytes is how much snapshot data one message carries.
const snapshotChunkBytes = 1 << 20

// SaveSnapshot streams a copy of the registry taken at a linearizable read
// point, so it holds every write acknowledged before the call. The copy is
// the FSM's snapshot format, written in memory first so the header can
// carry its size and checksum.
func (a *adminServer) SaveSnapshot(_ *berthv1.SaveSnapshotRequest, stream berthv1.AdminService_SaveSnapshotServer) error {
	ctx := stream.Context()
	var b *fsm.Backup
	index, err := a.n.Read(ctx, berthv1.Consistency_CONSISTENCY_LINEARIZABLE, func(s *fsm.State) { b = s.Backup() })
	if err != nil {
		return toStatus(err)
	}
	var buf bytes.Buffer
	if err := b.Write(&buf, index); err != nil {
		return toStatus(fmt.Errorf("write snapshot: %w", err))
	}
	sum := sha256.Sum256(buf.Bytes())
	h := &berthv1.BackupHeader{
		FormatVersion: backup.FormatVersion,
		Index:         index,
		CreatedUnixMs: a.n.clock.Now().UnixMilli(),
		ServedBy:      a.n.cfg.ID,
		Size:          uint64(buf.Len()),
		Sha256:        sum[:],
		Counts:        b.Counts(),
	}
	a.n.logger.Info("saving registry snapshot", "index", index, "bytes", buf.Len())
	return sendChunks(buf.Bytes(), func(data []byte, first bool) error {
		m := &berthv1.SaveSnapshotResponse{Data: data}
		if first {
			m.Header = h
		}
		return stream.Send(m)
	})
}

// sendChunks hands data to send in chunks of snapshotChunkBytes, telling
// it which is the first (it carries the header).
func sendChunks(data []byte, send func(data []byte, first bool) error) error {
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), snapshotChunkBytes)
		if err := send(data[:n], first); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// RestoreSnapshot receives a saved registry, checks it completely (the
// header, the length and checksum, then every record as a restore would
// read it) and only then hands it to Raft. A refused copy changes nothing.
func (a *adminServer) RestoreSnapshot(stream berthv1.AdminService_RestoreSnapshotServer) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return toStatus(fmt.Errorf("%w: restore: no data sent", ErrInvalidArgument))
	}
	if err != nil {
		return err
	}
	h := first.GetHeader()
	if err := backup.CheckHeader(h); err != nil {
		return toStatus(fmt.Errorf("%w: restore: %w", ErrInvalidArgument, err))
	}
	// The header's size is the sender's word: grow to it as data arrives
	// rather than allocate it up front.
	data := make([]byte, 0, min(h.Size, 64<<20))
	data = append(data, first.GetData()...)
	for uint64(len(data)) <= h.Size {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if chunk.Header != nil {
			return toStatus(fmt.Errorf("%w: restore: a second header", ErrInvalidArgument))
		}
		data = append(data, chunk.Data...)
	}
	sum := sha256.Sum256(data)
	if err := backup.Verify(h, uint64(len(data)), sum[:]); err != nil {
		return toStatus(fmt.Errorf("%w: restore: %w", ErrInvalidArgument, err))
	}
	resp, err := a.restore(stream.Context(), h, data, first.Force)
	if err != nil {
		return toStatus(err)
	}
	return stream.SendAndClose(resp)
}

// restore replaces the registry with data on the leader (a follower
// forwards the checked copy there). Raft.Restore writes it as a local
// snapshot at an index past every entry this cluster has and every
// version in the copy, restores the FSM from it, and sends it to the
// followers by InstallSnapshot.
func (a *adminServer) restore(ctx context.Context, h *berthv1.BackupHeader, data []byte, force bool) (*berthv1.RestoreSnapshotResponse, error) {
	n := a.n
	b, err := fsm.ReadBackup(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: restore: backup data: %w", ErrInvalidArgument, err)
	}
	fwd, err := n.forwardAdmin()
	if err != nil {
		return nil, err
	}
	if fwd != nil {
		stream, err := fwd.RestoreSnapshot(withCallerToken(ctx))
		if err != nil {
			return nil, err
		}
		err = sendChunks(data, func(data []byte, first bool) error {
			m := &berthv1.RestoreSnapshotRequest{Data: data}
			if first {
				m.Header, m.Force = h, force
			}
			return stream.Send(m)
		})
		if err != nil {
			return nil, fmt.Errorf("forward restore to the leader: %w", err)
		}
		return stream.CloseAndRecv()
	}

	// One restore at a time, so two cannot both find the registry empty.
	a.restoreMu.Lock()
	defer a.restoreMu.Unlock()
	var (
		empty   bool
		servers []*berthv1.Server
		counts  fsm.Counts
		tokens  int
	)
	if _, err := n.Read(ctx, berthv1.Consistency_CONSISTENCY_LINEARIZABLE, func(s *fsm.State) {
		empty, servers, counts, tokens = s.Empty(), s.Servers(), s.Counts(), len(s.AdminTokens())
	}); err != nil {
		return nil, err
	}
	if !empty && !force {
		return nil, fmt.Errorf("%w: restore: the registry is not empty (%d proxies, %d connections, %d moves, %d admin tokens); "+
			"restore into a fresh cluster, or force it (berthctl snapshot restore --force) to replace all of it",
			fsm.ErrFailedPrecondition, counts.Proxies, counts.Connections, counts.Moves, tokens)
	}
	// This cluster's members, not the saved cluster's: forwarding finds
	// the leader's gRPC address in these records.
	b.ReplaceServers(servers)
	// Raft puts the snapshot at max(meta.Index, last index) + 1; the FSM's
	// applied index is written to match, so reads keep waiting on the
	// right index and every later version is above every saved one.
	index := max(b.Index(), n.raft.LastIndex())
	var buf bytes.Buffer
	if err := b.Write(&buf, index+1); err != nil {
		return nil, fmt.Errorf("restore: rewrite snapshot: %w", err)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: index, Size: int64(buf.Len())}
	n.logger.Warn("restoring the registry from a backup", "saved_index", h.Index, "saved_by", h.ServedBy,
		"index", index+1, "force", force, "replacing", counts)
	if !n.ops.enter() { // Restore waits on Raft futures: Close must wait for it (raftops.go)
		return nil, ErrShutdown
	}
	err = n.raft.Restore(meta, &buf, n.cfg.ApplyLimit.Timeout)
	n.ops.leave()
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return &berthv1.RestoreSnapshotResponse{Index: index + 1, Counts: b.Counts(), ServedBy: n.cfg.ID}, nil
}

// withCallerToken passes the caller's admin token on to a call forwarded
// to the leader: without TLS the leader cannot tell a node from an
// operator.
func withCallerToken(ctx context.Context) context.Context {
	if auth := metadata.ValueFromIncomingContext(ctx, "authorization"); len(auth) == 1 {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth[0])
	}
	return ctx
}

// RemoveProxy forgets a proxy that is down and holds nothing; the FSM
// refuses it otherwise (FailedPrecondition). It runs on the leader, which
// also refuses a proxy it has heard from within the unhealthy timeout: one
// that came back but is not yet judged HEALTHY again.
func (a *adminServer) RemoveProxy(ctx context.Context, req *berthv1.RemoveProxyRequest) (*berthv1.RemoveProxyResponse, error) {
	if err := fsm.ValidateID("proxy_id", req.ProxyId); err != nil {
		return nil, toStatus(err)
	}
	fwd, err := a.n.forwardAdmin()
	if err != nil {
		return nil, toStatus(err)
	}
	if fwd != nil {
		return fwd.RemoveProxy(withCallerToken(ctx), req)
	}
	// Only a DOWN proxy needs this check; the FSM's refusal of any other
	// names its status, which says more.
	var down bool
	a.n.fsm.View(func(s *fsm.State, _ uint64) {
		p, ok := s.Proxy(req.ProxyId)
		down = ok && p.Health == berthv1.Health_HEALTH_DOWN
	})
	seen, _ := a.n.beats.view()
	if last, ok := seen[req.ProxyId]; ok && down {
		if ago := a.n.clock.Monotonic().Sub(last); ago <= a.n.cfg.Heartbeat.UnhealthyAfter {
			return nil, toStatus(fmt.Errorf("%w: remove proxy: %q reported load %s ago; it is not gone",
				fsm.ErrFailedPrecondition, req.ProxyId, ago.Round(time.Millisecond)))
		}
	}
	res, err := a.n.Apply(ctx, &berthv1.Command{Kind: &berthv1.Command_RemoveProxy{
		RemoveProxy: &berthv1.RemoveProxyCommand{ProxyId: req.ProxyId}}})
	if err != nil {
		return nil, toStatus(err)
	}
	a.n.logger.Info("removed proxy", "proxy", req.ProxyId, "index", res.Index)
	return &berthv1.RemoveProxyResponse{Index: res.Index}, nil
}
