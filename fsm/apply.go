package fsm

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"google.golang.org/protobuf/proto"
)

// Apply applies cmd, the entry at Raft log index, and returns the result and
// the events it caused, in order. It is the whole command processor:
// FSM.Apply only decodes the log entry and calls it, and tests replay
// commands through it directly.
//
// Apply is deterministic: the same state, index and command give the same
// result, events and state on every replica. Time comes only from
// cmd.now_unix_ms. A refused command (result code other than OK) changes
// nothing and returns no events; a ConnectionEventsCommand or
// ReconcileProxyCommand may instead refuse single entries, listed in the
// result's event_errors, and apply the rest. Apply never panics on any
// input; a bug that would panic is rolled back and reported with code
// RESULT_CODE_UNSPECIFIED.
//
// A command whose request_id the state remembers (see requestTable) is not
// applied again: Apply returns the result it had the first time, and no
// events. Only applied (OK) commands are remembered.
//
// The returned result, events and the objects they carry are shared with
// the state and must not be modified.
func (s *State) Apply(index uint64, cmd *berthv1.Command) (*berthv1.CommandResult, []*berthv1.Event) {
	// An oversized id is refused by validation, so it is never added.
	id := cmd.GetRequestId()
	if first, ok := s.requests.lookup(id); ok {
		return first, nil
	}
	res, events := s.apply(index, cmd)
	if res.Code == berthv1.ResultCode_RESULT_CODE_OK {
		// A refusal changed nothing; its resend may as well apply.
		s.requests.add(id, cmd.GetNowUnixMs(), res)
	}
	return res, events
}

// apply is Apply without the request table.
func (s *State) apply(index uint64, cmd *berthv1.Command) (res *berthv1.CommandResult, events []*berthv1.Event) {
	res = &berthv1.CommandResult{Index: index}
	if err := ValidateCommand(cmd); err != nil {
		res.Code, res.Message = codeAndMessage(err)
		return res, nil
	}
	if b, ok := cmd.GetKind().(*berthv1.Command_Batch); ok {
		return s.applyBatch(index, b.Batch.GetCommands())
	}
	s.index, s.now, s.events = index, cmd.GetNowUnixMs(), nil
	defer func() {
		if r := recover(); r != nil {
			// A bug, not bad input. Crashing would crash every replica on
			// this same entry, again after each restart; undo instead.
			s.rollback(0)
			clear(s.dirty)
			res = &berthv1.CommandResult{
				Index:   index,
				Code:    berthv1.ResultCode_RESULT_CODE_UNSPECIFIED,
				Message: fmt.Sprintf("internal error applying command: %v", r),
			}
			events = nil
		}
		clear(s.undo)
		s.undo = s.undo[:0]
		if cap(s.undo) > 1<<16 {
			s.undo = nil
		}
		s.events = nil
	}()
	if err := s.dispatch(cmd, res); err != nil {
		s.rollback(0)
		clear(s.dirty)
		res.Code, res.Message = codeAndMessage(err)
		return res, nil
	}
	s.pruneFinishedMoves()
	s.flushEndpoints()
	res.Code = berthv1.ResultCode_RESULT_CODE_OK
	return res, s.events
}

// applyBatch applies each command of a batch on its own, in order, at the
// batch's index. The batch itself succeeds; its results say how each
// command went.
func (s *State) applyBatch(index uint64, cmds []*berthv1.Command) (*berthv1.CommandResult, []*berthv1.Event) {
	res := &berthv1.CommandResult{Index: index, Code: berthv1.ResultCode_RESULT_CODE_OK, Results: make([]*berthv1.CommandResult, len(cmds))}
	var events []*berthv1.Event
	for i, sub := range cmds {
		r, evs := s.Apply(index, sub)
		res.Results[i] = r
		events = append(events, evs...)
	}
	return res, events
}

