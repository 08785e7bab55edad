package fsm

import (
	"encoding/binary"
	"slices"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// State is the registry: proxies, connections, moves, servers, the
// endpoints derived from connections, and the indexes that keep queries
// O(result).
//
// Stored objects are immutable: a change stores a fresh clone and never
// touches the old one, so readers get shared pointers without copying, and
// a snapshot only copies the maps of pointers. State itself is not safe for
// concurrent use; FSM guards it with a lock.
type State struct {
	proxies map[string]*berthv1.Proxy
	conns   map[string]*berthv1.Connection
	moves   map[string]*berthv1.Move
	servers map[string]*berthv1.Server
	// tokens are operators' admin tokens by id (hashes only).
	tokens    map[string]*berthv1.AdminToken
	endpoints map[string]*berthv1.Endpoint

	proxyIDs      sortedSet
	connIDs       sortedSet
	moveIDs       sortedSet
	endpointNames sortedSet

	connsByProxy     setIndex // proxy id -> connection ids
	connsByEndpoint  setIndex // endpoint name -> connection ids
	movesByProxy     setIndex // proxy id -> ids of moves leaving or reaching it
	endpointsByProxy setIndex // proxy id -> endpoint names it serves

	// epProxies counts, per endpoint, the connections each proxy holds for
	// it; proxiesByEndpoint orders the proxies with a count above zero: the
	// source of Endpoint.proxy_ids.
	epProxies         map[string]map[string]int
	proxiesByEndpoint setIndex
	// finished orders COMPLETED and ABORTED moves by (created_index, id)
	// for pruning; see finishedKey.
	finished sortedSet
	// acceptedBy maps the new connection of an ACCEPTED move to the move.
	acceptedBy map[string]string
	// requests remembers recently applied request ids (requests.go).
	requests requestTable

	// Scratch of the command being applied.
	index  uint64
	now    int64
	events []*berthv1.Event
	undo   []undoEntry
	// dirty holds the endpoints whose connections changed, true when the
	// set of proxies serving it changed too.
	dirty map[string]bool
}

// NewState returns an empty registry.
func NewState() *State {
	return &State{
		proxies:           map[string]*berthv1.Proxy{},
		conns:             map[string]*berthv1.Connection{},
		moves:             map[string]*berthv1.Move{},
		servers:           map[string]*berthv1.Server{},
		tokens:            map[string]*berthv1.AdminToken{},
		endpoints:         map[string]*berthv1.Endpoint{},
		connsByProxy:      setIndex{},
		connsByEndpoint:   setIndex{},
		movesByProxy:      setIndex{},
		endpointsByProxy:  setIndex{},
		epProxies:         map[string]map[string]int{},
		proxiesByEndpoint: setIndex{},
		acceptedBy:        map[string]string{},
		requests:          newRequestTable(),
		dirty:             map[string]bool{},
	}
}

// undoEntry records an object's value before a change (nil: absent), so a
// refused event or a failed command can be rolled back exactly.
type undoEntry struct {
	kind objKind
	key  string
	old  any
}

type objKind uint8

const (
	kindProxy objKind = iota + 1
	kindConn
	kindMove
	kindServer
	kindEndpoint
	kindToken
)

// rollback undoes every change recorded after mark, newest first. The raw
// setters it uses maintain the indexes, so those come back too.
func (s *State) rollback(mark int) {
	for i := len(s.undo) - 1; i >= mark; i-- {
		u := s.undo[i]
		switch u.kind {
		case kindProxy:
			if p, _ := u.old.(*berthv1.Proxy); p != nil {
				s.setProxy(p)
			} else {
				s.unsetProxy(u.key)
			}
		case kindConn:
			if c, _ := u.old.(*berthv1.Connection); c != nil {
				s.setConn(c)
			} else {
				s.unsetConn(u.key)
			}
		case kindMove:
			if m, _ := u.old.(*berthv1.Move); m != nil {
				s.setMove(m)
			} else {
				s.unsetMove(u.key)
			}
		case kindServer:
			if v, _ := u.old.(*berthv1.Server); v != nil {
				s.servers[u.key] = v
			} else {
				delete(s.servers, u.key)
			}
		case kindToken:
			if v, _ := u.old.(*berthv1.AdminToken); v != nil {
				s.tokens[u.key] = v
			} else {
				delete(s.tokens, u.key)
			}
		case kindEndpoint:
			if e, _ := u.old.(*berthv1.Endpoint); e != nil {
				s.setEndpoint(e)
			} else {
				s.unsetEndpoint(u.key)
			}
		}
		s.undo[i] = undoEntry{}
	}
	s.undo = s.undo[:mark]
}

// The put*/del* setters are the only way a command changes state: each
// records undo and emits its event. The set*/unset* ones below them only
// store and index (used by rollback and restore).

func (s *State) putProxy(p *berthv1.Proxy) {
	s.undo = append(s.undo, undoEntry{kindProxy, p.Id, s.proxies[p.Id]})
	s.setProxy(p)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Region: p.Region, Object: &berthv1.Event_Proxy{Proxy: p}})
}

