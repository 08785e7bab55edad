package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// peerHTTP serves HTTP that peers forward: their streams are handed to an
// http.Server through an in-memory listener, and each request on them is
// routed on its own to a local connection, so keep-alive peer streams do
// not pin a connection (draining one is not held up by an idle stream).
type peerHTTP struct {
	ln  *connListener
	srv *http.Server
}

// peerConn is a peer stream with the route its header named.
type peerConn struct {
	net.Conn
	rt route
}

func newPeerHTTP(p *Proxy) *peerHTTP {
	h := &peerHTTP{ln: &connListener{ch: make(chan net.Conn), closed: make(chan struct{})}}
	h.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rt, _ := r.Context().Value(routeKey{}).(route)
			p.forward(w, r, rt)
		}),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(p.logger.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return context.WithValue(ctx, routeKey{}, pc.rt)
			}
			return ctx
		},
	}
	return h
}

func (h *peerHTTP) run(logger *slog.Logger) {
	if err := h.srv.Serve(h.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("peer http server stopped", "err", err)
	}
}

// serve hands a peer stream to the server.
func (h *peerHTTP) serve(c net.Conn) {
	select {
	case h.ln.ch <- c:
	case <-h.ln.closed:
		_ = c.Close()
	}
}

func (h *peerHTTP) close() {
	_ = h.srv.Close()
}

// connListener is a net.Listener fed by serve.
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