func (s *State) dispatch(cmd *berthv1.Command, res *berthv1.CommandResult) error {
	switch k := cmd.GetKind().(type) {
	case *berthv1.Command_RegisterProxy:
		return s.registerProxy(k.RegisterProxy.GetProxy())
	case *berthv1.Command_SetProxyAdminState:
		return s.setAdminState(k.SetProxyAdminState.GetProxyId(), k.SetProxyAdminState.GetAdminState())
	case *berthv1.Command_SetProxyHealth:
		return s.setHealth(k.SetProxyHealth)
	case *berthv1.Command_DeregisterProxy:
		return s.deregisterProxy(k.DeregisterProxy.GetProxyId())
	case *berthv1.Command_RemoveProxy:
		return s.removeProxy(k.RemoveProxy.GetProxyId())
	case *berthv1.Command_ConnectionEvents:
		return s.connectionEvents(k.ConnectionEvents, res)
	case *berthv1.Command_ReconcileProxy:
		return s.reconcileProxy(k.ReconcileProxy, res)
	case *berthv1.Command_CreateMoves:
		return s.createMoves(k.CreateMoves.GetMoves())
	case *berthv1.Command_UpdateMove:
		return s.updateMove(k.UpdateMove)
	case *berthv1.Command_UpsertServer:
		return s.upsertServer(k.UpsertServer.GetServer())
	case *berthv1.Command_RemoveServer:
		return s.removeServer(k.RemoveServer.GetServerId())
	case *berthv1.Command_UpsertAdminToken:
		t := proto.Clone(k.UpsertAdminToken.GetToken()).(*berthv1.AdminToken)
		t.Version = s.index
		s.putToken(t)
		return nil
	case *berthv1.Command_RevokeAdminToken:
		id := k.RevokeAdminToken.GetTokenId()
		if s.tokens[id] == nil {
			return notFound("revoke_admin_token.token_id: no token %q", id)
		}
		s.delToken(id)
		return nil
	}
	return invalid("command: no kind set")
}

// deriveStatus is the one status operators see: health wins, then the
// admin state.
func deriveStatus(admin berthv1.AdminState, health berthv1.Health) berthv1.ProxyStatus {
	switch health {
	case berthv1.Health_HEALTH_DOWN:
		return berthv1.ProxyStatus_PROXY_STATUS_DOWN
	case berthv1.Health_HEALTH_UNHEALTHY:
		return berthv1.ProxyStatus_PROXY_STATUS_UNHEALTHY
	}
	switch admin {
	case berthv1.AdminState_ADMIN_STATE_DRAINING:
		return berthv1.ProxyStatus_PROXY_STATUS_DRAINING
	case berthv1.AdminState_ADMIN_STATE_CORDONED:
		return berthv1.ProxyStatus_PROXY_STATUS_CORDONED
	}
	return berthv1.ProxyStatus_PROXY_STATUS_ACTIVE
}

func (s *State) registerProxy(in *berthv1.Proxy) error {
	p := &berthv1.Proxy{
		Id:             in.GetId(),
		Region:         in.GetRegion(),
		Zone:           in.GetZone(),
		Addresses:      normAddresses(in.GetAddresses()),
		CapacityWeight: max(in.GetCapacityWeight(), 1),
		Health:         berthv1.Health_HEALTH_HEALTHY,
	}
	if len(in.GetLabels()) > 0 {
		p.Labels = maps.Clone(in.GetLabels())
	}
	old := s.proxies[p.Id]
	if old == nil {
		p.AdminState = berthv1.AdminState_ADMIN_STATE_NONE
		p.RegisteredIndex = s.index
		p.HealthChangedUnixMs = s.now
	} else {
		p.AdminState = old.AdminState
		p.RegisteredIndex = old.RegisteredIndex
		p.HealthChangedUnixMs = old.HealthChangedUnixMs
		if old.Health != berthv1.Health_HEALTH_HEALTHY {
			p.HealthChangedUnixMs = s.now
		}
		p.Version = old.Version
	}
	p.Status = deriveStatus(p.AdminState, p.Health)
	if old != nil && proto.Equal(old, p) {
		return nil // nothing changed: no new version, no event
	}
	p.Version = s.index
	s.putProxy(p)
	return nil
}

// normAddresses copies a (the command's message is not kept) and drops it
// when empty, so that "no addresses" has one representation.
func normAddresses(a *berthv1.ProxyAddresses) *berthv1.ProxyAddresses {
	if a.GetTunnel() == "" && a.GetDownstream() == "" && a.GetPeer() == "" {
		return nil
	}
	return &berthv1.ProxyAddresses{Tunnel: a.GetTunnel(), Downstream: a.GetDownstream(), Peer: a.GetPeer()}
}

