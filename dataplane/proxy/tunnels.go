package proxy

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/dataplane/tunnel"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func (p *Proxy) acceptTunnels() {
	for {
		conn, err := p.tunnelLn.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.logger.Error("tunnel listener stopped", "err", err)
			}
			return
		}
		p.goRun(func() { p.acceptTunnel(conn) })
	}
}

// validateHello checks what an agent says of itself before anything is
// committed.
func validateHello(h *berthv1.TunnelHello) error {
	if err := fsm.ValidateID("agent_id", h.AgentId); err != nil {
		return err
	}
	if h.Slot != "" {
		if err := fsm.ValidateID("slot", h.Slot); err != nil {
			return err
		}
	}
	if h.MoveId != "" {
		if err := fsm.ValidateID("move_id", h.MoveId); err != nil {
			return err
		}
	}
	if len(h.Endpoints) == 0 || len(h.Endpoints) > fsm.MaxEndpointsPerConnection {
		return fmt.Errorf("endpoints: %d given; want 1 to %d", len(h.Endpoints), fsm.MaxEndpointsPerConnection)
	}
	for i, e := range h.Endpoints {
		if err := fsm.ValidateEndpointName(e); err != nil {
			return err
		}
		if slices.Contains(h.Endpoints[:i], e) {
			return fmt.Errorf("endpoints: %q twice", e)
		}
	}
	return nil
}

func refuse(conn net.Conn, code berthv1.TunnelErrorCode, format string, args ...any) {
	tunnel.Refuse(conn, &berthv1.TunnelWelcome{Error: tunnel.Refusal(code, format, args...)})
}

// handshakeTunnel runs one agent tunnel (over TCP or a WebSocket, past
// the source rate limit) from hello to close: validate, commit (or, with
// the control plane unreachable, serve uncommitted), welcome, then serve
// until the session ends and report the close.
func (p *Proxy) handshakeTunnel(conn net.Conn) {
	hello, err := tunnel.ReadTunnelHello(conn, p.cfg.Tunnel)
	if err != nil {
		p.metrics.tunnelRefusals.WithLabelValues("handshake").Inc()
		p.logger.Debug("tunnel handshake failed", "remote", conn.RemoteAddr(), "err", err)
		if errors.Is(err, tunnel.ErrUnsupportedVersion) {
			refuse(conn, berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_VERSION, "%v", err)
			return
		}
		_ = conn.Close()
		return
	}
	if err := validateHello(hello); err != nil {
		p.metrics.tunnelRefusals.WithLabelValues("invalid").Inc()
		refuse(conn, berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST, "%v", err)
		return
	}
	var expires time.Time
	if keys := p.keys.Load(); keys != nil {
		claims, err := keys.VerifyAgent(hello.Token, time.Now())
		if err != nil {
			p.metrics.tunnelRefusals.WithLabelValues("unauthenticated").Inc()
			refuse(conn, berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAUTHENTICATED, "agent token: %v", err)
			return
		}
		if err := claims.CheckEndpoints(hello.Endpoints...); err != nil {
			p.metrics.tunnelRefusals.WithLabelValues("forbidden").Inc()
			refuse(conn, berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_PERMISSION_DENIED, "agent token: %v", err)
			return
		}
		expires = claims.ExpiresAt
		if !p.perToken.acquire(claims.ID, p.cfg.MaxTunnelsPerToken) {
			p.metrics.tunnelRefusals.WithLabelValues("token-tunnels").Inc()
			refuse(conn, berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_RESOURCE_EXHAUSTED, "agent token %s already holds %d tunnels on this proxy", claims.ID, p.cfg.MaxTunnelsPerToken)
			return
		}
		defer p.perToken.release(claims.ID)
	}
	if p.conns.count() >= p.cfg.MaxTunnels {
		p.metrics.tunnelRefusals.WithLabelValues("full").Inc()
		refuse(conn, berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_RESOURCE_EXHAUSTED, "proxy holds %d tunnels, its limit", p.cfg.MaxTunnels)
		return
	}
	slot := hello.Slot
	if slot == "" {
		slot = hello.AgentId
	}
	lc := &localConn{
		id: newConnectionID(p.cfg.ID), slot: slot, agentID: hello.AgentId,
		endpoints: hello.Endpoints, moveID: hello.MoveId, opened: time.Now(),
	}
	// Known before it is committed, so a full sync racing with this
	// handshake includes it; routable only once welcomed.
	p.conns.add(lc)
	switch err := p.commitOpen(p.ctx, lc.record(), hello.MoveId); {
	case err == nil:
	case errors.Is(err, errNotCommitted):
		p.logger.Info("serving a tunnel the control plane has not committed", "connection", lc.id)
	default:
		p.conns.remove(lc.id)
		p.reportClose(lc.id)
		p.metrics.tunnelRefusals.WithLabelValues("refused").Inc()
		refuse(conn, berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE, "control plane refused the connection: %v", err)
		return
	}
	sess, err := tunnel.AcceptTunnel(conn, &berthv1.TunnelWelcome{ConnectionId: lc.id, ProxyId: p.cfg.ID}, p.cfg.Tunnel)
	if err != nil {
		p.conns.remove(lc.id)
		p.reportClose(lc.id)
		p.logger.Debug("tunnel welcome failed", "connection", lc.id, "err", err)
		return
	}
	lc.sess.Store(sess)
	if !expires.IsZero() {
		// The token's expiry ends the tunnel; the agent must come back
		// with a fresh one.
		// Verification allows token.Leeway of clock skew past the expiry;
		// so does the close, or the agent would reconnect with the same token.
		expiry := time.AfterFunc(time.Until(expires.Add(token.Leeway)), func() {
			p.logger.Info("agent token expired; closing its tunnel", "connection", lc.id)
			p.metrics.tunnelRefusals.WithLabelValues("expired").Inc()
			_ = sess.Close()
		})
		defer expiry.Stop()
	}
	p.metrics.tunnels.Inc()
	p.logger.Info("tunnel up", "connection", lc.id, "agent", lc.agentID, "slot", lc.slot, "endpoints", lc.endpoints, "move", lc.moveID)

	// Reading the control stream is this goroutine's job until the tunnel
	// ends (one goroutine per tunnel on top of yamux's own).
	p.readControl(lc, sess)
	_ = sess.Close()
	p.conns.remove(lc.id)
	p.pools.dropConn(lc.id)
	p.reportClose(lc.id)
	p.metrics.tunnels.Dec()
	p.logger.Info("tunnel closed", "connection", lc.id)
}

// readControl handles what the agent says on the control stream until it
// ends with the tunnel.
func (p *Proxy) readControl(lc *localConn, sess *tunnel.Session) {
	for {
		m, err := sess.RecvControl()
		if err != nil {
			return
		}
		// Moved only confirms what the control plane will say: the
		// connection is retired on the ACCEPTED move, once this proxy's
		// directory already knows the new connection (requests then go
		// there, never to a retiring one with nowhere else known).
		if mv := m.GetMoved(); mv != nil {
			p.logger.Debug("agent reports its move done", "connection", lc.id, "move", mv.MoveId, "new", mv.NewConnectionId)
		}
	}
}
