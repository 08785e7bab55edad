package controlplane

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Paging bounds for list calls.
const (
	DefaultPageSize = 500
	MaxPageSize     = 5000
)

// adminServer serves AdminService for operators and automation.
type adminServer struct {
	berthv1.UnimplementedAdminServiceServer
	n *Node

	restoreMu sync.Mutex // one RestoreSnapshot at a time (backup.go)
}

func pageArgs(size uint32, token string) (after string, limit int, err error) {
	switch {
	case size == 0:
		limit = DefaultPageSize
	case size > MaxPageSize:
		return "", 0, fmt.Errorf("%w: page_size %d exceeds %d", ErrInvalidArgument, size, MaxPageSize)
	default:
		limit = int(size)
	}
	if token != "" {
		b, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil || len(b) == 0 || len(b) > 256 {
			return "", 0, fmt.Errorf("%w: page_token is not one this server issued", ErrInvalidArgument)
		}
		after = string(b)
	}
	return after, limit, nil
}

func pageToken(next string) string {
	if next == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(next))
}

func (a *adminServer) header(index uint64) *berthv1.ReadHeader {
	return &berthv1.ReadHeader{Index: index, ServedBy: a.n.cfg.ID}
}

func validStatuses(in []berthv1.ProxyStatus) error {
	for _, s := range in {
		if _, ok := berthv1.ProxyStatus_name[int32(s)]; !ok || s == berthv1.ProxyStatus_PROXY_STATUS_UNSPECIFIED {
			return fmt.Errorf("%w: status %d: valid values are ACTIVE, CORDONED, DRAINING, UNHEALTHY, DOWN", ErrInvalidArgument, s)
		}
	}
	return nil
}

func validMoveStates(in []berthv1.MoveState) error {
	for _, s := range in {
		if _, ok := berthv1.MoveState_name[int32(s)]; !ok || s == berthv1.MoveState_MOVE_STATE_UNSPECIFIED {
			return fmt.Errorf("%w: move state %d: valid values are PENDING, ACCEPTED, COMPLETED, ABORTED", ErrInvalidArgument, s)
		}
	}
	return nil
}

func (a *adminServer) ListProxies(ctx context.Context, req *berthv1.ListProxiesRequest) (*berthv1.ListProxiesResponse, error) {
	resp := &berthv1.ListProxiesResponse{ConnectionCounts: map[string]uint32{}}
	var err error
	resp.Proxies, resp.NextPageToken, resp.Header, err = listPage(ctx, a, req.Consistency, req.PageSize, req.PageToken, validStatuses(req.Statuses),
		func(s *fsm.State, after string, limit int) ([]*berthv1.Proxy, string) {
			ps, next := s.ListProxies(fsm.ProxyFilter{Statuses: req.Statuses, Region: req.Region}, after, limit)
			for _, p := range ps {
				resp.ConnectionCounts[p.Id] = uint32(s.ConnectionCount(p.Id))
			}
			return ps, next
		})
	if err != nil {
		return nil, err
	}
	resp.Load = a.n.loadFor(ctx, resp.Proxies)
	var all []*berthv1.Proxy
	a.n.fsm.View(func(s *fsm.State, _ uint64) { all, _ = s.ListProxies(fsm.ProxyFilter{}, "", 0) })
	resp.TargetConnections = a.n.targets(all)
	return resp, nil
}

// connectivityFor reports, per endpoint and proxy, the aggregate state the
// proxies last reported in their load samples.
func (n *Node) connectivityFor(ctx context.Context, endpoints []*berthv1.Endpoint) []*berthv1.EndpointConnectivity {
	var out []*berthv1.EndpointConnectivity
	samples := n.leaderLoad(ctx)
	for _, e := range endpoints {
		for _, s := range samples {
			if st, ok := s.EndpointStates[e.Name]; ok {
				out = append(out, &berthv1.EndpointConnectivity{Endpoint: e.Name, ProxyId: s.ProxyId, State: st})
			}
		}
	}
	return out
}