func (s *State) setAdminState(id string, st berthv1.AdminState) error {
	p := s.proxies[id]
	if p == nil {
		return notFound("set_proxy_admin_state.proxy_id: proxy %q", id)
	}
	if p.AdminState == st {
		return nil
	}
	n := cloneProxy(p)
	n.AdminState = st
	n.Status = deriveStatus(n.AdminState, n.Health)
	n.Version = s.index
	s.putProxy(n)
	return nil
}

func (s *State) setHealth(c *berthv1.SetProxyHealthCommand) error {
	id, h := c.GetProxyId(), c.GetHealth()
	p := s.proxies[id]
	if p == nil {
		return notFound("set_proxy_health.proxy_id: proxy %q", id)
	}
	if v := c.GetIfVersion(); v != 0 && v != p.Version {
		return precondition("set_proxy_health.if_version: proxy %q is at version %d, not %d", id, p.Version, v)
	}
	if p.Health == h {
		return nil
	}
	if h == berthv1.Health_HEALTH_DOWN {
		s.evictProxy(id, "proxy down")
	}
	n := cloneProxy(p)
	n.Health = h
	n.HealthChangedUnixMs = s.now
	n.Status = deriveStatus(n.AdminState, n.Health)
	n.Version = s.index
	s.putProxy(n)
	return nil
}

func (s *State) deregisterProxy(id string) error {
	if s.proxies[id] == nil {
		return notFound("deregister_proxy.proxy_id: proxy %q", id)
	}
	s.evictProxy(id, "proxy deregistered")
	s.delProxy(id)
	return nil
}

// removeProxy forgets a proxy that is down and holds nothing. It evicts
// nothing itself: a proxy that is up, or still holds connections or
// unfinished moves, is refused, so an operator cannot remove a live one.
func (s *State) removeProxy(id string) error {
	p := s.proxies[id]
	if p == nil {
		return notFound("remove_proxy.proxy_id: proxy %q", id)
	}
	if p.Health != berthv1.Health_HEALTH_DOWN {
		return precondition("remove_proxy.proxy_id: proxy %q is %s; only a DOWN proxy (silent past the down timeout) can be removed",
			id, strings.TrimPrefix(p.Status.String(), "PROXY_STATUS_"))
	}
	if n := s.connsByProxy[id].len(); n > 0 {
		return precondition("remove_proxy.proxy_id: proxy %q still holds %d connection(s)", id, n)
	}
	for _, mid := range s.movesByProxy[id].keys() {
		if m := s.moves[mid]; unfinished(m) {
			return precondition("remove_proxy.proxy_id: proxy %q takes part in unfinished move %q", id, mid)
		}
	}
	s.delProxy(id)
	return nil
}

// evictProxy removes every connection of a proxy that is gone or down and
// aborts every unfinished move leaving or reaching it.
func (s *State) evictProxy(id, reason string) {
	// Connections first, so that aborting their moves does not first
	// restore them to ACTIVE only to delete them.
	for _, cid := range s.connsByProxy[id].keys() {
		s.delConn(cid)
	}
	for _, mid := range s.movesByProxy[id].keys() {
		if m := s.moves[mid]; unfinished(m) {
			s.finishMove(m, berthv1.MoveState_MOVE_STATE_ABORTED, reason)
		}
	}
}

func unfinished(m *berthv1.Move) bool {
	return m.State == berthv1.MoveState_MOVE_STATE_PENDING || m.State == berthv1.MoveState_MOVE_STATE_ACCEPTED
}

// finishMove ends m. Aborting gives the moved connection back its ACTIVE
// state if it still exists; completing leaves connections to the caller.
func (s *State) finishMove(m *berthv1.Move, st berthv1.MoveState, abortReason string) {
	n := cloneMove(m)
	n.State = st
	if st == berthv1.MoveState_MOVE_STATE_ABORTED {
		n.AbortReason = abortReason
	}
	n.Version = s.index
	s.putMove(n)
	if st != berthv1.MoveState_MOVE_STATE_ABORTED {
		return
	}
	if c := s.conns[m.ConnectionId]; c != nil && c.MoveId == m.Id {
		nc := cloneConn(c)
		nc.State = berthv1.ConnectionState_CONNECTION_STATE_ACTIVE
		nc.MoveId = ""
		nc.Version = s.index
		s.putConn(nc)
	}
}

