package fsm

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// harness applies commands to a State with increasing indexes and times,
// and checks the state's invariants after every command.
type harness struct {
	t     *testing.T
	s     *State
	index uint64
	now   int64
}

const testDeadline = int64(1) << 50

func newHarness(t *testing.T) *harness {
	t.Helper()
	return &harness{t: t, s: NewState(), now: 1_000_000}
}

// do applies cmd at the next index (and, unless cmd sets one, the next
// time) and checks the invariants.
func (h *harness) do(cmd *berthv1.Command) (*berthv1.CommandResult, []*berthv1.Event) {
	h.t.Helper()
	h.index++
	h.now += 1000
	if cmd != nil && cmd.NowUnixMs == 0 {
		cmd.NowUnixMs = h.now
	}
	res, evs := h.s.Apply(h.index, cmd)
	if res == nil {
		h.t.Fatalf("index %d: nil result", h.index)
	}
	if res.Index != h.index {
		h.t.Fatalf("result index %d, want %d", res.Index, h.index)
	}
	for _, ev := range evs {
		if ev.Index != h.index {
			h.t.Fatalf("event index %d, want %d: %v", ev.Index, h.index, ev)
		}
	}
	if err := checkInvariants(h.s); err != nil {
		h.t.Fatalf("index %d: invariant broken after %v: %v", h.index, cmd, err)
	}
	return res, evs
}

// ok applies cmd and fails the test unless it is OK without event errors.
func (h *harness) ok(cmd *berthv1.Command) []*berthv1.Event {
	h.t.Helper()
	res, evs := h.do(cmd)
	if res.Code != berthv1.ResultCode_RESULT_CODE_OK || len(res.EventErrors) > 0 {
		h.t.Fatalf("index %d: %v: got %v %q %v", h.index, cmd, res.Code, res.Message, res.EventErrors)
	}
	return evs
}

// refused applies cmd, wants code, no events and an unchanged state.
func (h *harness) refused(cmd *berthv1.Command, code berthv1.ResultCode) *berthv1.CommandResult {
	h.t.Helper()
	before := stateBytes(h.t, h.s)
	res, evs := h.do(cmd)
	if res.Code != code {
		h.t.Fatalf("%v: got %v %q, want %v", cmd, res.Code, res.Message, code)
	}
	if res.Message == "" {
		h.t.Errorf("%v: refused without a message", cmd)
	}
	if len(evs) != 0 {
		h.t.Errorf("%v: refused but emitted %d events", cmd, len(evs))
	}
	if after := stateBytes(h.t, h.s); !bytes.Equal(before, after) {
		h.t.Errorf("%v: refused but the state changed", cmd)
	}
	return res
}

func (h *harness) proxy(id string) *berthv1.Proxy {
	h.t.Helper()
	p, ok := h.s.Proxy(id)
	if !ok {
		h.t.Fatalf("proxy %q missing", id)
	}
	return p
}

func (h *harness) conn(id string) *berthv1.Connection {
	h.t.Helper()
	c, ok := h.s.Connection(id)
	if !ok {
		h.t.Fatalf("connection %q missing", id)
	}
	return c
}

func (h *harness) move(id string) *berthv1.Move {
	h.t.Helper()
	m, ok := h.s.Move(id)
	if !ok {
		h.t.Fatalf("move %q missing", id)
	}
	return m
}

