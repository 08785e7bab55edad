package controlplanetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
)

// Network is the harness's fault-injecting network for node-to-node traffic
// (Raft and node-to-node gRPC). Isolating a node cuts every such connection
// to or from it and refuses new ones; clients outside the cluster still
// reach its public gRPC port, which is exactly the case where a deposed
// leader must not answer linearizable reads. Degrade slows and "loses"
// what crosses the links instead (lossy.go).
type Network struct {
	mu       sync.Mutex
	owner    map[string]string // listen or advertised address -> node id
	isolated map[string]bool
	conns    map[*trackedConn]struct{}
	faults   LinkFaults
	rng      *rand.Rand
}

// NewNetwork returns a network with nobody isolated.
func NewNetwork() *Network {
	return &Network{owner: make(map[string]string), isolated: make(map[string]bool), conns: make(map[*trackedConn]struct{})}
}

// For returns the controlplane.Network a node with id uses.
func (w *Network) For(id string) *NodeNetwork { return &NodeNetwork{w: w, id: id} }

// Own records that addr belongs to node id (its gRPC address; Raft
// listeners register themselves).
func (w *Network) Own(addr, id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.owner[addr] = id
}

// Isolate cuts node id off from every other node.
func (w *Network) Isolate(id string) {
	w.mu.Lock()
	w.isolated[id] = true
	var cut []*trackedConn
	for c := range w.conns {
		if c.local == id || c.remote == id {
			cut = append(cut, c)
		}
	}
	w.mu.Unlock()
	for _, c := range cut {
		_ = c.Close()
	}
}

// Heal reconnects node id.
func (w *Network) Heal(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.isolated, id)
}

func (w *Network) blocked(a, b string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.isolated[a] || w.isolated[b]
}

func (w *Network) track(c *trackedConn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conns[c] = struct{}{}
}

func (w *Network) untrack(c *trackedConn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.conns, c)
}

// NodeNetwork is one node's view of the Network.
type NodeNetwork struct {
	w  *Network
	id string
}

// Listen listens on TCP and drops connections accepted while isolated.
func (n *NodeNetwork) Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	n.w.Own(ln.Addr().String(), n.id)
	return &listener{Listener: ln, n: n}, nil
}

// Dial refuses to connect across an isolation.
func (n *NodeNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	n.w.mu.Lock()
	remote := n.w.owner[addr]
	n.w.mu.Unlock()
	if n.w.blocked(n.id, remote) {
		return nil, fmt.Errorf("dial %s: network partitioned", addr)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if n.w.degraded() {
		c = newLossyConn(c, n.w)
	}
	tc := &trackedConn{Conn: c, w: n.w, local: n.id, remote: remote}
	n.w.track(tc)
	return tc, nil
}

type listener struct {
	net.Listener
	n *NodeNetwork
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.n.w.blocked(l.n.id, "") {
			_ = c.Close()
			continue
		}
		tc := &trackedConn{Conn: c, w: l.n.w, local: l.n.id}
		l.n.w.track(tc)
		return tc, nil
	}
}

type trackedConn struct {
	net.Conn
	w             *Network
	local, remote string
	once          sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.w.untrack(c) })
	return c.Conn.Close()
}