// dropConn removes a connection its own proxy no longer holds and settles
// the moves it takes part in: as the moved connection, a PENDING move is
// aborted and an ACCEPTED one completed (make-before-break finished: the
// new connection is up and the old one is gone); as the new connection of
// an ACCEPTED move, that move is aborted and the old connection stays,
// unless the connection had itself moved on (its own move completes here),
// in which case the earlier move still waits for its old connection.
func (s *State) dropConn(c *berthv1.Connection) {
	s.delConn(c.Id)
	movedOn := false
	if m := s.moves[c.MoveId]; c.MoveId != "" && m != nil {
		switch m.State {
		case berthv1.MoveState_MOVE_STATE_PENDING:
			s.finishMove(m, berthv1.MoveState_MOVE_STATE_ABORTED, "connection closed")
		case berthv1.MoveState_MOVE_STATE_ACCEPTED:
			s.finishMove(m, berthv1.MoveState_MOVE_STATE_COMPLETED, "")
			movedOn = true
		}
	}
	if mid, ok := s.acceptedBy[c.Id]; ok && !movedOn {
		s.finishMove(s.moves[mid], berthv1.MoveState_MOVE_STATE_ABORTED, "new connection closed")
	}
}

// usableProxy returns the proxy a batch of connection events or a
// reconcile comes from, refusing an unknown or DOWN one.
func (s *State) usableProxy(field, id string) (*berthv1.Proxy, error) {
	p := s.proxies[id]
	if p == nil {
		return nil, notFound("%s: proxy %q", field, id)
	}
	if p.Health == berthv1.Health_HEALTH_DOWN {
		return nil, precondition("%s: proxy %q is DOWN; it must register again first", field, id)
	}
	return p, nil
}

// entries applies n entries of a batch one by one: a refused entry is
// rolled back and reported, the others stay. It fails only when entries
// were given and all were refused.
func (s *State) entries(n int, res *berthv1.CommandResult, apply func(i int) error) error {
	ok := 0
	for i := range n {
		mark, evMark := len(s.undo), len(s.events)
		if err := apply(i); err != nil {
			s.rollback(mark)
			clear(s.events[evMark:])
			s.events = s.events[:evMark]
			code, msg := codeAndMessage(err)
			res.EventErrors = append(res.EventErrors, &berthv1.EventError{Position: uint32(i), Code: code, Message: msg})
			continue
		}
		ok++
	}
	if ok == 0 && n > 0 {
		first := res.EventErrors[0]
		return refuse(first.Code, "all %d entries refused; [%d]: %s", n, first.Position, first.Message)
	}
	return nil
}

func (s *State) connectionEvents(c *berthv1.ConnectionEventsCommand, res *berthv1.CommandResult) error {
	pid := c.GetProxyId()
	if _, err := s.usableProxy("connection_events.proxy_id", pid); err != nil {
		return err
	}
	evs := c.GetEvents()
	return s.entries(len(evs), res, func(i int) error {
		switch k := evs[i].GetKind().(type) {
		case *berthv1.ConnectionEvent_Open:
			return s.openConn(pid, k.Open)
		case *berthv1.ConnectionEvent_Close:
			return s.closeConn(pid, k.Close.GetConnectionId())
		}
		return invalid("event: neither open nor close")
	})
}

func normEndpoints(eps []string) []string {
	if len(eps) == 0 {
		return nil
	}
	return slices.Clone(eps)
}

func sameReport(old, n *berthv1.Connection) bool {
	return old.Slot == n.Slot && old.AgentId == n.AgentId && slices.Equal(old.Endpoints, n.Endpoints)
}