// leaderLoad returns the leader's latest load sample per proxy, asking the
// leader when this node is not it. Load is advisory: nil when unreachable.
func (n *Node) leaderLoad(ctx context.Context) []*berthv1.LoadSample {
	if n.IsLeader() {
		return n.beats.load()
	}
	_, addr := n.leader()
	if addr == "" {
		return nil
	}
	c, err := n.peers.cluster(addr)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := c.GetLoad(ctx, &berthv1.GetLoadRequest{})
	if err != nil {
		return nil
	}
	return resp.Samples
}

// loadFor returns the latest load samples of proxies, from the leader's
// memory. Load is advisory: if the leader cannot be asked, there is none.
func (n *Node) loadFor(ctx context.Context, proxies []*berthv1.Proxy) map[string]*berthv1.LoadSample {
	samples := n.leaderLoad(ctx)
	if len(samples) == 0 {
		return nil
	}
	want := make(map[string]bool, len(proxies))
	for _, p := range proxies {
		want[p.Id] = true
	}
	out := make(map[string]*berthv1.LoadSample)
	for _, s := range samples {
		if want[s.ProxyId] {
			out[s.ProxyId] = s
		}
	}
	return out
}

func (a *adminServer) GetProxy(ctx context.Context, req *berthv1.GetProxyRequest) (*berthv1.GetProxyResponse, error) {
	p, h, err := getOne(ctx, a, req.Consistency, "proxy", req.ProxyId, fsm.ValidateID("proxy_id", req.ProxyId), (*fsm.State).Proxy)
	if err != nil {
		return nil, err
	}
	return &berthv1.GetProxyResponse{Proxy: p, Header: h}, nil
}

func (a *adminServer) ListEndpoints(ctx context.Context, req *berthv1.ListEndpointsRequest) (*berthv1.ListEndpointsResponse, error) {
	resp := &berthv1.ListEndpointsResponse{}
	var err error
	resp.Endpoints, resp.NextPageToken, resp.Header, err = listPage(ctx, a, req.Consistency, req.PageSize, req.PageToken, optionalID("proxy_id", req.ProxyId),
		func(s *fsm.State, after string, limit int) ([]*berthv1.Endpoint, string) {
			return s.ListEndpoints(req.ProxyId, after, limit)
		})
	if err != nil {
		return nil, err
	}
	resp.Connectivity = a.n.connectivityFor(ctx, resp.Endpoints)
	return resp, nil
}

func (a *adminServer) GetEndpoint(ctx context.Context, req *berthv1.GetEndpointRequest) (*berthv1.GetEndpointResponse, error) {
	e, h, err := getOne(ctx, a, req.Consistency, "endpoint", req.Name, fsm.ValidateEndpointName(req.Name), (*fsm.State).Endpoint)
	if err != nil {
		return nil, err
	}
	return &berthv1.GetEndpointResponse{Endpoint: e, Header: h}, nil
}

