package fsm

import (
	"iter"
	"slices"
	"strings"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Reads return the stored objects themselves: they are shared and
// immutable, and must not be modified. Lists are sorted by id (endpoints by
// name) and paged: after is an exclusive cursor ("" starts at the
// beginning), limit <= 0 means no limit, and next is the last key returned
// when more matching objects remain, else "". Every list walks an ordered
// index, so a page costs O(log n + what it skips by filter + the page).

// Proxy returns the proxy with id.
func (s *State) Proxy(id string) (*berthv1.Proxy, bool) {
	p, ok := s.proxies[id]
	return p, ok
}

// ProxyFilter narrows ListProxies; zero fields match everything.
type ProxyFilter struct {
	// Statuses matches any of these.
	Statuses []berthv1.ProxyStatus
	Region   string
}

// ListProxies lists proxies by id.
func (s *State) ListProxies(f ProxyFilter, after string, limit int) (out []*berthv1.Proxy, next string) {
	return page(s.proxyIDs.after(after), limit, func(id string) (*berthv1.Proxy, bool) {
		p := s.proxies[id]
		return p, (f.Region == "" || p.Region == f.Region) &&
			(len(f.Statuses) == 0 || slices.Contains(f.Statuses, p.Status))
	})
}

// Connection returns the connection with id.
func (s *State) Connection(id string) (*berthv1.Connection, bool) {
	c, ok := s.conns[id]
	return c, ok
}

// ConnectionFilter narrows ListConnections; zero fields match everything.
type ConnectionFilter struct {
	ProxyID  string
	Endpoint string
}

// ListConnections lists connections by id, walking the by-proxy or
// by-endpoint index when the filter names one (the smaller when both).
func (s *State) ListConnections(f ConnectionFilter, after string, limit int) ([]*berthv1.Connection, string) {
	return page(s.connSet(f.ProxyID, f.Endpoint).after(after), limit, func(id string) (*berthv1.Connection, bool) {
		c := s.conns[id]
		return c, (f.ProxyID == "" || c.ProxyId == f.ProxyID) &&
			(f.Endpoint == "" || slices.Contains(c.Endpoints, f.Endpoint))
	})
}

// connSet picks the index holding every connection of proxy and endpoint
// (either may be empty).
func (s *State) connSet(proxy, endpoint string) *sortedSet {
	switch {
	case proxy != "" && endpoint != "":
		a, b := s.connsByProxy[proxy], s.connsByEndpoint[endpoint]
		if b.len() < a.len() {
			return b
		}
		return a
	case proxy != "":
		return s.connsByProxy[proxy]
	case endpoint != "":
		return s.connsByEndpoint[endpoint]
	}
	return &s.connIDs
}

// Endpoint returns the endpoint with name.
func (s *State) Endpoint(name string) (*berthv1.Endpoint, bool) {
	e, ok := s.endpoints[name]
	return e, ok
}

// ListEndpoints lists endpoints by name; a non-empty proxyID keeps those
// the proxy serves.
func (s *State) ListEndpoints(proxyID string, after string, limit int) ([]*berthv1.Endpoint, string) {
	set := &s.endpointNames
	if proxyID != "" {
		set = s.endpointsByProxy[proxyID]
	}
	return page(set.after(after), limit, func(name string) (*berthv1.Endpoint, bool) {
		e, ok := s.endpoints[name]
		return e, ok
	})
}

// Move returns the move with id.
func (s *State) Move(id string) (*berthv1.Move, bool) {
	m, ok := s.moves[id]
	return m, ok
}

// MoveFilter narrows ListMoves; zero fields match everything.
type MoveFilter struct {
	// States matches any of these.
	States []berthv1.MoveState
	// ProxyID matches moves leaving or reaching the proxy.
	ProxyID string
}

// ListMoves lists moves, unfinished and finished history, by id.
func (s *State) ListMoves(f MoveFilter, after string, limit int) ([]*berthv1.Move, string) {
	set := &s.moveIDs
	if f.ProxyID != "" {
		set = s.movesByProxy[f.ProxyID]
	}
	return page(set.after(after), limit, func(id string) (*berthv1.Move, bool) {
		m := s.moves[id]
		return m, len(f.States) == 0 || slices.Contains(f.States, m.State)
	})
}

// Server returns the control-plane server with id.
func (s *State) Server(id string) (*berthv1.Server, bool) {
	v, ok := s.servers[id]
	return v, ok
}

// Servers returns every control-plane server, by id.
func (s *State) Servers() []*berthv1.Server {
	out := make([]*berthv1.Server, 0, len(s.servers))
	for _, v := range s.servers {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *berthv1.Server) int { return strings.Compare(a.Id, b.Id) })
	return out
}