func (s *State) openConn(pid string, o *berthv1.ConnectionOpen) error {
	in := o.GetConnection()
	if err := validateConnection("open.connection", in); err != nil {
		return err
	}
	if in.ProxyId != "" && in.ProxyId != pid {
		return invalid("open.connection.proxy_id: %q, but the events come from proxy %q", in.ProxyId, pid)
	}
	old := s.conns[in.Id]
	if old != nil && old.ProxyId != pid {
		return exists("open.connection.id: connection %q is held by proxy %q", in.Id, old.ProxyId)
	}
	var accept *berthv1.Move
	if mid := o.GetMoveId(); mid != "" {
		if err := ValidateID("open.move_id", mid); err != nil {
			return err
		}
		m := s.moves[mid]
		switch {
		case m == nil:
			return notFound("open.move_id: move %q", mid)
		case m.ToProxyId != pid:
			return precondition("open.move_id: move %q goes to proxy %q, not %q", mid, m.ToProxyId, pid)
		case m.ConnectionId == in.Id:
			return precondition("open.move_id: %q is the connection move %q moves; the new connection needs its own id", in.Id, mid)
		case m.State == berthv1.MoveState_MOVE_STATE_ACCEPTED && m.NewConnectionId == in.Id:
			// A retried open: the move is already accepted for it.
		case m.State != berthv1.MoveState_MOVE_STATE_PENDING:
			return precondition("open.move_id: move %q is %v, not PENDING", mid, m.State)
		default:
			if err := s.canAccept(in.Id, "open.connection.id"); err != nil {
				return err
			}
			accept = m
		}
	}
	n := &berthv1.Connection{
		Id:           in.Id,
		Slot:         in.Slot,
		AgentId:      in.AgentId,
		Endpoints:    normEndpoints(in.Endpoints),
		ProxyId:      pid,
		State:        berthv1.ConnectionState_CONNECTION_STATE_ACTIVE,
		OpenedIndex:  s.index,
		OpenedUnixMs: s.now,
		Version:      s.index,
	}
	if old != nil {
		// A repeated open of a connection the proxy holds is an update of
		// what it reports; the registry's own fields stay.
		n.State, n.MoveId = old.State, old.MoveId
		n.OpenedIndex, n.OpenedUnixMs = old.OpenedIndex, old.OpenedUnixMs
	}
	if old == nil || !sameReport(old, n) {
		s.putConn(n)
	}
	if accept != nil {
		s.acceptMove(accept, in.Id)
	}
	return nil
}

// canAccept checks that connection id may become the new connection of a
// move: it is not being moved itself nor already another move's target.
func (s *State) canAccept(id, field string) error {
	if c := s.conns[id]; c != nil && c.MoveId != "" {
		return precondition("%s: connection %q is itself being moved by move %q", field, id, c.MoveId)
	}
	if other, ok := s.acceptedBy[id]; ok {
		return precondition("%s: connection %q is already the new connection of move %q", field, id, other)
	}
	return nil
}

func (s *State) acceptMove(m *berthv1.Move, newConn string) {
	n := cloneMove(m)
	n.State = berthv1.MoveState_MOVE_STATE_ACCEPTED
	n.NewConnectionId = newConn
	n.Version = s.index
	s.putMove(n)
}

func (s *State) closeConn(pid, id string) error {
	if err := ValidateID("close.connection_id", id); err != nil {
		return err
	}
	c := s.conns[id]
	if c == nil {
		return nil // proxies may report a close twice
	}
	if c.ProxyId != pid {
		return precondition("close.connection_id: connection %q is held by proxy %q, not %q", id, c.ProxyId, pid)
	}
	s.dropConn(c)
	return nil
}

func (s *State) reconcileProxy(c *berthv1.ReconcileProxyCommand, res *berthv1.CommandResult) error {
	pid := c.GetProxyId()
	if _, err := s.usableProxy("reconcile_proxy.proxy_id", pid); err != nil {
		return err
	}
	list := c.GetConnections()
	keep := make(map[string]struct{}, len(list))
	err := s.entries(len(list), res, func(i int) error {
		in := list[i]
		if err := s.reconcileOne(pid, in, keep); err != nil {
			// A refused entry changes nothing, not even by its absence:
			// what the registry has for that id stays.
			if old := s.conns[in.GetId()]; old != nil && old.ProxyId == pid {
				keep[old.Id] = struct{}{}
			}
			return err
		}
		keep[in.Id] = struct{}{}
		return nil
	})
	if err != nil {
		return err
	}
	for _, id := range s.connsByProxy[pid].keys() {
		if _, ok := keep[id]; !ok {
			s.dropConn(s.conns[id])
		}
	}
	return nil
}