// stateBytes is the snapshot encoding of s: equal bytes, equal states
// (endpoints included).
func stateBytes(t testing.TB, s *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := s.capture(0).writeTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Command builders.

func cmdOf(k any) *berthv1.Command {
	c := &berthv1.Command{}
	switch k := k.(type) {
	case *berthv1.RegisterProxyCommand:
		c.Kind = &berthv1.Command_RegisterProxy{RegisterProxy: k}
	case *berthv1.SetProxyAdminStateCommand:
		c.Kind = &berthv1.Command_SetProxyAdminState{SetProxyAdminState: k}
	case *berthv1.SetProxyHealthCommand:
		c.Kind = &berthv1.Command_SetProxyHealth{SetProxyHealth: k}
	case *berthv1.DeregisterProxyCommand:
		c.Kind = &berthv1.Command_DeregisterProxy{DeregisterProxy: k}
	case *berthv1.ConnectionEventsCommand:
		c.Kind = &berthv1.Command_ConnectionEvents{ConnectionEvents: k}
	case *berthv1.ReconcileProxyCommand:
		c.Kind = &berthv1.Command_ReconcileProxy{ReconcileProxy: k}
	case *berthv1.CreateMovesCommand:
		c.Kind = &berthv1.Command_CreateMoves{CreateMoves: k}
	case *berthv1.UpdateMoveCommand:
		c.Kind = &berthv1.Command_UpdateMove{UpdateMove: k}
	case *berthv1.UpsertServerCommand:
		c.Kind = &berthv1.Command_UpsertServer{UpsertServer: k}
	case *berthv1.RemoveServerCommand:
		c.Kind = &berthv1.Command_RemoveServer{RemoveServer: k}
	case *berthv1.RemoveProxyCommand:
		c.Kind = &berthv1.Command_RemoveProxy{RemoveProxy: k}
	default:
		panic(fmt.Sprintf("cmdOf(%T)", k))
	}
	return c
}

func registerProxy(id, region string) *berthv1.Command {
	return cmdOf(&berthv1.RegisterProxyCommand{Proxy: &berthv1.Proxy{Id: id, Region: region}})
}

func registerFull(p *berthv1.Proxy) *berthv1.Command {
	return cmdOf(&berthv1.RegisterProxyCommand{Proxy: p})
}

func setAdmin(id string, st berthv1.AdminState) *berthv1.Command {
	return cmdOf(&berthv1.SetProxyAdminStateCommand{ProxyId: id, AdminState: st})
}

func setHealth(id string, h berthv1.Health, ifVersion uint64) *berthv1.Command {
	return cmdOf(&berthv1.SetProxyHealthCommand{ProxyId: id, Health: h, IfVersion: ifVersion})
}

func deregister(id string) *berthv1.Command {
	return cmdOf(&berthv1.DeregisterProxyCommand{ProxyId: id})
}

func connEvents(proxy string, evs ...*berthv1.ConnectionEvent) *berthv1.Command {
	return cmdOf(&berthv1.ConnectionEventsCommand{ProxyId: proxy, Events: evs})
}

func conn(id string, endpoints ...string) *berthv1.Connection {
	return &berthv1.Connection{Id: id, Slot: "slot-" + id, AgentId: "agent", Endpoints: endpoints}
}

func openEv(c *berthv1.Connection) *berthv1.ConnectionEvent {
	return &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{Connection: c}}}
}

func openMoveEv(c *berthv1.Connection, moveID string) *berthv1.ConnectionEvent {
	return &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{Connection: c, MoveId: moveID}}}
}

func closeEv(id string) *berthv1.ConnectionEvent {
	return &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Close{Close: &berthv1.ConnectionClose{ConnectionId: id}}}
}

func open(proxy string, conns ...*berthv1.Connection) *berthv1.Command {
	evs := make([]*berthv1.ConnectionEvent, len(conns))
	for i, c := range conns {
		evs[i] = openEv(c)
	}
	return connEvents(proxy, evs...)
}

func reconcile(proxy string, conns ...*berthv1.Connection) *berthv1.Command {
	return cmdOf(&berthv1.ReconcileProxyCommand{ProxyId: proxy, Connections: conns})
}

func mv(id, connID, from, to string) *berthv1.Move {
	return &berthv1.Move{Id: id, ConnectionId: connID, FromProxyId: from, ToProxyId: to, DeadlineUnixMs: testDeadline, Reason: "balance"}
}

func createMoves(moves ...*berthv1.Move) *berthv1.Command {
	return cmdOf(&berthv1.CreateMovesCommand{Moves: moves})
}

func updateMove(id string, st berthv1.MoveState, newConn, reason string) *berthv1.Command {
	return cmdOf(&berthv1.UpdateMoveCommand{MoveId: id, State: st, NewConnectionId: newConn, AbortReason: reason})
}

func upsertServer(id, raftAddr, grpcAddr string) *berthv1.Command {
	return cmdOf(&berthv1.UpsertServerCommand{Server: &berthv1.Server{Id: id, RaftAddress: raftAddr, GrpcAddress: grpcAddr}})
}

func removeServer(id string) *berthv1.Command {
	return cmdOf(&berthv1.RemoveServerCommand{ServerId: id})
}

