package proxy

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// localConn is an agent tunnel this proxy holds.
type localConn struct {
	id        string
	slot      string
	agentID   string
	endpoints []string
	moveID    string // set when this tunnel is the target side of a move
	opened    time.Time
	// sess is set once the agent is welcomed; until then the connection is
	// known (a full sync includes it) but not routable.
	sess atomic.Pointer[tunnel.Session]

	outstanding atomic.Int64 // requests and long-lived streams in flight
	streams     atomic.Int64 // tunnel streams open (pooled ones included)
	draining    atomic.Bool  // no new streams
}

func (c *localConn) record() *berthv1.Connection {
	return &berthv1.Connection{Id: c.id, Slot: c.slot, AgentId: c.agentID, Endpoints: c.endpoints}
}

func (c *localConn) serves(endpoint string) bool {
	for _, e := range c.endpoints {
		if e == endpoint {
			return true
		}
	}
	return false
}

// usable says the connection may take a new stream.
func (c *localConn) usable() bool {
	s := c.sess.Load()
	return s != nil && !s.IsClosed() && !c.draining.Load()
}

// connTable is the proxy's live tunnels, by id and by endpoint.
type connTable struct {
	mu         sync.RWMutex
	byID       map[string]*localConn
	byEndpoint map[string]map[string]*localConn
}

func newConnTable() *connTable {
	return &connTable{byID: map[string]*localConn{}, byEndpoint: map[string]map[string]*localConn{}}
}

func (t *connTable) add(c *localConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byID[c.id] = c
	for _, e := range c.endpoints {
		if t.byEndpoint[e] == nil {
			t.byEndpoint[e] = map[string]*localConn{}
		}
		t.byEndpoint[e][c.id] = c
	}
}

func (t *connTable) remove(id string) *localConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.byID[id]
	if c == nil {
		return nil
	}
	delete(t.byID, id)
	for _, e := range c.endpoints {
		delete(t.byEndpoint[e], id)
		if len(t.byEndpoint[e]) == 0 {
			delete(t.byEndpoint, e)
		}
	}
	return c
}

func (t *connTable) get(id string) *localConn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.byID[id]
}

func (t *connTable) count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byID)
}

func (t *connTable) all() []*localConn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]*localConn, 0, len(t.byID))
	for _, c := range t.byID {
		out = append(out, c)
	}
	return out
}

func (t *connTable) endpoints() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]string, 0, len(t.byEndpoint))
	for e := range t.byEndpoint {
		out = append(out, e)
	}
	return out
}

func (t *connTable) forEndpoint(endpoint string) []*localConn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]*localConn, 0, len(t.byEndpoint[endpoint]))
	for _, c := range t.byEndpoint[endpoint] {
		out = append(out, c)
	}
	return out
}

// leastLoaded orders the usable connections of endpoint by outstanding
// streams, ties broken at random so equal connections share the load.
func (t *connTable) leastLoaded(endpoint string) []*localConn {
	cs := t.forEndpoint(endpoint)
	out := cs[:0]
	for _, c := range cs {
		if c.usable() {
			out = append(out, c)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	// Insertion sort: the lists are short and mostly ordered.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].outstanding.Load() < out[j-1].outstanding.Load(); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