func (s *State) delProxy(id string) {
	p := s.proxies[id]
	s.undo = append(s.undo, undoEntry{kindProxy, id, p})
	s.unsetProxy(id)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_DELETE, Region: p.Region, Object: &berthv1.Event_Proxy{Proxy: p}})
}

func (s *State) putConn(c *berthv1.Connection) {
	s.undo = append(s.undo, undoEntry{kindConn, c.Id, s.conns[c.Id]})
	s.setConn(c)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Region: s.regionOf(c.ProxyId), Object: &berthv1.Event_Connection{Connection: c}})
}

func (s *State) delConn(id string) {
	c := s.conns[id]
	s.undo = append(s.undo, undoEntry{kindConn, id, c})
	s.unsetConn(id)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_DELETE, Region: s.regionOf(c.ProxyId), Object: &berthv1.Event_Connection{Connection: c}})
}

func (s *State) putMove(m *berthv1.Move) {
	s.undo = append(s.undo, undoEntry{kindMove, m.Id, s.moves[m.Id]})
	s.setMove(m)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Region: s.regionOf(m.FromProxyId), Object: &berthv1.Event_Move{Move: m}})
}

func (s *State) delMove(id string) {
	m := s.moves[id]
	s.undo = append(s.undo, undoEntry{kindMove, id, m})
	s.unsetMove(id)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_DELETE, Region: s.regionOf(m.FromProxyId), Object: &berthv1.Event_Move{Move: m}})
}

func (s *State) putServer(v *berthv1.Server) {
	s.undo = append(s.undo, undoEntry{kindServer, v.Id, s.servers[v.Id]})
	s.servers[v.Id] = v
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Object: &berthv1.Event_Server{Server: v}})
}

func (s *State) delServer(id string) {
	v := s.servers[id]
	s.undo = append(s.undo, undoEntry{kindServer, id, v})
	delete(s.servers, id)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_DELETE, Object: &berthv1.Event_Server{Server: v}})
}

// Admin tokens emit no events: nobody watches secrets, even hashed.
func (s *State) putToken(v *berthv1.AdminToken) {
	s.undo = append(s.undo, undoEntry{kindToken, v.Id, s.tokens[v.Id]})
	s.tokens[v.Id] = v
}

func (s *State) delToken(id string) {
	s.undo = append(s.undo, undoEntry{kindToken, id, s.tokens[id]})
	delete(s.tokens, id)
}

func (s *State) putEndpoint(e *berthv1.Endpoint) {
	s.undo = append(s.undo, undoEntry{kindEndpoint, e.Name, s.endpoints[e.Name]})
	s.setEndpoint(e)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Object: &berthv1.Event_Endpoint{Endpoint: e}})
}

func (s *State) delEndpoint(name string) {
	e := s.endpoints[name]
	s.undo = append(s.undo, undoEntry{kindEndpoint, name, e})
	s.unsetEndpoint(name)
	s.emit(&berthv1.Event{Op: berthv1.EventOp_EVENT_OP_DELETE, Object: &berthv1.Event_Endpoint{Endpoint: e}})
}

func (s *State) emit(ev *berthv1.Event) {
	ev.Index = s.index
	s.events = append(s.events, ev)
}

func (s *State) regionOf(proxyID string) string {
	if p := s.proxies[proxyID]; p != nil {
		return p.Region
	}
	return ""
}

func (s *State) setProxy(p *berthv1.Proxy) {
	if _, ok := s.proxies[p.Id]; !ok {
		s.proxyIDs.insert(p.Id)
	}
	s.proxies[p.Id] = p
}

func (s *State) unsetProxy(id string) {
	if _, ok := s.proxies[id]; ok {
		s.proxyIDs.remove(id)
		delete(s.proxies, id)
	}
}

func (s *State) setConn(c *berthv1.Connection) {
	old, ok := s.conns[c.Id]
	s.conns[c.Id] = c
	if ok && old.ProxyId == c.ProxyId && slices.Equal(old.Endpoints, c.Endpoints) {
		return
	}
	if ok {
		s.unindexConn(old)
	} else {
		s.connIDs.insert(c.Id)
	}
	s.connsByProxy.add(c.ProxyId, c.Id)
	for _, e := range c.Endpoints {
		s.connsByEndpoint.add(e, c.Id)
		m := s.epProxies[e]
		if m == nil {
			m = map[string]int{}
			s.epProxies[e] = m
		}
		n := m[c.ProxyId] + 1
		m[c.ProxyId] = n
		first := n == 1
		if first {
			s.endpointsByProxy.add(c.ProxyId, e)
			s.proxiesByEndpoint.add(e, c.ProxyId)
		}
		s.dirty[e] = s.dirty[e] || first
	}
}

