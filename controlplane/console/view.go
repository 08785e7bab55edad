package console

import (
	"cmp"
	"slices"
	"strings"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// The JSON the page reads. Field names are short and enums are their bare
// names ("ACTIVE", not "PROXY_STATUS_ACTIVE"); the page builds its DOM from
// these with textContent only, so no value is ever parsed as markup.

// registry is the registry part of the page's state at one index: what a
// Watch snapshot holds.
type registry struct {
	Index       uint64         `json:"index"`
	Proxies     []proxyView    `json:"proxies"`
	Connections []connView     `json:"connections"`
	Endpoints   []endpointView `json:"endpoints"`
	Moves       []moveView     `json:"moves"`
	Servers     []serverView   `json:"servers"`
}

// snapshotView is the answer of GET /ui/api/snapshot: the registry at an
// index plus what is not in the registry (Raft status, the planner's
// targets, load and ring-hash states from the leader's memory).
type snapshotView struct {
	registry
	Cluster *clusterView `json:"cluster"`
	Derived *derivedView `json:"derived"`
}

type proxyView struct {
	ID         string            `json:"id"`
	Region     string            `json:"region"`
	Zone       string            `json:"zone"`
	Status     string            `json:"status"`
	Admin      string            `json:"admin"`
	Health     string            `json:"health"`
	Weight     uint32            `json:"weight"`
	Labels     map[string]string `json:"labels,omitempty"`
	Tunnel     string            `json:"tunnel,omitempty"`
	Downstream string            `json:"downstream,omitempty"`
	Version    uint64            `json:"version"`
}

type connView struct {
	ID        string   `json:"id"`
	Proxy     string   `json:"proxy"`
	State     string   `json:"state"`
	Endpoints []string `json:"endpoints,omitempty"`
}

type endpointView struct {
	Name        string   `json:"name"`
	Connections uint32   `json:"connections"`
	Proxies     []string `json:"proxies"`
	Version     uint64   `json:"version"`
}

type moveView struct {
	ID          string `json:"id"`
	Connection  string `json:"connection"`
	From        string `json:"from"`
	To          string `json:"to"`
	State       string `json:"state"`
	Reason      string `json:"reason,omitempty"`
	AbortReason string `json:"abortReason,omitempty"`
	CreatedMs   int64  `json:"createdMs"`
	DeadlineMs  int64  `json:"deadlineMs,omitempty"`
	Version     uint64 `json:"version"`
}

type serverView struct {
	ID   string `json:"id"`
	Raft string `json:"raft"`
	GRPC string `json:"grpc"`
}

// eventView is one registry event; exactly one object field is set.
type eventView struct {
	Index      uint64        `json:"index"`
	Op         string        `json:"op"` // "upsert" or "delete"
	Proxy      *proxyView    `json:"proxy,omitempty"`
	Connection *connView     `json:"connection,omitempty"`
	Move       *moveView     `json:"move,omitempty"`
	Endpoint   *endpointView `json:"endpoint,omitempty"`
	Server     *serverView   `json:"server,omitempty"`
}

type clusterView struct {
	Leader        string       `json:"leader"`
	LeaderAddress string       `json:"leaderAddress"`
	Term          uint64       `json:"term"`
	CommitIndex   uint64       `json:"commitIndex"`
	AppliedIndex  uint64       `json:"appliedIndex"`
	ServedBy      string       `json:"servedBy"`
	Servers       []memberView `json:"servers"`
}

type memberView struct {
	ID            string `json:"id"`
	Raft          string `json:"raft"`
	GRPC          string `json:"grpc"`
	Suffrage      string `json:"suffrage"`
	State         string `json:"state"`
	Healthy       bool   `json:"healthy"`
	Term          uint64 `json:"term"`
	CommitIndex   uint64 `json:"commitIndex"`
	AppliedIndex  uint64 `json:"appliedIndex"`
	LastContactMs int64  `json:"lastContactMs"`
	Error         string `json:"error,omitempty"`
}

// derivedView is what the registry's events do not carry: each
// schedulable proxy's balance target, its last load sample, and each
// endpoint's ring-hash aggregate per proxy.
type derivedView struct {
	Targets      map[string]float64           `json:"targets"`
	Load         map[string]loadView          `json:"load"`
	Connectivity map[string]map[string]string `json:"connectivity"` // endpoint -> proxy -> state
}

type loadView struct {
	Connections   uint32 `json:"connections"`
	ActiveStreams uint32 `json:"activeStreams"`
	CPUMillicores uint32 `json:"cpuMillicores"`
	MemoryBytes   uint64 `json:"memoryBytes"`
	SentMs        int64  `json:"sentMs"`
}

// enumName is an enum value's name without its type prefix, or "" for the
// zero value.
func enumName(name, prefix string) string {
	if strings.HasSuffix(name, "_UNSPECIFIED") {
		return ""
	}
	return strings.TrimPrefix(name, prefix)
}

func newProxyView(p *berthv1.Proxy) proxyView {
	return proxyView{
		ID: p.GetId(), Region: p.GetRegion(), Zone: p.GetZone(),
		Status:     enumName(p.GetStatus().String(), "PROXY_STATUS_"),
		Admin:      enumName(p.GetAdminState().String(), "ADMIN_STATE_"),
		Health:     enumName(p.GetHealth().String(), "HEALTH_"),
		Weight:     max(p.GetCapacityWeight(), 1),
		Labels:     p.GetLabels(),
		Tunnel:     p.GetAddresses().GetTunnel(),
		Downstream: p.GetAddresses().GetDownstream(),
		Version:    p.GetVersion(),
	}
}

func newConnView(c *berthv1.Connection) connView {
	return connView{ID: c.GetId(), Proxy: c.GetProxyId(), State: enumName(c.GetState().String(), "CONNECTION_STATE_"), Endpoints: c.GetEndpoints()}
}

func newEndpointView(e *berthv1.Endpoint) endpointView {
	v := endpointView{Name: e.GetName(), Connections: e.GetConnectionCount(), Proxies: e.GetProxyIds(), Version: e.GetVersion()}
	if v.Proxies == nil {
		v.Proxies = []string{}
	}
	return v
}

func newMoveView(m *berthv1.Move) moveView {
	return moveView{
		ID: m.GetId(), Connection: m.GetConnectionId(), From: m.GetFromProxyId(), To: m.GetToProxyId(),
		State:  enumName(m.GetState().String(), "MOVE_STATE_"),
		Reason: m.GetReason(), AbortReason: m.GetAbortReason(),
		CreatedMs: m.GetCreatedUnixMs(), DeadlineMs: m.GetDeadlineUnixMs(), Version: m.GetVersion(),
	}
}

func newServerView(s *berthv1.Server) serverView {
	return serverView{ID: s.GetId(), Raft: s.GetRaftAddress(), GRPC: s.GetGrpcAddress()}
}

// newEventView converts ev; ok is false for an event with no object this
// page shows.
func newEventView(ev *berthv1.Event) (v eventView, ok bool) {
	v = eventView{Index: ev.GetIndex(), Op: "upsert"}
	if ev.GetOp() == berthv1.EventOp_EVENT_OP_DELETE {
		v.Op = "delete"
	}
	switch o := ev.GetObject().(type) {
	case *berthv1.Event_Proxy:
		p := newProxyView(o.Proxy)
		v.Proxy = &p
	case *berthv1.Event_Connection:
		c := newConnView(o.Connection)
		v.Connection = &c
	case *berthv1.Event_Move:
		m := newMoveView(o.Move)
		v.Move = &m
	case *berthv1.Event_Endpoint:
		e := newEndpointView(o.Endpoint)
		v.Endpoint = &e
	case *berthv1.Event_Server:
		s := newServerView(o.Server)
		v.Server = &s
	default:
		return v, false
	}
	return v, true
}

// finished reports whether a move has ended (COMPLETED or ABORTED).
func finished(m moveView) bool { return m.State == "COMPLETED" || m.State == "ABORTED" }

// newRegistry turns a Watch snapshot's events into the page's registry,
// keeping every move in flight but only the keepFinished most recently
// changed finished ones (the registry keeps thousands as history).
func newRegistry(index uint64, events []*berthv1.Event, keepFinished int) registry {
	r := registry{Index: index, Proxies: []proxyView{}, Connections: []connView{}, Endpoints: []endpointView{}, Moves: []moveView{}, Servers: []serverView{}}
	var done []moveView
	for _, ev := range events {
		if ev.GetOp() == berthv1.EventOp_EVENT_OP_DELETE {
			continue // a snapshot holds only upserts; be safe anyway
		}
		v, ok := newEventView(ev)
		switch {
		case !ok:
		case v.Proxy != nil:
			r.Proxies = append(r.Proxies, *v.Proxy)
		case v.Connection != nil:
			r.Connections = append(r.Connections, *v.Connection)
		case v.Endpoint != nil:
			r.Endpoints = append(r.Endpoints, *v.Endpoint)
		case v.Server != nil:
			r.Servers = append(r.Servers, *v.Server)
		case v.Move != nil && finished(*v.Move):
			done = append(done, *v.Move)
		case v.Move != nil:
			r.Moves = append(r.Moves, *v.Move)
		}
	}
	slices.SortFunc(done, func(a, b moveView) int { return cmp.Or(cmp.Compare(b.Version, a.Version), strings.Compare(a.ID, b.ID)) })
	r.Moves = append(r.Moves, done[:min(len(done), keepFinished)]...)
	return r
}

func newClusterView(resp *berthv1.ClusterStatusResponse) *clusterView {
	c := &clusterView{
		Leader: resp.GetLeaderId(), LeaderAddress: resp.GetLeaderAddress(), Term: resp.GetTerm(),
		CommitIndex: resp.GetCommitIndex(), AppliedIndex: resp.GetAppliedIndex(), ServedBy: resp.GetServedBy(),
		Servers: []memberView{},
	}
	for _, s := range resp.GetServers() {
		c.Servers = append(c.Servers, memberView{
			ID: s.GetId(), Raft: s.GetRaftAddress(), GRPC: s.GetGrpcAddress(),
			Suffrage: enumName(s.GetSuffrage().String(), "SERVER_SUFFRAGE_"),
			State:    s.GetState(), Healthy: s.GetHealthy(), Term: s.GetTerm(),
			CommitIndex: s.GetCommitIndex(), AppliedIndex: s.GetAppliedIndex(),
			LastContactMs: s.GetLastContactMs(), Error: s.GetError(),
		})
	}
	return c
}
