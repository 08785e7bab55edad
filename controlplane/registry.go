package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// registryServer serves RegistryService: proxies register, then hold one
// session stream each.
type registryServer struct {
	berthv1.UnimplementedRegistryServiceServer
	n *Node
}

func (r *registryServer) RegisterProxy(ctx context.Context, req *berthv1.RegisterProxyRequest) (*berthv1.RegisterProxyResponse, error) {
	if req.Proxy == nil {
		return nil, toStatus(fmt.Errorf("%w: proxy is required", ErrInvalidArgument))
	}
	if err := fsm.ValidateProxy(req.Proxy); err != nil {
		return nil, toStatus(err)
	}
	res, err := r.n.Apply(ctx, &berthv1.Command{Kind: &berthv1.Command_RegisterProxy{RegisterProxy: &berthv1.RegisterProxyCommand{Proxy: req.Proxy}}})
	if err != nil {
		return nil, toStatus(err)
	}
	p, err := readAfterWrite(ctx, r.n, res.Index, func(s *fsm.State) (*berthv1.Proxy, bool) { return s.Proxy(req.Proxy.Id) })
	if err != nil {
		return nil, toStatus(err)
	}
	return &berthv1.RegisterProxyResponse{Proxy: p, Index: res.Index}, nil
}

// Session runs one proxy's stream. Down: a welcome, then the proxy's
// assignments (its connections and the moves that touch it) plus every
// proxy, endpoint and connection (the peer directory: ring-hash routing
// places every connection of an endpoint, wherever it is held) as one
// ordered watch, resumed from the proxy's last index. Up: load samples go to
// the leader's memory; connection events, full syncs and move reports are
// committed in the order they arrive and each answered with a WriteAck. A
// refused write is acknowledged with its code; a write that could not be
// committed at all ends the session, so the proxy resends it elsewhere.
func (r *registryServer) Session(stream berthv1.RegistryService_SessionServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "session: the first message must be a hello")
	}
	if err := fsm.ValidateID("proxy_id", hello.ProxyId); err != nil {
		return toStatus(err)
	}
	var known bool
	r.n.fsm.View(func(s *fsm.State, _ uint64) { _, known = s.Proxy(hello.ProxyId) })
	if !known {
		return status.Errorf(codes.NotFound, "session: proxy %q is not registered: call RegisterProxy first", hello.ProxyId)
	}

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	s := &session{n: r.n, proxyID: hello.ProxyId, stream: stream}
	defer s.close()
	r.n.metrics.sessions.Inc()
	defer r.n.metrics.sessions.Dec()
	log := r.n.logger.With("proxy", hello.ProxyId)
	log.Info("proxy session opened", "resume_index", hello.ResumeIndex)

	if err := s.send(&berthv1.SessionResponse{Kind: &berthv1.SessionResponse_Welcome{Welcome: r.n.welcome()}}); err != nil {
		return err
	}
	watchDone := make(chan error, 1)
	go func() {
		req := &berthv1.WatchRequest{
			StartIndex: hello.ResumeIndex,
			Selectors: []*berthv1.WatchSelector{
				{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_ASSIGNMENTS}, Filter: &berthv1.EventFilter{ProxyId: hello.ProxyId}},
				{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_ENDPOINTS, berthv1.Topic_TOPIC_CONNECTIONS}},
			},
		}
		watchDone <- r.n.watch(ctx, req, func(w *berthv1.WatchResponse) error {
			return s.send(&berthv1.SessionResponse{Kind: &berthv1.SessionResponse_Update{Update: w}})
		})
	}()
	recvDone := make(chan error, 1)
	go func() { recvDone <- s.recvLoop(ctx) }()

	select {
	case err = <-recvDone:
	case err = <-watchDone:
	}
	cancel()
	log.Info("proxy session closed", "acked_index", s.ackedIndex(), "err", err)
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return toStatus(err)
}

func (n *Node) welcome() *berthv1.SessionWelcome {
	w := &berthv1.SessionWelcome{ServerId: n.cfg.ID}
	w.LeaderId, _ = n.leader()
	n.fsm.View(func(s *fsm.State, _ uint64) {
		for _, srv := range s.Servers() {
			w.Servers = append(w.Servers, srv.GrpcAddress)
		}
	})
	return w
}

type session struct {
	n       *Node
	proxyID string
	stream  berthv1.RegistryService_SessionServer

	mu     sync.Mutex // serialises Send; guards closed and acked
	closed bool
	acked  uint64
}

func (s *session) send(resp *berthv1.SessionResponse) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return io.EOF
	}
	return s.stream.Send(resp)
}

func (s *session) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func (s *session) ackedIndex() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

func (s *session) recvLoop(ctx context.Context) error {
	for {
		msg, err := s.stream.Recv()
		if err != nil {
			return err
		}
		switch k := msg.Kind.(type) {
		case *berthv1.SessionRequest_Load:
			if k.Load == nil {
				continue
			}
			k.Load.ProxyId = s.proxyID // a session speaks for its own proxy only
			s.n.relay.submit(k.Load)
		case *berthv1.SessionRequest_Events:
			err = s.write(ctx, k.Events.GetSeq(), &berthv1.Command{Kind: &berthv1.Command_ConnectionEvents{
				ConnectionEvents: &berthv1.ConnectionEventsCommand{ProxyId: s.proxyID, Events: k.Events.GetEvents()}}})
		case *berthv1.SessionRequest_FullSync:
			err = s.write(ctx, k.FullSync.GetSeq(), &berthv1.Command{Kind: &berthv1.Command_ReconcileProxy{
				ReconcileProxy: &berthv1.ReconcileProxyCommand{ProxyId: s.proxyID, Connections: k.FullSync.GetConnections()}}})
		case *berthv1.SessionRequest_MoveReport:
			err = s.write(ctx, k.MoveReport.GetSeq(), &berthv1.Command{Kind: &berthv1.Command_UpdateMove{
				UpdateMove: &berthv1.UpdateMoveCommand{
					MoveId:          k.MoveReport.GetMoveId(),
					State:           k.MoveReport.GetState(),
					NewConnectionId: k.MoveReport.GetNewConnectionId(),
					AbortReason:     k.MoveReport.GetReason(),
				}}})
		case *berthv1.SessionRequest_Ack:
			s.mu.Lock()
			s.acked = max(s.acked, k.Ack.GetIndex())
			s.mu.Unlock()
		case *berthv1.SessionRequest_Hello:
			return status.Error(codes.InvalidArgument, "session: hello sent twice")
		default:
			return status.Error(codes.InvalidArgument, "session: empty or unknown message")
		}
		if err != nil {
			return err
		}
	}
}

// write commits cmd and acknowledges seq with its result. Refusals (fsm
// sentinels) are acknowledged; anything else ends the session.
func (s *session) write(ctx context.Context, seq uint64, cmd *berthv1.Command) error {
	res, err := s.n.Apply(ctx, cmd)
	if err != nil {
		code := fsm.ResultCode(err)
		if code == berthv1.ResultCode_RESULT_CODE_UNSPECIFIED {
			return err
		}
		res = &berthv1.CommandResult{Code: code, Message: err.Error()}
	}
	return s.send(&berthv1.SessionResponse{Kind: &berthv1.SessionResponse_WriteAck{WriteAck: &berthv1.WriteAck{Seq: seq, Result: res}}})
}