func (a *adminServer) ListConnections(ctx context.Context, req *berthv1.ListConnectionsRequest) (*berthv1.ListConnectionsResponse, error) {
	var invalid error
	if req.Endpoint != "" {
		invalid = fsm.ValidateEndpointName(req.Endpoint)
	}
	resp := &berthv1.ListConnectionsResponse{}
	var err error
	resp.Connections, resp.NextPageToken, resp.Header, err = listPage(ctx, a, req.Consistency, req.PageSize, req.PageToken, cmp.Or(optionalID("proxy_id", req.ProxyId), invalid),
		func(s *fsm.State, after string, limit int) ([]*berthv1.Connection, string) {
			return s.ListConnections(fsm.ConnectionFilter{ProxyID: req.ProxyId, Endpoint: req.Endpoint}, after, limit)
		})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (a *adminServer) GetConnection(ctx context.Context, req *berthv1.GetConnectionRequest) (*berthv1.GetConnectionResponse, error) {
	c, h, err := getOne(ctx, a, req.Consistency, "connection", req.ConnectionId, fsm.ValidateID("connection_id", req.ConnectionId), (*fsm.State).Connection)
	if err != nil {
		return nil, err
	}
	return &berthv1.GetConnectionResponse{Connection: c, Header: h}, nil
}

func (a *adminServer) ListMoves(ctx context.Context, req *berthv1.ListMovesRequest) (*berthv1.ListMovesResponse, error) {
	resp := &berthv1.ListMovesResponse{}
	var err error
	resp.Moves, resp.NextPageToken, resp.Header, err = listPage(ctx, a, req.Consistency, req.PageSize, req.PageToken,
		cmp.Or(validMoveStates(req.States), optionalID("proxy_id", req.ProxyId)),
		func(s *fsm.State, after string, limit int) ([]*berthv1.Move, string) {
			return s.ListMoves(fsm.MoveFilter{States: req.States, ProxyID: req.ProxyId}, after, limit)
		})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (a *adminServer) GetMove(ctx context.Context, req *berthv1.GetMoveRequest) (*berthv1.GetMoveResponse, error) {
	m, h, err := getOne(ctx, a, req.Consistency, "move", req.MoveId, fsm.ValidateID("move_id", req.MoveId), (*fsm.State).Move)
	if err != nil {
		return nil, err
	}
	return &berthv1.GetMoveResponse{Move: m, Header: h}, nil
}

// listPage is every List call: refuse invalid filters (invalid is the
// first problem, or nil) and page arguments, read one page at the asked
// consistency, and return it with the next page's token. Errors come back
// as gRPC statuses.
func listPage[T any](ctx context.Context, a *adminServer, c berthv1.Consistency, size uint32, token string, invalid error,
	list func(s *fsm.State, after string, limit int) ([]T, string)) ([]T, string, *berthv1.ReadHeader, error) {
	if invalid != nil {
		return nil, "", nil, toStatus(invalid)
	}
	after, limit, err := pageArgs(size, token)
	if err != nil {
		return nil, "", nil, toStatus(err)
	}
	var (
		out  []T
		next string
	)
	idx, err := a.n.Read(ctx, c, func(s *fsm.State) { out, next = list(s, after, limit) })
	if err != nil {
		return nil, "", nil, toStatus(err)
	}
	return out, pageToken(next), a.header(idx), nil
}

// optionalID validates an id filter that may be left empty.
func optionalID(field, id string) error {
	if id == "" {
		return nil
	}
	return fsm.ValidateID(field, id)
}

// getOne is every Get call: refuse an invalid key (invalid is its
// validation), read at the asked consistency, NotFound when absent. Errors
// come back as gRPC statuses.
func getOne[T any](ctx context.Context, a *adminServer, c berthv1.Consistency, kind, key string, invalid error,
	get func(*fsm.State, string) (T, bool)) (T, *berthv1.ReadHeader, error) {
	var (
		out T
		ok  bool
	)
	if invalid != nil {
		return out, nil, toStatus(invalid)
	}
	idx, err := a.n.Read(ctx, c, func(s *fsm.State) { out, ok = get(s, key) })
	if err != nil {
		return out, nil, toStatus(err)
	}
	if !ok {
		return out, nil, toStatus(fmt.Errorf("%w: %s %q", fsm.ErrNotFound, kind, key))
	}
	return out, a.header(idx), nil
}

// setAdminState commits an operator's intent for a proxy and returns the
// proxy as of that write.
func (a *adminServer) setAdminState(ctx context.Context, id string, st berthv1.AdminState) (*berthv1.Proxy, error) {
	if err := fsm.ValidateID("proxy_id", id); err != nil {
		return nil, toStatus(err)
	}
	res, err := a.n.Apply(ctx, &berthv1.Command{Kind: &berthv1.Command_SetProxyAdminState{
		SetProxyAdminState: &berthv1.SetProxyAdminStateCommand{ProxyId: id, AdminState: st}}})
	if err != nil {
		return nil, toStatus(err)
	}
	p, err := readAfterWrite(ctx, a.n, res.Index, func(s *fsm.State) (*berthv1.Proxy, bool) { return s.Proxy(id) })
	return p, toStatus(err)
}

// readAfterWrite reads an object from this node once it has applied index
// (the write's), so the caller sees its own write.
func readAfterWrite[T any](ctx context.Context, n *Node, index uint64, get func(*fsm.State) (T, bool)) (T, error) {
	var (
		out T
		ok  bool
	)
	if err := n.applied.wait(ctx, index); err != nil {
		return out, err
	}
	n.fsm.View(func(s *fsm.State, _ uint64) { out, ok = get(s) })
	if !ok {
		return out, fmt.Errorf("%w: gone after the write", fsm.ErrNotFound)
	}
	return out, nil
}

func (a *adminServer) CordonProxy(ctx context.Context, req *berthv1.CordonProxyRequest) (*berthv1.CordonProxyResponse, error) {
	p, err := a.setAdminState(ctx, req.ProxyId, berthv1.AdminState_ADMIN_STATE_CORDONED)
	if err != nil {
		return nil, err
	}
	return &berthv1.CordonProxyResponse{Proxy: p}, nil
}

func (a *adminServer) UncordonProxy(ctx context.Context, req *berthv1.UncordonProxyRequest) (*berthv1.UncordonProxyResponse, error) {
	p, err := a.setAdminState(ctx, req.ProxyId, berthv1.AdminState_ADMIN_STATE_NONE)
	if err != nil {
		return nil, err
	}
	return &berthv1.UncordonProxyResponse{Proxy: p}, nil
}

func (a *adminServer) DrainProxy(ctx context.Context, req *berthv1.DrainProxyRequest) (*berthv1.DrainProxyResponse, error) {
	p, err := a.setAdminState(ctx, req.ProxyId, berthv1.AdminState_ADMIN_STATE_DRAINING)
	if err != nil {
		return nil, err
	}
	return &berthv1.DrainProxyResponse{Proxy: p}, nil
}

func (a *adminServer) Rebalance(ctx context.Context, req *berthv1.RebalanceRequest) (*berthv1.RebalanceResponse, error) {
	resp, err := a.n.rebalanceNow(ctx, req.DryRun)
	return resp, toStatus(err)
}

// forwardAdmin returns the leader's AdminService for calls that must run
// there (membership), or nil when this node leads.
func (n *Node) forwardAdmin() (berthv1.AdminServiceClient, error) {
	if n.IsLeader() {
		return nil, nil
	}
	_, addr := n.leader()
	if addr == "" {
		return nil, n.notLeader()
	}
	return n.peers.admin(addr)
}

func (a *adminServer) AddServer(ctx context.Context, req *berthv1.AddServerRequest) (*berthv1.AddServerResponse, error) {
	if err := a.n.addServer(ctx, req.Server, req.Nonvoter); err != nil {
		return nil, toStatus(err)
	}
	return &berthv1.AddServerResponse{}, nil
}

func (a *adminServer) RemoveServer(ctx context.Context, req *berthv1.RemoveServerRequest) (*berthv1.RemoveServerResponse, error) {
	fwd, err := a.n.forwardAdmin()
	if err != nil {
		return nil, toStatus(err)
	}
	if fwd != nil {
		return fwd.RemoveServer(ctx, req)
	}
	if err := a.n.removeServer(ctx, req.ServerId); err != nil {
		return nil, toStatus(err)
	}
	return &berthv1.RemoveServerResponse{}, nil
}

func (a *adminServer) TransferLeadership(ctx context.Context, req *berthv1.TransferLeadershipRequest) (*berthv1.TransferLeadershipResponse, error) {
	fwd, err := a.n.forwardAdmin()
	if err != nil {
		return nil, toStatus(err)
	}
	if fwd != nil {
		return fwd.TransferLeadership(ctx, req)
	}
	transfer := a.n.raft.LeadershipTransfer
	if req.ServerId != "" {
		addr, err := a.n.memberAddress(req.ServerId)
		if err != nil {
			return nil, toStatus(err)
		}
		transfer = func() raft.Future { return a.n.raft.LeadershipTransferToServer(raft.ServerID(req.ServerId), addr) }
	}
	if err := a.n.ops.await(transfer); err != nil {
		return nil, toStatus(fmt.Errorf("leadership transfer: %w", err))
	}
	_, id := a.n.raft.LeaderWithID()
	return &berthv1.TransferLeadershipResponse{LeaderId: string(id)}, nil
}

func (n *Node) memberAddress(id string) (raft.ServerAddress, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return "", err
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return s.Address, nil
		}
	}
	return "", fmt.Errorf("%w: server %q is not a member", fsm.ErrNotFound, id)
}

