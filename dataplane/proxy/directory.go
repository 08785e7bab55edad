package proxy

import (
	"context"
	"sync"

	"github.com/berthhq/berth/dataplane/ring"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// directory is what the control plane streams to this proxy: every proxy
// (addresses, status), every endpoint (which proxies serve it) and every
// connection (slot and holder, for ring placement), as of index. It is kept
// when the control plane is unreachable, so routing goes on from the last
// state known.
type directory struct {
	self string

	mu        sync.RWMutex
	index     uint64
	proxies   map[string]*berthv1.Proxy
	endpoints map[string]*berthv1.Endpoint
	conns     map[string]*berthv1.Connection
	byEP      map[string]map[string]*berthv1.Connection // endpoint -> connections serving it
	moves     map[string]*berthv1.Move                  // moves leaving or reaching this proxy
	rings     map[string]*ring.Ring                     // built on demand, dropped when the endpoint's connections change
	ringCfg   ring.Config

	// snapshot being received in chunks; swapped in when done.
	pending *directory
	// synced is closed once the first complete snapshot is in.
	synced     chan struct{}
	syncedOnce sync.Once
}

func newDirectory(self string, ringCfg ring.Config) *directory {
	return &directory{
		self: self, ringCfg: ringCfg,
		proxies: map[string]*berthv1.Proxy{}, endpoints: map[string]*berthv1.Endpoint{},
		conns: map[string]*berthv1.Connection{}, byEP: map[string]map[string]*berthv1.Connection{}, moves: map[string]*berthv1.Move{},
		rings: map[string]*ring.Ring{}, synced: make(chan struct{}),
	}
}

// awaitSync waits (bounded by ctx) for the first complete snapshot: a
// proxy that just started knows no connection until then.
func (d *directory) awaitSync(ctx context.Context) {
	select {
	case <-d.synced:
	case <-ctx.Done():
	}
}

func (d *directory) isSynced() bool {
	select {
	case <-d.synced:
		return true
	default:
		return false
	}
}

// apply folds one watch update in and returns the moves it changed.
func (d *directory) apply(w *berthv1.WatchResponse) []*berthv1.Move {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch k := w.Kind.(type) {
	case *berthv1.WatchResponse_Snapshot:
		if d.pending == nil {
			d.pending = newDirectory(d.self, d.ringCfg)
		}
		for _, ev := range k.Snapshot.Events {
			d.pending.put(ev)
		}
		if !k.Snapshot.Done {
			return nil
		}
		d.proxies, d.endpoints, d.conns, d.byEP, d.moves = d.pending.proxies, d.pending.endpoints, d.pending.conns, d.pending.byEP, d.pending.moves
		d.rings = map[string]*ring.Ring{}
		d.index = k.Snapshot.Index
		d.pending = nil
		d.syncedOnce.Do(func() { close(d.synced) })
		var moves []*berthv1.Move
		for _, m := range d.moves {
			moves = append(moves, m)
		}
		return moves
	case *berthv1.WatchResponse_Events:
		var moves []*berthv1.Move
		for _, ev := range k.Events.Events {
			if ev.Index < d.index {
				continue // already folded in (events carry their index)
			}
			d.put(ev)
			d.index = max(d.index, ev.Index)
			if m := ev.GetMove(); m != nil {
				moves = append(moves, m)
			}
		}
		return moves
	case *berthv1.WatchResponse_Reset_:
		d.pending = nil
	}
	return nil
}

func (d *directory) put(ev *berthv1.Event) {
	del := ev.Op == berthv1.EventOp_EVENT_OP_DELETE
	switch o := ev.Object.(type) {
	case *berthv1.Event_Proxy:
		if del {
			delete(d.proxies, o.Proxy.Id)
		} else {
			d.proxies[o.Proxy.Id] = o.Proxy
		}
	case *berthv1.Event_Endpoint:
		if del {
			delete(d.endpoints, o.Endpoint.Name)
		} else {
			d.endpoints[o.Endpoint.Name] = o.Endpoint
		}
	case *berthv1.Event_Connection:
		c := o.Connection
		if old := d.conns[c.Id]; old != nil {
			d.dropRings(old.Endpoints)
			for _, e := range old.Endpoints {
				delete(d.byEP[e], c.Id)
				if len(d.byEP[e]) == 0 {
					delete(d.byEP, e)
				}
			}
		}
		d.dropRings(c.Endpoints)
		if del {
			delete(d.conns, c.Id)
			break
		}
		d.conns[c.Id] = c
		for _, e := range c.Endpoints {
			if d.byEP[e] == nil {
				d.byEP[e] = map[string]*berthv1.Connection{}
			}
			d.byEP[e][c.Id] = c
		}
	case *berthv1.Event_Move:
		m := o.Move
		if del || (m.FromProxyId != d.self && m.ToProxyId != d.self) {
			delete(d.moves, m.Id)
		} else {
			d.moves[m.Id] = m
		}
	}
}

func (d *directory) dropRings(endpoints []string) {
	if d.rings == nil {
		return
	}
	for _, e := range endpoints {
		delete(d.rings, e)
	}
}

func (d *directory) lastIndex() uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.index
}

