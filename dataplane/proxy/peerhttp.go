package proxy

import (
	"context"
	"net"
	"net/http"
	"time"
)

// peerHTTP serves HTTP that peers forward: each peer stream is served on
// the goroutine that accepted it, and each request on it is routed on its
// own to a local connection, so keep-alive peer streams do not pin a
// connection (draining one is not held up by an idle stream).
type peerHTTP struct {
	p   *Proxy
	srv *h1Server
}

func newPeerHTTP(p *Proxy) *peerHTTP {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt, _ := r.Context().Value(routeKey{}).(route)
		p.forward(w, r, rt)
	})
	return &peerHTTP{p: p, srv: newH1Server(h, p.logger, 30*time.Second, 0)}
}

// serve serves the requests a peer sends on stream c, all for rt.
func (h *peerHTTP) serve(c net.Conn, rt route) {
	h.srv.ServeConn(context.WithValue(h.p.ctx, routeKey{}, rt), c)
}

// close closes every peer stream and waits for their requests.
func (h *peerHTTP) close() { h.srv.Close() }