// Counts is how many objects of each kind the registry holds.
type Counts struct {
	Proxies, Connections, Moves, Endpoints, Servers int
}

// Counts returns how many objects of each kind the registry holds.
func (s *State) Counts() Counts {
	return Counts{
		Proxies:     len(s.proxies),
		Connections: len(s.conns),
		Moves:       len(s.moves),
		Endpoints:   len(s.endpoints),
		Servers:     len(s.servers),
	}
}

// page collects the objects of keys that get accepts, at most limit of them
// when limit > 0, and says whether another accepted one follows.
func page[T any](keys iter.Seq[string], limit int, get func(string) (T, bool)) (out []T, next string) {
	var last string
	for k := range keys {
		v, ok := get(k)
		if !ok {
			continue
		}
		if limit > 0 && len(out) == limit {
			return out, last
		}
		out = append(out, v)
		last = k
	}
	return out, ""
}

// SnapshotEvents returns an UPSERT event for every object that
// fsm.Match(topics, filter, ev) accepts: proxies, then connections, moves,
// endpoints and servers, each by id. An event's index is the object's
// version and its region is set as in live events, so a subscriber can
// start from these and continue with the live events after the snapshot's
// applied index. When the filter names a proxy or an endpoint, only that
// index is walked.
func (s *State) SnapshotEvents(topics []berthv1.Topic, filter *berthv1.EventFilter) []*berthv1.Event {
	wants := func(probe *berthv1.Event) bool {
		for _, t := range topics {
			if matchTopic(t, probe) {
				return true
			}
		}
		return false
	}
	var out []*berthv1.Event
	add := func(ev *berthv1.Event) {
		ev.Op = berthv1.EventOp_EVENT_OP_UPSERT
		if Match(topics, filter, ev) {
			out = append(out, ev)
		}
	}
	pid, ep := filter.GetProxyId(), filter.GetEndpoint()

	// The index narrowing below only drops objects Match would refuse:
	// proxies and moves never touch an endpoint, and each index holds
	// exactly the objects touching its key.
	if ep == "" && wants(&berthv1.Event{Object: &berthv1.Event_Proxy{Proxy: &berthv1.Proxy{}}}) {
		ids := s.proxyIDs.after("")
		if pid != "" {
			ids = slices.Values([]string{pid})
		}
		for id := range ids {
			if p := s.proxies[id]; p != nil {
				add(&berthv1.Event{Index: p.Version, Region: p.Region, Object: &berthv1.Event_Proxy{Proxy: p}})
			}
		}
	}
	if wants(&berthv1.Event{Object: &berthv1.Event_Connection{Connection: &berthv1.Connection{}}}) {
		for id := range s.connSet(pid, ep).after("") {
			c := s.conns[id]
			add(&berthv1.Event{Index: c.Version, Region: s.regionOf(c.ProxyId), Object: &berthv1.Event_Connection{Connection: c}})
		}
	}
	if ep == "" && wants(&berthv1.Event{Object: &berthv1.Event_Move{Move: &berthv1.Move{}}}) {
		set := &s.moveIDs
		if pid != "" {
			set = s.movesByProxy[pid]
		}
		for id := range set.after("") {
			m := s.moves[id]
			add(&berthv1.Event{Index: m.Version, Region: s.regionOf(m.FromProxyId), Object: &berthv1.Event_Move{Move: m}})
		}
	}
	if wants(&berthv1.Event{Object: &berthv1.Event_Endpoint{Endpoint: &berthv1.Endpoint{}}}) {
		var names iter.Seq[string]
		switch {
		case ep != "":
			names = slices.Values([]string{ep})
		case pid != "":
			names = s.endpointsByProxy[pid].after("")
		default:
			names = s.endpointNames.after("")
		}
		for name := range names {
			if e := s.endpoints[name]; e != nil {
				add(&berthv1.Event{Index: e.Version, Object: &berthv1.Event_Endpoint{Endpoint: e}})
			}
		}
	}
	if wants(&berthv1.Event{Object: &berthv1.Event_Server{Server: &berthv1.Server{}}}) {
		for _, v := range s.Servers() {
			add(&berthv1.Event{Index: v.Version, Object: &berthv1.Event_Server{Server: v}})
		}
	}
	return out
}

// ConnectionCount is how many connections proxy id holds, in O(1).
func (s *State) ConnectionCount(proxyID string) int {
	return s.connsByProxy[proxyID].len()
}

// AdminToken returns the admin token record with id.
func (s *State) AdminToken(id string) (*berthv1.AdminToken, bool) {
	t, ok := s.tokens[id]
	return t, ok
}

// AdminTokens returns every admin token record, sorted by id.
func (s *State) AdminTokens() []*berthv1.AdminToken {
	out := values(s.tokens)
	sortByID(out)
	return out
}
