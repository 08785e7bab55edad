package controlplane

import (
	"context"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// peerPool keeps one long-lived gRPC connection per other control-plane
// node, created on first use (grpc.NewClient connects lazily, so racing
// callers share one dial) and dialled through the node's Network.
type peerPool struct {
	network Network
	creds   credentials.TransportCredentials
	mu      sync.Mutex
	conns   map[string]*grpc.ClientConn
	closed  bool
}

func newPeerPool(network Network, creds credentials.TransportCredentials) *peerPool {
	return &peerPool{network: network, creds: creds, conns: make(map[string]*grpc.ClientConn)}
}

func (p *peerPool) conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrShutdown
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(p.creds),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return p.network.Dial(ctx, a)
		}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	)
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerPool) cluster(addr string) (berthv1.ClusterServiceClient, error) {
	c, err := p.conn(addr)
	if err != nil {
		return nil, err
	}
	return berthv1.NewClusterServiceClient(c), nil
}

func (p *peerPool) admin(addr string) (berthv1.AdminServiceClient, error) {
	c, err := p.conn(addr)
	if err != nil {
		return nil, err
	}
	return berthv1.NewAdminServiceClient(c), nil
}

func (p *peerPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for addr, c := range p.conns {
		_ = c.Close()
		delete(p.conns, addr)
	}
}
