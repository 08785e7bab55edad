package proxy

import (
	"bufio"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
)

// The tunnel port takes agents over TCP and over WebSocket alike: the
// first bytes after TLS tell which ("BRTA", the raw preamble, or an HTTP
// request). A WebSocket is upgraded by an HTTP server that sees only those
// connections, and its tunnel then goes through the same handshake,
// tokens, limits and moves as a raw one.

// wsTunnels is the tunnel port's HTTP side.
type wsTunnels struct {
	ln  *connListener
	srv *http.Server
}

func newWSTunnels(p *Proxy) *wsTunnels {
	h := &wsTunnels{ln: &connListener{ch: make(chan net.Conn), closed: make(chan struct{})}}
	h.srv = &http.Server{
		Handler:           tunnel.WebSocketHandler(p.ctx, p.handshakeTunnel),
		ReadHeaderTimeout: p.cfg.Tunnel.HandshakeTimeout,
		IdleTimeout:       p.cfg.Tunnel.HandshakeTimeout,
		ErrorLog:          slog.NewLogLogger(p.logger.Handler(), slog.LevelDebug),
	}
	return h
}

// acceptTunnel tells a raw tunnel from a WebSocket by its first bytes.
// The source rate limit comes first: it protects the handshakes,
// TLS's included.
func (p *Proxy) acceptTunnel(conn net.Conn) {
	if !p.sources.allow(conn.RemoteAddr()) {
		p.metrics.tunnelRefusals.WithLabelValues("rate").Inc()
		_ = conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(p.cfg.Tunnel.HandshakeTimeout))
	br := bufio.NewReaderSize(conn, 4096)
	head, err := br.Peek(4)
	if err != nil {
		p.metrics.tunnelRefusals.WithLabelValues("handshake").Inc()
		p.logger.Debug("tunnel connection ended before its first bytes", "remote", conn.RemoteAddr(), "err", err)
		_ = conn.Close()
		return
	}
	bc := &bufferedConn{Conn: conn, r: br}
	if string(head) == "GET " {
		p.metrics.tunnelTransports.WithLabelValues("websocket").Inc()
		select {
		case p.wsTunnels.ln.ch <- bc:
		case <-p.wsTunnels.ln.closed:
			_ = conn.Close()
		}
		return
	}
	p.metrics.tunnelTransports.WithLabelValues("tcp").Inc()
	p.handshakeTunnel(bc)
}

// connListener is a net.Listener fed by hand: the WebSocket tunnel
// server's connections are handed over, not accepted.
type connListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *connListener) Addr() net.Addr { return peerAddr{} }

type peerAddr struct{}

func (peerAddr) Network() string { return "berth-peer" }
func (peerAddr) String() string  { return "peer" }
