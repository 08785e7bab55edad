package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Serve accepts peer links on ln (the proxy's peer port). Each connection
// is handshaken (TLS when configured, then the peer hello: an invalid id
// or this proxy's own is refused with a PeerWelcome error), then handle
// runs in its own goroutine for every stream the peer opens, with the
// peer's proxy id; it must Accept or Reject in. A new link from a proxy
// replaces the one it held before: its owner has already given up on it.
//
// Serve returns nil when ln is closed, ErrClosed when the pool is (Close
// closes ln too).
func (p *Pool) Serve(ln net.Listener, handle func(in *tunnel.Incoming, from string)) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = ln.Close()
		return ErrClosed
	}
	p.listeners[ln] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, ln)
		p.mu.Unlock()
	}()

	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil {
				return ErrClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: wait and try again,
			// as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.logger.Warn("peer accept failed", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-p.ctx.Done():
				return ErrClosed
			}
		}
		delay = 0
		if !p.track() {
			_ = conn.Close()
			return ErrClosed
		}
		go p.serveConn(conn, handle)
	}
}

// track counts a goroutine about to start, unless the pool is closed.
func (p *Pool) track() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	return true
}

func (p *Pool) serveConn(conn net.Conn, handle func(*tunnel.Incoming, string)) {
	defer p.wg.Done()
	remote := conn.RemoteAddr().String()
	sess, from, ok := p.handshake(conn)
	if !ok {
		return
	}

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = sess.Close()
		return
	}
	old := p.inbound[from]
	p.inbound[from] = sess
	p.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	p.logger.Info("peer link accepted", "peer", from, "remote", remote)
	defer func() {
		p.mu.Lock()
		if p.inbound[from] == sess {
			delete(p.inbound, from)
		}
		p.mu.Unlock()
		_ = sess.Close()
		p.logger.Info("peer link ended", "peer", from, "remote", remote)
	}()

	for {
		in, err := sess.AcceptStream()
		if err != nil {
			return
		}
		p.streamsAccepted.Add(1)
		p.wg.Add(1) // counted: this goroutine is
		go func() {
			defer p.wg.Done()
			handle(in, from)
		}()
	}
}

// handshake runs TLS and the peer hello on an accepted connection; Close
// interrupts it by closing conn.
func (p *Pool) handshake(conn net.Conn) (*tunnel.Session, string, bool) {
	stop := context.AfterFunc(p.ctx, func() { _ = conn.Close() })
	fail := func(msg string, err error) (*tunnel.Session, string, bool) {
		stop()
		_ = conn.Close()
		p.logger.Debug(msg, "remote", conn.RemoteAddr().String(), "err", err)
		return nil, "", false
	}
	if srv := p.serverTLS(); srv != nil {
		tc := tls.Server(conn, srv)
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.Tunnel.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return fail("peer tls handshake failed", err)
		}
		conn = tc
	}
	hello, err := tunnel.ReadPeerHello(conn, p.cfg.Tunnel)
	if err != nil {
		return fail("peer hello unreadable", err)
	}
	from := hello.GetProxyId()
	refuse := func(refusal *berthv1.TunnelError) (*tunnel.Session, string, bool) {
		stop()
		tunnel.Refuse(conn, &berthv1.PeerWelcome{ProxyId: p.cfg.SelfID, Error: refusal})
		p.logger.Warn("peer link refused", "remote", conn.RemoteAddr().String(), "reason", refusal.GetMessage())
		return nil, "", false
	}
	if problem := idProblem(from); problem != "" {
		return refuse(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST, "proxy_id: %s", problem))
	}
	if from == p.cfg.SelfID {
		return refuse(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST, "proxy_id %q is this proxy's own", from))
	}
	sess, err := tunnel.AcceptPeer(conn, &berthv1.PeerWelcome{ProxyId: p.cfg.SelfID}, p.cfg.Tunnel)
	if !stop() {
		// Close ran meanwhile and closed conn.
		if sess != nil {
			_ = sess.Close()
		}
		return nil, "", false
	}
	if err != nil {
		p.logger.Debug("peer session failed to start", "peer", from, "err", err)
		return nil, "", false
	}
	return sess, from, true
}

// serverTLS is the config for accepted links: ServerTLS, else TLS.
func (p *Pool) serverTLS() *tls.Config {
	if p.cfg.ServerTLS != nil {
		return p.cfg.ServerTLS
	}
	return p.cfg.TLS
}
