package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// clusterServer serves ClusterService: node-to-node calls only.
type clusterServer struct {
	berthv1.UnimplementedClusterServiceServer
	n *Node
}

// notLeader is the error a leader-only call returns on a follower.
func (n *Node) notLeader() error {
	id, addr := n.leader()
	return &client.NotLeaderError{LeaderID: id, LeaderAddress: addr}
}

func (s *clusterServer) Apply(ctx context.Context, req *berthv1.ApplyRequest) (*berthv1.ApplyResponse, error) {
	if req.Command == nil {
		return nil, toStatus(fmt.Errorf("%w: command is required", ErrInvalidArgument))
	}
	if !s.n.IsLeader() {
		return nil, toStatus(s.n.notLeader())
	}
	data, refused := prepareForwarded(req.Command)
	if refused != nil {
		return &berthv1.ApplyResponse{Result: refused}, nil
	}
	res, err := s.n.applyLocal(ctx, req.Command, data)
	if err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return nil, toStatus(s.n.notLeader())
		}
		return nil, toStatus(err)
	}
	return &berthv1.ApplyResponse{Result: res}, nil
}

// prepareForwarded validates and encodes a command a follower forwarded.
// A refusal is returned as a result, so the follower sees the same code.
func prepareForwarded(cmd *berthv1.Command) ([]byte, *berthv1.CommandResult) {
	err := fsm.ValidateCommand(cmd)
	var data []byte
	if err == nil {
		data, err = fsm.Encode(cmd)
	}
	if err != nil {
		return nil, &berthv1.CommandResult{Code: fsm.ResultCode(err), Message: err.Error()}
	}
	return data, nil
}

func (s *clusterServer) ApplyBatch(ctx context.Context, req *berthv1.ApplyBatchRequest) (*berthv1.ApplyBatchResponse, error) {
	if len(req.Commands) == 0 || len(req.Commands) > fsm.MaxBatchCommands {
		return nil, toStatus(fmt.Errorf("%w: a batch holds 1 to %d commands, not %d", ErrInvalidArgument, fsm.MaxBatchCommands, len(req.Commands)))
	}
	if !s.n.IsLeader() {
		return nil, toStatus(s.n.notLeader())
	}
	results := make([]*berthv1.CommandResult, len(req.Commands))
	var cmds []*berthv1.Command
	var datas [][]byte
	var slots []int // index in results of each proposed command
	for i, cmd := range req.Commands {
		data, refused := prepareForwarded(cmd)
		if refused != nil {
			results[i] = refused
			continue
		}
		cmds, datas, slots = append(cmds, cmd), append(datas, data), append(slots, i)
	}
	if len(cmds) > 0 {
		res, err := s.n.proposer.proposeAll(ctx, cmds, datas)
		if err != nil {
			if errors.Is(err, raft.ErrNotLeader) {
				return nil, toStatus(s.n.notLeader())
			}
			return nil, toStatus(err)
		}
		for j, i := range slots {
			results[i] = res[j]
		}
	}
	return &berthv1.ApplyBatchResponse{Results: results}, nil
}

func (s *clusterServer) ReadIndex(ctx context.Context, req *berthv1.ReadIndexRequest) (*berthv1.ReadIndexResponse, error) {
	if !s.n.IsLeader() {
		return nil, toStatus(s.n.notLeader())
	}
	idx, err := s.n.localReadIndex(ctx, req.Verify)
	if err != nil {
		return nil, toStatus(err)
	}
	return &berthv1.ReadIndexResponse{Index: idx}, nil
}

func (s *clusterServer) NodeInfo(context.Context, *berthv1.NodeInfoRequest) (*berthv1.NodeInfoResponse, error) {
	return s.n.nodeInfo(), nil
}

func (s *clusterServer) Join(ctx context.Context, req *berthv1.JoinRequest) (*berthv1.JoinResponse, error) {
	if err := s.n.addServer(ctx, req.Server, req.Nonvoter); err != nil {
		return nil, toStatus(err)
	}
	return &berthv1.JoinResponse{}, nil
}

func (s *clusterServer) ReportLoad(_ context.Context, req *berthv1.ReportLoadRequest) (*berthv1.ReportLoadResponse, error) {
	if !s.n.IsLeader() {
		return nil, toStatus(s.n.notLeader())
	}
	now := s.n.clock.Monotonic()
	for _, sample := range req.Samples {
		if err := fsm.ValidateID("proxy id", sample.GetProxyId()); err != nil {
			return nil, toStatus(err)
		}
		s.n.beats.record(sample, now)
	}
	return &berthv1.ReportLoadResponse{}, nil
}