// Shorthands for enum values.
const (
	codeOK           = berthv1.ResultCode_RESULT_CODE_OK
	codeInvalid      = berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT
	codeNotFound     = berthv1.ResultCode_RESULT_CODE_NOT_FOUND
	codePrecondition = berthv1.ResultCode_RESULT_CODE_FAILED_PRECONDITION
	codeExists       = berthv1.ResultCode_RESULT_CODE_ALREADY_EXISTS

	healthy   = berthv1.Health_HEALTH_HEALTHY
	unhealthy = berthv1.Health_HEALTH_UNHEALTHY
	down      = berthv1.Health_HEALTH_DOWN

	adminNone     = berthv1.AdminState_ADMIN_STATE_NONE
	adminCordoned = berthv1.AdminState_ADMIN_STATE_CORDONED
	adminDraining = berthv1.AdminState_ADMIN_STATE_DRAINING

	statusActive    = berthv1.ProxyStatus_PROXY_STATUS_ACTIVE
	statusCordoned  = berthv1.ProxyStatus_PROXY_STATUS_CORDONED
	statusDraining  = berthv1.ProxyStatus_PROXY_STATUS_DRAINING
	statusUnhealthy = berthv1.ProxyStatus_PROXY_STATUS_UNHEALTHY
	statusDown      = berthv1.ProxyStatus_PROXY_STATUS_DOWN

	connActive = berthv1.ConnectionState_CONNECTION_STATE_ACTIVE
	connMoving = berthv1.ConnectionState_CONNECTION_STATE_MOVING

	movePending   = berthv1.MoveState_MOVE_STATE_PENDING
	moveAccepted  = berthv1.MoveState_MOVE_STATE_ACCEPTED
	moveCompleted = berthv1.MoveState_MOVE_STATE_COMPLETED
	moveAborted   = berthv1.MoveState_MOVE_STATE_ABORTED

	upsert = berthv1.EventOp_EVENT_OP_UPSERT
	del    = berthv1.EventOp_EVENT_OP_DELETE
)

// eventKeys renders events compactly ("UPSERT conn c1") to compare order.
func eventKeys(evs []*berthv1.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		op := "UPSERT"
		if ev.Op == del {
			op = "DELETE"
		}
		var obj string
		switch o := ev.Object.(type) {
		case *berthv1.Event_Proxy:
			obj = "proxy " + o.Proxy.Id
		case *berthv1.Event_Connection:
			obj = "conn " + o.Connection.Id
		case *berthv1.Event_Move:
			obj = "move " + o.Move.Id + " " + strings.TrimPrefix(o.Move.State.String(), "MOVE_STATE_")
		case *berthv1.Event_Endpoint:
			obj = "endpoint " + o.Endpoint.Name
		case *berthv1.Event_Server:
			obj = "server " + o.Server.Id
		}
		out[i] = op + " " + obj
	}
	return out
}