func (a *adminServer) ClusterStatus(ctx context.Context, _ *berthv1.ClusterStatusRequest) (*berthv1.ClusterStatusResponse, error) {
	n := a.n
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, toStatus(err)
	}
	members := f.Configuration().Servers
	var meta map[string]*berthv1.Server
	n.fsm.View(func(s *fsm.State, _ uint64) {
		meta = make(map[string]*berthv1.Server)
		for _, srv := range s.Servers() {
			meta[srv.Id] = srv
		}
	})
	leaderID, leaderAddr := n.leader()
	resp := &berthv1.ClusterStatusResponse{
		LeaderId:      leaderID,
		LeaderAddress: leaderAddr,
		Term:          n.raft.CurrentTerm(),
		CommitIndex:   n.raft.CommitIndex(),
		AppliedIndex:  n.fsm.AppliedIndex(),
		ServedBy:      n.cfg.ID,
		Servers:       make([]*berthv1.ServerStatus, len(members)),
	}
	var wg sync.WaitGroup
	for i, m := range members {
		st := &berthv1.ServerStatus{Id: string(m.ID), RaftAddress: string(m.Address), Suffrage: berthv1.ServerSuffrage_SERVER_SUFFRAGE_VOTER}
		if m.Suffrage != raft.Voter {
			st.Suffrage = berthv1.ServerSuffrage_SERVER_SUFFRAGE_NONVOTER
		}
		if md := meta[st.Id]; md != nil {
			st.GrpcAddress = md.GrpcAddress
		}
		resp.Servers[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.fillServerStatus(ctx, st)
		}()
	}
	wg.Wait()
	sort.Slice(resp.Servers, func(i, j int) bool { return resp.Servers[i].Id < resp.Servers[j].Id })
	return resp, nil
}