func (s *clusterServer) GetLoad(context.Context, *berthv1.GetLoadRequest) (*berthv1.GetLoadResponse, error) {
	if !s.n.IsLeader() {
		return nil, toStatus(s.n.notLeader())
	}
	return &berthv1.GetLoadResponse{Samples: s.n.beats.load()}, nil
}

// nodeInfo describes this node as it sees itself.
func (n *Node) nodeInfo() *berthv1.NodeInfoResponse {
	leaderAddr, leaderID := n.raft.LeaderWithID()
	info := &berthv1.NodeInfoResponse{
		Id:            n.cfg.ID,
		RaftAddress:   n.cfg.raftAdvertise(),
		GrpcAddress:   n.cfg.grpcAdvertise(),
		State:         n.raft.State().String(),
		Term:          n.raft.CurrentTerm(),
		CommitIndex:   n.raft.CommitIndex(),
		AppliedIndex:  n.fsm.AppliedIndex(),
		LastLogIndex:  n.raft.LastIndex(),
		LeaderId:      string(leaderID),
		LeaderAddress: string(leaderAddr),
		Build:         n.build,
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		info.ConfiguredServers = uint32(len(f.Configuration().Servers))
	}
	info.HasState = n.stores.hadState || info.ConfiguredServers > 0
	switch last := n.raft.LastContact(); {
	case n.IsLeader():
	case last.IsZero():
		info.LastContactMs = -1
	default:
		info.LastContactMs = time.Since(last).Milliseconds()
	}
	return info
}

// addServer adds (or re-addresses) a member and records its metadata. It
// runs on the leader; a follower forwards it there.
func (n *Node) addServer(ctx context.Context, srv *berthv1.Server, nonvoter bool) error {
	if srv == nil {
		return fmt.Errorf("%w: server is required", ErrInvalidArgument)
	}
	if err := fsm.ValidateID("server id", srv.Id); err != nil {
		return err
	}
	if err := fsm.ValidateHostPort("server.raft_address", srv.RaftAddress); err != nil {
		return err
	}
	if err := fsm.ValidateHostPort("server.grpc_address", srv.GrpcAddress); err != nil {
		return err
	}
	if !n.IsLeader() {
		_, addr := n.leader()
		if addr == "" {
			return n.notLeader()
		}
		c, err := n.peers.cluster(addr)
		if err != nil {
			return err
		}
		_, err = c.Join(ctx, &berthv1.JoinRequest{Server: srv, Nonvoter: nonvoter})
		return err
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == srv.Id && string(s.Address) == srv.RaftAddress {
			return n.upsertServer(ctx, srv) // already a member: refresh metadata
		}
		if string(s.ID) == srv.Id || string(s.Address) == srv.RaftAddress {
			if err := n.ops.await(func() raft.Future { return n.raft.RemoveServer(s.ID, 0, n.cfg.ApplyLimit.Timeout) }); err != nil {
				return fmt.Errorf("replace member %s: %w", s.ID, err)
			}
		}
	}
	add := n.raft.AddVoter
	if nonvoter {
		add = n.raft.AddNonvoter
	}
	err := n.ops.await(func() raft.Future {
		return add(raft.ServerID(srv.Id), raft.ServerAddress(srv.RaftAddress), 0, n.cfg.ApplyLimit.Timeout)
	})
	if err != nil {
		return fmt.Errorf("add member %s: %w", srv.Id, err)
	}
	n.logger.Info("added server", "id", srv.Id, "raft", srv.RaftAddress, "nonvoter", nonvoter)
	return n.upsertServer(ctx, srv)
}

func (n *Node) upsertServer(ctx context.Context, srv *berthv1.Server) error {
	_, err := n.Apply(ctx, &berthv1.Command{Kind: &berthv1.Command_UpsertServer{UpsertServer: &berthv1.UpsertServerCommand{Server: srv}}})
	return err
}

// removeServer takes a member out of the Raft configuration and its
// metadata out of the registry. It runs on the leader.
func (n *Node) removeServer(ctx context.Context, id string) error {
	if err := fsm.ValidateID("server id", id); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader()
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	found := false
	for _, s := range f.Configuration().Servers {
		found = found || string(s.ID) == id
	}
	if !found {
		return fmt.Errorf("%w: server %q is not a member", fsm.ErrNotFound, id)
	}
	err := n.ops.await(func() raft.Future { return n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyLimit.Timeout) })
	if err != nil {
		return fmt.Errorf("remove member %s: %w", id, err)
	}
	n.logger.Info("removed server", "id", id)
	if id == n.cfg.ID {
		return nil // we stepped down; the next leader may clean the metadata
	}
	_, err = n.Apply(ctx, &berthv1.Command{Kind: &berthv1.Command_RemoveServer{RemoveServer: &berthv1.RemoveServerCommand{ServerId: id}}})
	return err
}