// checkInvariants recomputes everything derived in s from the primary maps
// and checks the cross-object rules Apply must keep.
func checkInvariants(s *State) error {
	if len(s.undo) != 0 || len(s.dirty) != 0 || s.events != nil {
		return fmt.Errorf("scratch left over: undo %d dirty %d events %d", len(s.undo), len(s.dirty), len(s.events))
	}
	if err := sameKeys("proxyIDs", &s.proxyIDs, s.proxies); err != nil {
		return err
	}
	if err := sameKeys("connIDs", &s.connIDs, s.conns); err != nil {
		return err
	}
	if err := sameKeys("moveIDs", &s.moveIDs, s.moves); err != nil {
		return err
	}
	if err := sameKeys("endpointNames", &s.endpointNames, s.endpoints); err != nil {
		return err
	}
	for id, p := range s.proxies {
		if p.Id != id {
			return fmt.Errorf("proxy %q stored as %q", p.Id, id)
		}
		if want := deriveStatus(p.AdminState, p.Health); p.Status != want {
			return fmt.Errorf("proxy %q status %v, want %v", id, p.Status, want)
		}
		if p.CapacityWeight == 0 {
			return fmt.Errorf("proxy %q weight 0", id)
		}
	}

	byProxy := map[string][]string{}
	byEndpoint := map[string][]string{}
	epProxies := map[string]map[string]int{}
	for id, c := range s.conns {
		if c.Id != id {
			return fmt.Errorf("connection %q stored as %q", c.Id, id)
		}
		p := s.proxies[c.ProxyId]
		if p == nil {
			return fmt.Errorf("connection %q on unknown proxy %q", id, c.ProxyId)
		}
		if p.Health == down {
			return fmt.Errorf("connection %q on DOWN proxy %q", id, c.ProxyId)
		}
		byProxy[c.ProxyId] = append(byProxy[c.ProxyId], id)
		for _, e := range c.Endpoints {
			byEndpoint[e] = append(byEndpoint[e], id)
			if epProxies[e] == nil {
				epProxies[e] = map[string]int{}
			}
			epProxies[e][c.ProxyId]++
		}
		switch c.State {
		case connActive:
			if c.MoveId != "" {
				return fmt.Errorf("ACTIVE connection %q has move %q", id, c.MoveId)
			}
		case connMoving:
			m := s.moves[c.MoveId]
			if m == nil || !unfinished(m) || m.ConnectionId != id || m.FromProxyId != c.ProxyId {
				return fmt.Errorf("MOVING connection %q: bad move %q: %v", id, c.MoveId, m)
			}
		default:
			return fmt.Errorf("connection %q in state %v", id, c.State)
		}
	}
	if err := sameIndex("connsByProxy", s.connsByProxy, byProxy); err != nil {
		return err
	}
	if err := sameIndex("connsByEndpoint", s.connsByEndpoint, byEndpoint); err != nil {
		return err
	}
	if !maps.EqualFunc(s.epProxies, epProxies, maps.Equal) {
		return fmt.Errorf("epProxies %v, want %v", s.epProxies, epProxies)
	}
	epByProxy := map[string][]string{}
	proxiesByEp := map[string][]string{}
	for e, m := range epProxies {
		for p := range m {
			epByProxy[p] = append(epByProxy[p], e)
			proxiesByEp[e] = append(proxiesByEp[e], p)
		}
	}
	if err := sameIndex("proxiesByEndpoint", s.proxiesByEndpoint, proxiesByEp); err != nil {
		return err
	}
	if err := sameIndex("endpointsByProxy", s.endpointsByProxy, epByProxy); err != nil {
		return err
	}
	if len(s.endpoints) != len(byEndpoint) {
		return fmt.Errorf("%d endpoints, want %d", len(s.endpoints), len(byEndpoint))
	}
	for name, ids := range byEndpoint {
		e := s.endpoints[name]
		if e == nil {
			return fmt.Errorf("endpoint %q missing", name)
		}
		proxies := slices.Sorted(maps.Keys(epProxies[name]))
		if e.Name != name || int(e.ConnectionCount) != len(ids) || !slices.Equal(e.ProxyIds, proxies) {
			return fmt.Errorf("endpoint %v, want %q count %d proxies %v", e, name, len(ids), proxies)
		}
	}

	movesByProxy := map[string][]string{}
	accepted := map[string]string{}
	var finished []string
	for id, m := range s.moves {
		if m.Id != id {
			return fmt.Errorf("move %q stored as %q", m.Id, id)
		}
		movesByProxy[m.FromProxyId] = append(movesByProxy[m.FromProxyId], id)
		movesByProxy[m.ToProxyId] = append(movesByProxy[m.ToProxyId], id)
		switch m.State {
		case movePending, moveAccepted:
			c := s.conns[m.ConnectionId]
			if c == nil || c.MoveId != id || c.State != connMoving {
				return fmt.Errorf("unfinished move %q: connection %v", id, c)
			}
			if s.proxies[m.ToProxyId] == nil {
				return fmt.Errorf("unfinished move %q to unknown proxy", id)
			}
			if m.State == moveAccepted {
				// The new connection is ACTIVE at the target, or has moved
				// on: MOVING away from the target by another move, or gone
				// once that move completed.
				nc := s.conns[m.NewConnectionId]
				if nc != nil && (nc.ProxyId != m.ToProxyId || (nc.State != connActive && (nc.MoveId == "" || nc.MoveId == id))) {
					return fmt.Errorf("ACCEPTED move %q: new connection %v", id, nc)
				}
				if prev, dup := accepted[m.NewConnectionId]; dup {
					return fmt.Errorf("connection %q is the new connection of %q and %q", m.NewConnectionId, prev, id)
				}
				accepted[m.NewConnectionId] = id
			}
		case moveCompleted, moveAborted:
			finished = append(finished, finishedKey(m))
		default:
			return fmt.Errorf("move %q in state %v", id, m.State)
		}
	}
	// A move's from and to are distinct, so each appears once per proxy.
	if err := sameIndex("movesByProxy", s.movesByProxy, movesByProxy); err != nil {
		return err
	}
	if !maps.Equal(s.acceptedBy, accepted) {
		return fmt.Errorf("acceptedBy %v, want %v", s.acceptedBy, accepted)
	}
	slices.Sort(finished)
	if got := s.finished.keys(); !slices.Equal(got, finished) {
		return fmt.Errorf("finished index has %d keys, want %d", len(got), len(finished))
	}
	if len(finished) > MaxFinishedMoves {
		return fmt.Errorf("%d finished moves kept, at most %d", len(finished), MaxFinishedMoves)
	}
	for id, v := range s.servers {
		if v.Id != id {
			return fmt.Errorf("server %q stored as %q", v.Id, id)
		}
	}
	return nil
}

func sameKeys[V any](name string, set *sortedSet, m map[string]V) error {
	want := slices.Sorted(maps.Keys(m))
	if got := set.keys(); !slices.Equal(got, want) {
		return fmt.Errorf("%s: %d keys, want %d", name, len(got), len(want))
	}
	if set.len() != len(want) {
		return fmt.Errorf("%s: len %d, want %d", name, set.len(), len(want))
	}
	return nil
}

func sameIndex(name string, x setIndex, want map[string][]string) error {
	if len(x) != len(want) {
		return fmt.Errorf("%s: %d keys, want %d", name, len(x), len(want))
	}
	for k, ids := range want {
		slices.Sort(ids)
		if got := x[k].keys(); !slices.Equal(got, ids) {
			return fmt.Errorf("%s[%q]: %v, want %v", name, k, got, ids)
		}
	}
	return nil
}
