package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// The proxy forwards HTTP itself rather than through httputil.ReverseProxy.
// ReverseProxy deep-copies every request (the Request, its URL and all its
// header values) and wraps its context; profiled at 16 clients that was a
// fifth of the proxy's allocation, and the garbage collector's share of the
// CPU follows allocation. forward does what ReverseProxy did for Berth and
// no more: the outgoing request is a shallow copy whose header map is new
// (values are shared, never written), hop-by-hop headers go both ways,
// X-Forwarded-For/-Host/-Proto are set, upgrades (101) become a two-way
// copy, trailers pass through, and a response of unknown length or an
// event stream is flushed after every write while a response of known
// length is flushed once, at its end. 1xx responses other than 101 are not
// relayed (the server answers Expect: 100-continue itself).

// hopHeaders are the hop-by-hop headers of RFC 9110 section 7.6.1, which a
// proxy must not pass on.
var hopHeaders = [...]string{
	"Connection",
	"Proxy-Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// forward sends r to the endpoint of rt, copies the answer to w and
// returns the answer's status code.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, rt route) int {
	out := outgoing(r, rt.peerHop)
	resp, err := p.roundTrip(out, rt)
	if err != nil {
		if rt.peerHop && notSent(err) {
			w.Header().Set(RetryHeader, "not-sent")
		}
		return p.fail(w, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return p.serveUpgrade(w, out, resp)
	}
	defer resp.Body.Close()

	removeHopHeaders(resp.Header)
	dst := w.Header()
	for k, vv := range resp.Header {
		dst[k] = vv
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)

	var dstw io.Writer = onlyWriter{w}
	if resp.ContentLength == -1 || isEventStream(resp.Header.Get("Content-Type")) {
		dstw = &flushingWriter{w: w, rc: http.NewResponseController(w)}
	}
	buf := p.copyBufs.get()
	_, err = io.CopyBuffer(dstw, onlyReader{resp.Body}, *buf)
	p.copyBufs.put(buf)
	if err != nil {
		// Half an answer must not look whole: abort the downstream
		// response (the server closes the connection; a chunked reply
		// lacks its last chunk).
		panic(http.ErrAbortHandler)
	}
	_ = resp.Body.Close() // reads the trailers in
	for k, vv := range resp.Trailer {
		dst[http.TrailerPrefix+k] = vv
	}
	return resp.StatusCode
}

// outgoing is the request sent upstream: r with its own header map, no
// hop-by-hop headers (an upgrade keeps its Connection and Upgrade), and
// the X-Forwarded headers. A request a peer forwarded was made so by the
// peer, which saw the client: its headers go on as they are (adding the
// peer's address to X-Forwarded-For, or "http" as the protocol of a client
// that spoke TLS to the peer, would be wrong).
func outgoing(r *http.Request, fromPeer bool) *http.Request {
	out := new(http.Request)
	*out = *r
	out.RequestURI = ""
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil // no "Transfer-Encoding: chunked" for an empty body
	}
	u := *r.URL
	u.Scheme, u.Host = "http", r.Host
	out.URL = &u
	if fromPeer {
		return out
	}

	h := make(http.Header, len(r.Header)+3)
	for k, vv := range r.Header {
		h[k] = vv
	}
	upgrade := upgradeType(r.Header)
	te := httpguts.HeaderValuesContainsToken(r.Header["Te"], "trailers")
	removeHopHeaders(h)
	if te {
		h["Te"] = []string{"trailers"}
	}
	if upgrade != "" {
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = []string{upgrade}
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // no Go default User-Agent
	}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := h["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h["X-Forwarded-For"] = []string{ip}
	} else {
		delete(h, "X-Forwarded-For")
	}
	h["X-Forwarded-Host"] = []string{r.Host}
	if r.TLS != nil {
		h["X-Forwarded-Proto"] = []string{"https"}
	} else {
		h["X-Forwarded-Proto"] = []string{"http"}
	}
	out.Header = h
	return out
}

// removeHopHeaders deletes the hop-by-hop headers from h, and those the
// Connection header names.
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				delete(h, textproto.CanonicalMIMEHeaderKey(name))
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// upgradeType is the protocol an upgrade request asks for, or "".
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

func isEventStream(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}

// serveUpgrade relays a 101 answer and then copies bytes both ways between
// the downstream connection and the stream, which is the upgraded
// connection now. It returns the status the client was given.
func (p *Proxy) serveUpgrade(w http.ResponseWriter, out *http.Request, resp *http.Response) int {
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		_ = resp.Body.Close()
		return p.fail(w, errors.New("upgraded answer is not a connection"))
	}
	defer back.Close() // pipe closes it too; closing twice is harmless
	if want, got := upgradeType(out.Header), upgradeType(resp.Header); !strings.EqualFold(want, got) {
		return p.fail(w, errors.Join(errUnreachable, errors.New("upstream switched to protocol "+got+", not "+want)))
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be upgraded", http.StatusInternalServerError)
		return http.StatusInternalServerError
	}
	down, brw, err := hj.Hijack()
	if err != nil {
		return http.StatusInternalServerError
	}
	resp.Body = nil
	if err := resp.Write(brw); err == nil {
		err = brw.Flush()
	}
	if err != nil {
		_ = down.Close()
		return http.StatusSwitchingProtocols
	}
	pipe(&bufferedConn{Conn: down, r: brw.Reader}, back)
	return http.StatusSwitchingProtocols
}

// flushingWriter flushes the response after every write.
type flushingWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushingWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// onlyReader and onlyWriter hide a body's WriteTo and the response's
// ReadFrom, so io.CopyBuffer uses the pooled buffer (the response's
// ReadFrom allocated 32 KiB per call).
type (
	onlyReader struct{ io.Reader }
	onlyWriter struct{ io.Writer }
)

// bufferedConn is a hijacked connection read through what the server had
// buffered.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufferedConn) CloseWrite() error { return closeWrite(b.Conn) }

// copyBuffers lends response copy buffers.
type copyBuffers struct{ pool sync.Pool }

const copyBufferSize = 32 << 10

func (b *copyBuffers) get() *[]byte {
	if buf, ok := b.pool.Get().(*[]byte); ok {
		return buf
	}
	buf := make([]byte, copyBufferSize)
	return &buf
}

func (b *copyBuffers) put(buf *[]byte) { b.pool.Put(buf) }