func (s *State) reconcileOne(pid string, in *berthv1.Connection, seen map[string]struct{}) error {
	if err := validateConnection("connection", in); err != nil {
		return err
	}
	if in.ProxyId != "" && in.ProxyId != pid {
		return invalid("connection.proxy_id: %q, but the reconcile is for proxy %q", in.ProxyId, pid)
	}
	if _, dup := seen[in.Id]; dup {
		return invalid("connection.id: %q listed twice", in.Id)
	}
	n := &berthv1.Connection{
		Id:           in.Id,
		Slot:         in.Slot,
		AgentId:      in.AgentId,
		Endpoints:    normEndpoints(in.Endpoints),
		ProxyId:      pid,
		State:        berthv1.ConnectionState_CONNECTION_STATE_ACTIVE,
		OpenedIndex:  s.index,
		OpenedUnixMs: s.now,
		Version:      s.index,
	}
	old := s.conns[in.Id]
	switch {
	case old == nil:
		s.putConn(n)
	case old.ProxyId == pid:
		n.State, n.MoveId = old.State, old.MoveId
		n.OpenedIndex, n.OpenedUnixMs = old.OpenedIndex, old.OpenedUnixMs
		if !sameReport(old, n) {
			s.putConn(n)
		}
	default:
		if q := s.proxies[old.ProxyId]; q != nil && q.Health != berthv1.Health_HEALTH_DOWN {
			return exists("connection.id: connection %q is held by proxy %q, which is %v, not DOWN", in.Id, q.Id, q.Status)
		}
		// The other holder is gone: the connection moves here. A delete
		// and a fresh open, so subscribers of either proxy see it.
		s.dropConn(old)
		s.putConn(n)
	}
	return nil
}

func (s *State) createMoves(moves []*berthv1.Move) error {
	ids := make(map[string]int, len(moves))
	conns := make(map[string]int, len(moves))
	for i, in := range moves {
		f := fmt.Sprintf("create_moves.moves[%d]", i)
		if _, ok := s.moves[in.Id]; ok {
			return exists("%s.id: move %q already exists", f, in.Id)
		}
		if j, ok := ids[in.Id]; ok {
			return exists("%s.id: move %q is also moves[%d]", f, in.Id, j)
		}
		ids[in.Id] = i
		c := s.conns[in.ConnectionId]
		if c == nil {
			return notFound("%s.connection_id: connection %q", f, in.ConnectionId)
		}
		if c.State != berthv1.ConnectionState_CONNECTION_STATE_ACTIVE || c.MoveId != "" {
			return precondition("%s.connection_id: connection %q is %v, not ACTIVE", f, c.Id, c.State)
		}
		// The new connection of an ACCEPTED move may move on (a chain):
		// the earlier move still completes when its old connection closes.
		if j, ok := conns[c.Id]; ok {
			return precondition("%s.connection_id: connection %q is also moved by moves[%d]", f, c.Id, j)
		}
		conns[c.Id] = i
		if in.FromProxyId != c.ProxyId {
			return precondition("%s.from_proxy_id: %q, but connection %q is held by proxy %q", f, in.FromProxyId, c.Id, c.ProxyId)
		}
		to := s.proxies[in.ToProxyId]
		if to == nil {
			return notFound("%s.to_proxy_id: proxy %q", f, in.ToProxyId)
		}
		if to.Status != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE {
			return precondition("%s.to_proxy_id: proxy %q is %v, not ACTIVE", f, to.Id, to.Status)
		}
	}
	for _, in := range moves {
		s.putMove(&berthv1.Move{
			Id:             in.Id,
			ConnectionId:   in.ConnectionId,
			FromProxyId:    in.FromProxyId,
			ToProxyId:      in.ToProxyId,
			State:          berthv1.MoveState_MOVE_STATE_PENDING,
			Reason:         in.Reason,
			CreatedIndex:   s.index,
			CreatedUnixMs:  s.now,
			DeadlineUnixMs: in.DeadlineUnixMs,
			Version:        s.index,
		})
		c := cloneConn(s.conns[in.ConnectionId])
		c.State = berthv1.ConnectionState_CONNECTION_STATE_MOVING
		c.MoveId = in.Id
		c.Version = s.index
		s.putConn(c)
	}
	return nil
}