// fillServerStatus asks a member for its own view (this node answers for
// itself) and judges it healthy when it answers, is in a normal Raft state,
// and has heard from a leader recently.
func (n *Node) fillServerStatus(ctx context.Context, st *berthv1.ServerStatus) {
	var info *berthv1.NodeInfoResponse
	if st.Id == n.cfg.ID {
		info = n.nodeInfo()
		st.GrpcAddress = info.GrpcAddress
	} else {
		if st.GrpcAddress == "" {
			st.State, st.Error = "Unknown", "no gRPC address registered yet"
			return
		}
		c, err := n.peers.cluster(st.GrpcAddress)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			info, err = c.NodeInfo(cctx, &berthv1.NodeInfoRequest{})
			cancel()
		}
		if err != nil {
			st.State, st.Error = "Unreachable", err.Error()
			return
		}
	}
	st.State, st.Term, st.CommitIndex = info.State, info.Term, info.CommitIndex
	st.AppliedIndex, st.LastLogIndex, st.LastContactMs = info.AppliedIndex, info.LastLogIndex, info.LastContactMs
	st.Build = info.Build
	stale := time.Duration(info.LastContactMs)*time.Millisecond > 3*n.cfg.Raft.HeartbeatTimeout
	switch {
	case info.State == raft.Leader.String():
		st.Healthy = true
	case info.State != raft.Follower.String():
		st.Error = "in state " + info.State
	case info.LastContactMs < 0 || stale:
		st.Error = "no recent contact with a leader"
	default:
		st.Healthy = true
	}
}

func (a *adminServer) Watch(req *berthv1.WatchRequest, stream berthv1.AdminService_WatchServer) error {
	return toStatus(a.n.watch(stream.Context(), req, stream.Send))
}

// watch serves one subscription until ctx ends, re-subscribing from the
// last index delivered whenever the broker resets it.
func (n *Node) watch(ctx context.Context, req *berthv1.WatchRequest, send func(*berthv1.WatchResponse) error) error {
	req = cloneWatch(req)
	for {
		sub, err := n.subscribe(req)
		if err != nil {
			return err
		}
		err = pump(ctx, sub, send)
		last := sub.LastIndex()
		sub.Close()
		if !errors.Is(err, ErrSubscriptionReset) {
			return err
		}
		n.metrics.watchResets.Inc()
		req.StartIndex = last
	}
}

func pump(ctx context.Context, sub *Subscription, send func(*berthv1.WatchResponse) error) error {
	for {
		resp, err := sub.Next(ctx)
		if resp != nil {
			if serr := send(resp); serr != nil {
				return serr
			}
		}
		if err != nil {
			return err
		}
	}
}
