package proxy

import (
	"sync"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// onMoves carries out this proxy's part of moves it learns of
// (make-before-break, DESIGN.md "Moves"):
//   - a PENDING move of one of its connections: tell the agent to dial the
//     target proxy with the same slot and the move id;
//   - an ACCEPTED one (the target committed the new connection): stop new
//     streams on the old connection, let in-flight ones finish within the
//     drain timeout, then close it; the close completes the move.
//
// The target's part needs nothing here: the agent's hello carries the move
// id and the open event commits it.
func (p *Proxy) onMoves(moves []*berthv1.Move) {
	for _, m := range moves {
		if m.State == berthv1.MoveState_MOVE_STATE_COMPLETED || m.State == berthv1.MoveState_MOVE_STATE_ABORTED {
			p.notified.remove(m.Id)
		}
		if m.FromProxyId != p.cfg.ID {
			continue
		}
		lc := p.conns.get(m.ConnectionId)
		if lc == nil {
			continue
		}
		switch m.State {
		case berthv1.MoveState_MOVE_STATE_PENDING:
			p.askToReconnect(lc, m)
		case berthv1.MoveState_MOVE_STATE_ACCEPTED:
			p.retire(lc, "move "+m.Id+" accepted")
		}
	}
}

// askToReconnect tells the agent once per move; a move it could not be
// told about (target address not known yet, control stream failing) is
// tried again when the move shows up next (every directory update about
// it, and the periodic re-check).
func (p *Proxy) askToReconnect(lc *localConn, m *berthv1.Move) {
	if p.notified.has(m.Id) {
		return
	}
	addr, ok := p.dir.tunnelAddress(m.ToProxyId)
	sess := lc.sess.Load()
	if !ok || sess == nil {
		p.logger.Debug("cannot start move yet", "move", m.Id, "to", m.ToProxyId, "known_target", ok)
		return
	}
	err := sess.SendControl(&berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{
		MoveId: m.Id, ProxyId: m.ToProxyId, Address: addr}}})
	if err != nil {
		p.logger.Warn("telling the agent to move failed", "move", m.Id, "connection", lc.id, "err", err)
		return
	}
	p.notified.add(m.Id)
	p.logger.Info("asked agent to move", "move", m.Id, "connection", lc.id, "to", m.ToProxyId)
}

// recheckMoves acts again on the moves of this proxy still PENDING or
// ACCEPTED, for those a directory update alone did not settle.
func (p *Proxy) recheckMoves() {
	p.onMoves(p.dir.openMoves())
}

// retire drains a connection and closes it once its streams are done (or
// the drain timeout passes). Closing reports the close to the control
// plane.
func (p *Proxy) retire(lc *localConn, why string) {
	if !lc.draining.CompareAndSwap(false, true) {
		return
	}
	p.logger.Info("draining connection", "connection", lc.id, "why", why)
	p.pools.dropConn(lc.id)
	go func() {
		deadline := time.Now().Add(p.cfg.DrainTimeout)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for lc.outstanding.Load() > 0 && time.Now().Before(deadline) {
			select {
			case <-p.ctx.Done():
				return
			case <-tick.C:
			}
		}
		if s := lc.sess.Load(); s != nil {
			_ = s.Close()
		}
	}()
}

// idSet remembers ids, so a move replayed by a resumed stream is acted on
// once.
type idSet struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

// add reports whether id is new.
func (s *idSet) add(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]struct{}{}
	}
	if _, ok := s.ids[id]; ok {
		return false
	}
	s.ids[id] = struct{}{}
	return true
}

func (s *idSet) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ids, id)
}

func (s *idSet) has(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[id]
	return ok
}