func (s *State) updateMove(c *berthv1.UpdateMoveCommand) error {
	id := c.GetMoveId()
	m := s.moves[id]
	if m == nil {
		return notFound("update_move.move_id: move %q", id)
	}
	newID := c.GetNewConnectionId()
	switch c.GetState() {
	case berthv1.MoveState_MOVE_STATE_ACCEPTED:
		switch m.State {
		case berthv1.MoveState_MOVE_STATE_PENDING:
		case berthv1.MoveState_MOVE_STATE_ACCEPTED:
			if m.NewConnectionId == newID {
				return nil
			}
			return precondition("update_move.new_connection_id: move %q was accepted with connection %q, not %q", id, m.NewConnectionId, newID)
		default:
			return precondition("update_move.state: move %q is %v; only a PENDING move can become ACCEPTED", id, m.State)
		}
		nc := s.conns[newID]
		switch {
		case nc == nil:
			return notFound("update_move.new_connection_id: connection %q", newID)
		case nc.Id == m.ConnectionId:
			return precondition("update_move.new_connection_id: %q is the connection being moved", newID)
		case nc.ProxyId != m.ToProxyId:
			return precondition("update_move.new_connection_id: connection %q is held by proxy %q, not the target %q", newID, nc.ProxyId, m.ToProxyId)
		}
		if err := s.canAccept(newID, "update_move.new_connection_id"); err != nil {
			return err
		}
		s.acceptMove(m, newID)

	case berthv1.MoveState_MOVE_STATE_COMPLETED:
		if newID != "" && newID != m.NewConnectionId {
			return precondition("update_move.new_connection_id: move %q has new connection %q, not %q", id, m.NewConnectionId, newID)
		}
		switch m.State {
		case berthv1.MoveState_MOVE_STATE_COMPLETED:
			return nil
		case berthv1.MoveState_MOVE_STATE_ACCEPTED:
		default:
			return precondition("update_move.state: move %q is %v; only an ACCEPTED move can become COMPLETED", id, m.State)
		}
		s.finishMove(m, berthv1.MoveState_MOVE_STATE_COMPLETED, "")
		if old := s.conns[m.ConnectionId]; old != nil && old.MoveId == m.Id {
			s.delConn(old.Id)
		}

	case berthv1.MoveState_MOVE_STATE_ABORTED:
		switch m.State {
		case berthv1.MoveState_MOVE_STATE_ABORTED:
			return nil
		case berthv1.MoveState_MOVE_STATE_PENDING, berthv1.MoveState_MOVE_STATE_ACCEPTED:
		default:
			return precondition("update_move.state: move %q is %v; it can no longer be ABORTED", id, m.State)
		}
		s.finishMove(m, berthv1.MoveState_MOVE_STATE_ABORTED, c.GetAbortReason())
	}
	return nil
}

// pruneFinishedMoves keeps the newest MaxFinishedMoves finished moves.
func (s *State) pruneFinishedMoves() {
	for s.finished.len() > MaxFinishedMoves {
		k, _ := s.finished.first()
		s.delMove(k[8:])
	}
}

func (s *State) upsertServer(in *berthv1.Server) error {
	n := &berthv1.Server{Id: in.GetId(), RaftAddress: in.GetRaftAddress(), GrpcAddress: in.GetGrpcAddress(), Version: s.index}
	if old := s.servers[n.Id]; old != nil && old.RaftAddress == n.RaftAddress && old.GrpcAddress == n.GrpcAddress {
		return nil
	}
	s.putServer(n)
	return nil
}

func (s *State) removeServer(id string) error {
	if s.servers[id] == nil {
		return notFound("remove_server.server_id: server %q", id)
	}
	s.delServer(id)
	return nil
}