func (s *State) unsetConn(id string) {
	old, ok := s.conns[id]
	if !ok {
		return
	}
	s.unindexConn(old)
	s.connIDs.remove(id)
	delete(s.conns, id)
}

func (s *State) unindexConn(c *berthv1.Connection) {
	s.connsByProxy.del(c.ProxyId, c.Id)
	for _, e := range c.Endpoints {
		s.connsByEndpoint.del(e, c.Id)
		m := s.epProxies[e]
		n := m[c.ProxyId] - 1
		m[c.ProxyId] = n
		last := n <= 0
		if last {
			delete(m, c.ProxyId)
			s.endpointsByProxy.del(c.ProxyId, e)
			s.proxiesByEndpoint.del(e, c.ProxyId)
			if len(m) == 0 {
				delete(s.epProxies, e)
			}
		}
		s.dirty[e] = s.dirty[e] || last
	}
}

func (s *State) setMove(m *berthv1.Move) {
	if old, ok := s.moves[m.Id]; ok {
		s.unindexMove(old)
	} else {
		s.moveIDs.insert(m.Id)
	}
	s.moves[m.Id] = m
	s.movesByProxy.add(m.FromProxyId, m.Id)
	s.movesByProxy.add(m.ToProxyId, m.Id)
	switch m.State {
	case berthv1.MoveState_MOVE_STATE_ACCEPTED:
		s.acceptedBy[m.NewConnectionId] = m.Id
	case berthv1.MoveState_MOVE_STATE_COMPLETED, berthv1.MoveState_MOVE_STATE_ABORTED:
		s.finished.insert(finishedKey(m))
	}
}

func (s *State) unsetMove(id string) {
	old, ok := s.moves[id]
	if !ok {
		return
	}
	s.unindexMove(old)
	s.moveIDs.remove(id)
	delete(s.moves, id)
}

func (s *State) unindexMove(m *berthv1.Move) {
	s.movesByProxy.del(m.FromProxyId, m.Id)
	s.movesByProxy.del(m.ToProxyId, m.Id)
	if m.State == berthv1.MoveState_MOVE_STATE_ACCEPTED && s.acceptedBy[m.NewConnectionId] == m.Id {
		delete(s.acceptedBy, m.NewConnectionId)
	}
	s.finished.remove(finishedKey(m))
}

// finishedKey orders finished moves oldest first: the created index,
// big-endian so that byte order is numeric order, then the id.
func finishedKey(m *berthv1.Move) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], m.CreatedIndex)
	return string(b[:]) + m.Id
}

func (s *State) setEndpoint(e *berthv1.Endpoint) {
	if _, ok := s.endpoints[e.Name]; !ok {
		s.endpointNames.insert(e.Name)
	}
	s.endpoints[e.Name] = e
}

func (s *State) unsetEndpoint(name string) {
	if _, ok := s.endpoints[name]; ok {
		s.endpointNames.remove(name)
		delete(s.endpoints, name)
	}
}

// deriveEndpoint computes an endpoint's count and proxies from the indexes
// (nil when no connection serves it). The version is left to the caller.
// Unless proxiesChanged, the proxy list of old is reused: an endpoint
// served by a thousand proxies is not copied for every connection opened.
func (s *State) deriveEndpoint(name string, old *berthv1.Endpoint, proxiesChanged bool) *berthv1.Endpoint {
	n := s.connsByEndpoint[name].len()
	if n == 0 {
		return nil
	}
	e := &berthv1.Endpoint{Name: name, ConnectionCount: uint32(n)}
	if old != nil && !proxiesChanged {
		e.ProxyIds = old.ProxyIds
	} else {
		e.ProxyIds = s.proxiesByEndpoint[name].keys()
	}
	return e
}

// flushEndpoints brings the derived endpoints in line with the connections
// changed by this command, once per endpoint, in name order: a batch of a
// thousand opens yields one event per endpoint, not a thousand.
func (s *State) flushEndpoints() {
	if len(s.dirty) == 0 {
		return
	}
	names := make([]string, 0, len(s.dirty))
	for n := range s.dirty {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		old := s.endpoints[name]
		e := s.deriveEndpoint(name, old, s.dirty[name])
		switch {
		case e == nil && old != nil:
			s.delEndpoint(name)
		case e == nil:
		case old != nil && old.ConnectionCount == e.ConnectionCount && slices.Equal(old.ProxyIds, e.ProxyIds):
		default:
			e.Version = s.index
			s.putEndpoint(e)
		}
	}
	clear(s.dirty)
}