// peerAddress is the peer-link address of proxy id.
func (d *directory) peerAddress(id string) (string, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	p := d.proxies[id]
	if p == nil || p.GetAddresses().GetPeer() == "" {
		return "", false
	}
	return p.Addresses.Peer, true
}

// tunnelAddress is where agents reach proxy id.
func (d *directory) tunnelAddress(id string) (string, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	p := d.proxies[id]
	if p == nil || p.GetAddresses().GetTunnel() == "" {
		return "", false
	}
	return p.Addresses.Tunnel, true
}

// holders are the other proxies serving endpoint that are not DOWN, in a
// stable order.
func (d *directory) holders(endpoint string) []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	e := d.endpoints[endpoint]
	if e == nil {
		return nil
	}
	out := make([]string, 0, len(e.ProxyIds))
	for _, id := range e.ProxyIds {
		if id == d.self {
			continue
		}
		if p := d.proxies[id]; p != nil && p.Status == berthv1.ProxyStatus_PROXY_STATUS_DOWN {
			continue
		}
		out = append(out, id)
	}
	return out
}

// ring is the ring of endpoint's connections: every connection the control
// plane knows, plus local ones it has not committed yet. Rings are cached
// per endpoint until one of its connections changes.
func (d *directory) ring(endpoint string, local []*localConn) *ring.Ring {
	d.mu.RLock()
	r, cached := d.rings[endpoint]
	allKnown := true
	for _, c := range local {
		if _, ok := d.conns[c.id]; !ok {
			allKnown = false
			break
		}
	}
	d.mu.RUnlock()
	if cached && allKnown {
		return r
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var targets []ring.Target
	for _, c := range d.byEP[endpoint] {
		targets = append(targets, ring.Target{ID: c.Id, Slot: c.Slot, Weight: 1})
	}
	for _, c := range local {
		if _, ok := d.conns[c.id]; !ok {
			targets = append(targets, ring.Target{ID: c.id, Slot: c.slot, Weight: 1})
		}
	}
	r = ring.New(targets, d.ringCfg)
	if allKnown {
		d.rings[endpoint] = r
	}
	return r
}

// holderOf is the proxy holding connection id, per the directory.
func (d *directory) holderOf(id string) string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if c := d.conns[id]; c != nil {
		return c.ProxyId
	}
	return ""
}

// knows reports whether the directory has endpoint.
func (d *directory) knows(endpoint string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.endpoints[endpoint] != nil
}

// endpointNames lists every endpoint the directory knows.
func (d *directory) endpointNames() []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]string, 0, len(d.endpoints))
	for e := range d.endpoints {
		out = append(out, e)
	}
	return out
}

// openMoves are this proxy's moves still PENDING or ACCEPTED.
func (d *directory) openMoves() []*berthv1.Move {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []*berthv1.Move
	for _, m := range d.moves {
		if m.State == berthv1.MoveState_MOVE_STATE_PENDING || m.State == berthv1.MoveState_MOVE_STATE_ACCEPTED {
			out = append(out, m)
		}
	}
	return out
}
