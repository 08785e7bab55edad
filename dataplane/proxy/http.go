package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Downstream conventions.
const (
	// EndpointHeader names the endpoint explicitly; otherwise it is the
	// first label of Host.
	EndpointHeader = "X-Berth-Endpoint"
	// ErrorHeader carries the reason of a Berth-made error response.
	ErrorHeader = "X-Berth-Error"
	// RetryHeader on a peer's error response says nothing reached an
	// upstream, so the forwarding proxy may send the request elsewhere.
	RetryHeader = "X-Berth-Retry"
	// TCPPath with "Upgrade: berth-tcp" turns the connection into a raw TCP
	// stream to the endpoint.
	TCPPath    = "/.berth/tcp"
	TCPUpgrade = "berth-tcp"
)

var errInvalidEndpoint = errors.New("invalid endpoint")

// endpointOf names the endpoint a request is for.
func endpointOf(r *http.Request) (string, error) {
	name := r.Header.Get(EndpointHeader)
	if name == "" {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if net.ParseIP(strings.Trim(host, "[]")) != nil {
			return "", fmt.Errorf("%w: Host %q is an address; name the endpoint in the Host's first label or in %s", errInvalidEndpoint, host, EndpointHeader)
		}
		name, _, _ = strings.Cut(host, ".")
		name = strings.ToLower(name)
	}
	if err := fsm.ValidateEndpointName(name); err != nil {
		return "", fmt.Errorf("%w: %w", errInvalidEndpoint, err)
	}
	return name, nil
}

type routeKey struct{}

type route struct {
	endpoint string
	hashKey  string
	// Set for requests a peer forwarded: serve on a local connection only
	// (the one named, if it is usable), never forward again.
	peerHop bool
	connID  string
	// acc is the access log's record of a downstream request (nil: off).
	acc *accessWriter
}

// ServeHTTP is the downstream entry point: plain HTTP and upgrades
// (WebSocket) through a reverse proxy whose transport opens tunnel streams;
// raw TCP through the berth-tcp upgrade.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if aw := p.access.begin(r.Context(), w); aw != nil {
		defer func() {
			if v := recover(); v != nil {
				aw.failed("aborted") // the answer was cut short
				p.access.end(r.Context(), aw, r)
				panic(v)
			}
			p.access.end(r.Context(), aw, r)
		}()
		p.serve(aw, r, aw)
		return
	}
	p.serve(w, r, nil)
}

// serve routes one downstream request; acc (nil when the access log is
// off) is w, seen as the log's record.
func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, acc *accessWriter) {
	endpoint, err := p.downstreamEndpoint(r)
	if err != nil {
		p.fail(w, err)
		return
	}
	if acc != nil {
		acc.endpoint = endpoint
	}
	if err := p.authorize(r, endpoint); err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="berth"`)
		p.fail(w, err)
		return
	}
	rt := route{endpoint: endpoint, hashKey: p.hashKey(r), acc: acc}
	if r.URL.Path == TCPPath && strings.EqualFold(r.Header.Get("Upgrade"), TCPUpgrade) {
		p.serveTCP(w, r, rt)
		return
	}
	p.metrics.requests.Inc()
	start := time.Now()
	code := p.forward(w, r, rt)
	p.metrics.observeRequest(endpoint, code, time.Since(start))
}

func (p *Proxy) hashKey(r *http.Request) string {
	switch {
	case p.cfg.HashHeader != "":
		return r.Header.Get(p.cfg.HashHeader)
	case p.cfg.HashCookie != "":
		if c, err := r.Cookie(p.cfg.HashCookie); err == nil {
			return c.Value
		}
	}
	return ""
}

// notSent reports whether a routing error happened before any upstream
// saw the request.
func notSent(err error) bool {
	var de *dialError
	return errors.Is(err, errNoUpstream) || errors.As(err, &de) || errors.Is(err, errAllRefused)
}

// fail answers with err's status and reason, and returns the status.
func (p *Proxy) fail(w http.ResponseWriter, err error) int {
	code, reason := statusFor(err)
	p.metrics.routeErrors.WithLabelValues(reason).Inc()
	if aw, ok := w.(*accessWriter); ok {
		aw.failed(reason)
	}
	w.Header().Set(ErrorHeader, reason)
	http.Error(w, err.Error(), code)
	return code
}

// serveTCP answers the berth-tcp upgrade: open a TCP stream to the
// endpoint, say 101, and splice the two.
func (p *Proxy) serveTCP(w http.ResponseWriter, r *http.Request, rt route) {
	hdr := &berthv1.StreamHeader{Endpoint: rt.endpoint, Kind: berthv1.StreamKind_STREAM_KIND_TCP, ClientAddress: r.RemoteAddr}
	up, t, err := p.openStream(r.Context(), hdr, rt)
	if err != nil {
		p.fail(w, err)
		return
	}
	rt.acc.served(t)
	done := p.begin(t)
	defer done()
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = up.Close()
		http.Error(w, "connection cannot be upgraded", http.StatusInternalServerError)
		return
	}
	down, brw, err := hj.Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	p.metrics.tcpStreams.Inc()
	if _, err := io.WriteString(down, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+TCPUpgrade+"\r\n\r\n"); err != nil {
		_ = down.Close()
		_ = up.Close()
		return
	}
	pipe(&bufferedConn{Conn: down, r: brw.Reader}, up)
}

// pipe copies both ways until both directions end, half-closing each side
// as its source finishes, then closes both.
func pipe(a, b io.ReadWriteCloser) {
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src io.ReadWriteCloser) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		_ = closeWrite(dst)
	}
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
}

// closeWrite half-closes c: CloseWrite where c has it (TCP), else Close,
// which for a yamux stream sends FIN and keeps the read side open.
func closeWrite(c io.Closer) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
