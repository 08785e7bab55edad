package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The plain downstream listener and peers' streams are served by h1Server,
// an HTTP/1.x server loop of the proxy's own, rather than net/http's.
// Profiled at 16 clients, net/http's server spent a read syscall and a
// goroutine on every request that a proxy does not need: once a request
// has been read it starts a background read on the connection to notice
// the client leaving, and that read always finds nothing (the client is
// waiting for its answer), so it costs a syscall that returns EAGAIN, a
// goroutine and a wake-up to abort it. On loopback a syscall costs more
// than the proxy's own work on a request, and the downstream side made
// four of the proxy's 4.5 syscalls per request.
//
// h1Server reads each request with http.ReadRequest (so parsing, and its
// refusal of ambiguous framing, is the standard library's), hands it to the
// proxy's handler on the connection's goroutine, and writes the answer
// itself: status line and headers once, then the body with a
// Content-Length, chunked, or (HTTP/1.0) until close, as net/http would
// choose. Its one difference: a client that goes away while its request
// waits for the upstream's answer is noticed when that answer is written
// (or when a streamed body is), not at once; the request's context ends
// with the answer. The TLS listener keeps net/http (HTTP/2, ALPN).

const (
	// h1MaxHeaderBytes bounds a request's line and headers, as
	// http.DefaultMaxHeaderBytes does for net/http.
	h1MaxHeaderBytes = http.DefaultMaxHeaderBytes
	// h1MaxDrain is how much of a request body the handler left unread is
	// read away to keep the connection; beyond it the connection closes.
	h1MaxDrain = 256 << 10
	// h1PreBuffer is how much of an answer of unknown length is held back
	// before the headers go out: an answer that ends within it is sent with
	// a Content-Length.
	h1PreBuffer = 2048
)

// h1Server serves HTTP/1.x connections with one handler.
type h1Server struct {
	handler           http.Handler
	logger            *slog.Logger
	readHeaderTimeout time.Duration // 0: none
	idleTimeout       time.Duration // 0: none

	// ctx is the base of the requests of accepted connections; a
	// Shutdown out of time cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	conns   map[*h1Conn]bool // true while a request is being served
	closing bool
	wg      sync.WaitGroup
}

func newH1Server(h http.Handler, logger *slog.Logger, readHeaderTimeout, idleTimeout time.Duration) *h1Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &h1Server{handler: h, logger: logger, readHeaderTimeout: readHeaderTimeout, idleTimeout: idleTimeout,
		ctx: ctx, cancel: cancel, conns: map[*h1Conn]bool{}}
}

// Serve accepts connections on ln until it is closed.
func (s *h1Server) Serve(ln net.Listener) error {
	for {
		nc, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return err
		}
		if !s.track() {
			_ = nc.Close()
			return net.ErrClosed
		}
		go func() {
			defer s.wg.Done()
			s.serveConn(s.ctx, nc)
		}()
	}
}

// ServeConn serves one connection on the calling goroutine, with ctx as
// the base of its requests' contexts (a Shutdown out of time cancels them
// too).
func (s *h1Server) ServeConn(ctx context.Context, nc net.Conn) {
	if !s.track() {
		_ = nc.Close()
		return
	}
	defer s.wg.Done()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	defer context.AfterFunc(s.ctx, stop)()
	s.serveConn(ctx, nc)
}

func (s *h1Server) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *h1Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown refuses new connections, closes the idle ones, and waits until
// the busy ones finish their requests or ctx ends; then it closes the
// rest, cancels their requests, and waits for their handlers. Hijacked
// connections (upgrades) are the handler's to close.
func (s *h1Server) Shutdown(ctx context.Context) {
	defer s.cancel()
	s.mu.Lock()
	s.closing = true
	for c, busy := range s.conns {
		if !busy {
			_ = c.nc.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
	<-done
}

// Close closes every connection at once, cancels their requests and waits
// for their handlers: a Shutdown with no time to wait.
func (s *h1Server) Close() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Shutdown(ctx)
}

// h1Conn is one downstream connection.
type h1Conn struct {
	s  *h1Server
	nc net.Conn
	lr headerLimit
	br *bufio.Reader
	bw *bufio.Writer
}

// headerLimit is the connection's reader, with a budget while a request's
// head is read.
type headerLimit struct {
	r      io.Reader
	budget int64 // <0: unlimited
}

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.budget == 0 {
		return 0, errHeaderTooLarge
	}
	if l.budget > 0 && int64(len(p)) > l.budget {
		p = p[:l.budget]
	}
	n, err := l.r.Read(p)
	if l.budget > 0 {
		l.budget -= int64(n)
	}
	return n, err
}

var errHeaderTooLarge = errors.New("request header too large")

var h1Bufs = sync.Pool{New: func() any {
	return &h1Buffers{br: bufio.NewReaderSize(nil, 4<<10), bw: bufio.NewWriterSize(nil, 4<<10)}
}}

type h1Buffers struct {
	br *bufio.Reader
	bw *bufio.Writer
}

// setState records whether c is serving a request; false if the server is
// shutting down and c, idle, should close.
func (s *h1Server) setState(c *h1Conn, busy bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing && !busy {
		return false
	}
	s.conns[c] = busy
	return true
}

func (s *h1Server) serveConn(ctx context.Context, nc net.Conn) {
	c := &h1Conn{s: s, nc: nc}
	c.lr.r = nc
	c.lr.budget = -1
	bufs := h1Bufs.Get().(*h1Buffers)
	bufs.br.Reset(&c.lr)
	bufs.bw.Reset(nc)
	c.br, c.bw = bufs.br, bufs.bw
	hijacked := false
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		if hijacked {
			return // the handler owns the connection and its buffers
		}
		_ = nc.Close()
		bufs.br.Reset(nil)
		bufs.bw.Reset(nil)
		h1Bufs.Put(bufs)
	}()
	remote := nc.RemoteAddr().String()
	for first := true; ; first = false {
		if !first {
			if !s.setState(c, false) {
				return
			}
			if d := s.idleTimeout; d > 0 {
				_ = nc.SetReadDeadline(time.Now().Add(d))
			}
			if _, err := c.br.Peek(1); err != nil {
				return // closed, or idle for too long
			}
		}
		s.setState(c, true)
		if d := s.readHeaderTimeout; d > 0 {
			_ = nc.SetReadDeadline(time.Now().Add(d))
		} else {
			_ = nc.SetReadDeadline(time.Time{})
		}
		c.lr.budget = h1MaxHeaderBytes + int64(c.br.Buffered())
		req, err := http.ReadRequest(c.br)
		c.lr.budget = -1
		if err != nil {
			c.refuse(err)
			return
		}
		_ = nc.SetReadDeadline(time.Time{})
		keep, hj := c.serveRequest(ctx, req, remote)
		if hj {
			hijacked = true
			return
		}
		if !keep {
			return
		}
	}
}

// refuse answers a request that could not be read, as net/http does, and
// the connection closes.
func (c *h1Conn) refuse(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isTimeout(err) {
		return
	}
	code, msg := http.StatusBadRequest, "400 Bad Request"
	if errors.Is(err, errHeaderTooLarge) {
		code, msg = http.StatusRequestHeaderFieldsTooLarge, "431 Request Header Fields Too Large"
	}
	if strings.Contains(err.Error(), "unsupported protocol version") {
		code, msg = http.StatusHTTPVersionNotSupported, "505 HTTP Version Not Supported"
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(c.bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n%s", code, http.StatusText(code), msg)
	_ = c.bw.Flush()
}

// serveRequest runs the handler on req and finishes its answer. keep says
// whether the connection may carry another request.
func (c *h1Conn) serveRequest(ctx context.Context, req *http.Request, remote string) (keep, hijacked bool) {
	req.RemoteAddr = remote
	if req.ProtoAtLeast(1, 1) && req.Host == "" {
		c.refuse(errors.New("missing required Host header"))
		return false, false
	}
	body := &h1Body{rc: req.Body}
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = body
	} else {
		body.eof = true
	}
	w := &h1Response{c: c, req: req, contentLength: -1}
	if expect := req.Header.Get("Expect"); expect != "" {
		if !strings.EqualFold(expect, "100-continue") || !req.ProtoAtLeast(1, 1) {
			w.closeAfter = true
			w.Header().Set("Connection", "close")
			http.Error(w, "unsupported Expect", http.StatusExpectationFailed)
			w.finish()
			return false, false
		}
		req.Header.Del("Expect")
		body.cont = w
	}
	reqCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	req = req.WithContext(reqCtx)
	if !c.runHandler(w, req) {
		return false, w.hijacked
	}
	if w.hijacked {
		return false, true
	}
	if !w.finish() {
		return false, false
	}
	if !body.drain() {
		return false, false
	}
	return !w.closeAfter && !req.Close, false
}

// runHandler calls the handler, false if it panicked (the connection then
// closes; http.ErrAbortHandler is how a handler cuts an answer short).
func (c *h1Conn) runHandler(w *h1Response, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.s.logger.Error("panic serving a request", "remote", req.RemoteAddr, "panic", v, "stack", string(buf))
			}
			if !w.hijacked {
				_ = c.bw.Flush() // what was written is all the client gets
			}
		}
	}()
	c.s.handler.ServeHTTP(w, req)
	return true
}

// h1Body is a request body that knows whether it was read to its end, and
// sends "100 Continue" before the first read when the client asked.
type h1Body struct {
	rc   io.ReadCloser
	eof  bool
	cont *h1Response // non-nil until 100 Continue is sent
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.cont != nil {
		w := b.cont
		b.cont = nil
		if !w.committed {
			_, _ = w.c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			_ = w.c.bw.Flush()
		}
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error { return nil } // drain decides what is left

// drain reads away what the handler left of the body, up to h1MaxDrain;
// false if the connection cannot carry another request.
func (b *h1Body) drain() bool {
	if b.eof {
		return true
	}
	if b.cont != nil {
		return false // never asked for: the client has not sent it
	}
	n, err := io.CopyN(io.Discard, b.rc, h1MaxDrain+1)
	return err == io.EOF && n <= h1MaxDrain
}

// h1Response is the http.ResponseWriter of one request.
type h1Response struct {
	c      *h1Conn
	req    *http.Request
	header http.Header

	status        int // 0 until WriteHeader
	committed     bool
	bodyAllowed   bool
	contentLength int64 // declared or computed, -1 unknown
	written       int64
	chunked       bool
	closeAfter    bool
	hijacked      bool
	pre           []byte   // body held back before commit (unknown length)
	trailers      []string // declared trailer fields not among the headers sent
}

func (w *h1Response) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header)
	}
	return w.header
}

func (w *h1Response) WriteHeader(code int) {
	if w.hijacked || w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An informational answer goes out at once; the final one follows.
		w.writeStatusLine(code)
		w.writeHeaderFields()
		_, _ = w.c.bw.WriteString("\r\n")
		_ = w.c.bw.Flush()
		return
	}
	w.status = code
	w.bodyAllowed = w.req.Method != http.MethodHead && code != http.StatusNoContent &&
		code != http.StatusNotModified && code != http.StatusSwitchingProtocols
	if cl := w.header.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.contentLength = n
		} else {
			w.header.Del("Content-Length")
		}
	}
	if w.contentLength >= 0 || !w.bodyAllowed {
		w.commit()
	}
}

func (w *h1Response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed {
		return 0, http.ErrBodyNotAllowed
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		return 0, http.ErrContentLength
	}
	if !w.committed {
		if len(w.pre)+len(p) <= h1PreBuffer {
			w.pre = append(w.pre, p...)
			w.written += int64(len(p))
			return len(p), nil
		}
		w.commit()
	}
	w.written += int64(len(p))
	return w.writeBody(p)
}

func (w *h1Response) writeBody(p []byte) (int, error) {
	if !w.chunked {
		return w.c.bw.Write(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	bw := w.c.bw
	_, _ = bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
	_, _ = bw.WriteString("\r\n")
	n, err := bw.Write(p)
	if err == nil {
		_, err = bw.WriteString("\r\n")
	}
	return n, err
}

// commit writes the status line and headers, choosing the body's framing;
// what was held back follows.
func (w *h1Response) commit() {
	if w.committed {
		return
	}
	w.committed = true
	h := w.Header()
	switch {
	case !w.bodyAllowed:
		if w.status == http.StatusNoContent || w.status == http.StatusNotModified {
			h.Del("Content-Length")
		}
		h.Del("Transfer-Encoding")
	case w.contentLength >= 0:
		h.Del("Transfer-Encoding")
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
		h.Del("Content-Length")
		h["Transfer-Encoding"] = []string{"chunked"}
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	if w.chunked {
		for _, names := range h["Trailer"] {
			for name := range strings.SplitSeq(names, ",") {
				if name = http.CanonicalHeaderKey(strings.TrimSpace(name)); name != "" {
					if _, sent := h[name]; !sent {
						w.trailers = append(w.trailers, name)
					}
				}
			}
		}
	}
	if w.status != http.StatusSwitchingProtocols {
		if w.req.Close || !w.keepAliveOK() || w.c.s.isClosing() || httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
			w.closeAfter = true
		}
		if w.closeAfter {
			h["Connection"] = []string{"close"}
		} else if !w.req.ProtoAtLeast(1, 1) {
			h["Connection"] = []string{"keep-alive"}
		}
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{time.Now().UTC().Format(http.TimeFormat)}
	}
	w.writeStatusLine(w.status)
	w.writeHeaderFields()
	_, _ = w.c.bw.WriteString("\r\n")
	if len(w.pre) > 0 {
		pre := w.pre
		w.pre = nil
		_, _ = w.writeBody(pre)
	}
}

// keepAliveOK: an HTTP/1.0 client keeps the connection only when it asked
// to and the answer's end is known.
func (w *h1Response) keepAliveOK() bool {
	if w.req.ProtoAtLeast(1, 1) {
		return true
	}
	return httpguts.HeaderValuesContainsToken(w.req.Header["Connection"], "keep-alive") &&
		(w.contentLength >= 0 || !w.bodyAllowed)
}

func (w *h1Response) writeStatusLine(code int) {
	bw := w.c.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	_, _ = bw.WriteString(strconv.Itoa(code))
	_ = bw.WriteByte(' ')
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	_, _ = bw.WriteString(text)
	_, _ = bw.WriteString("\r\n")
}

// writeHeaderFields writes the header map, leaving out trailer values set
// ahead ("Trailer:"-prefixed keys).
func (w *h1Response) writeHeaderFields() {
	for k, vv := range w.header {
		if !strings.HasPrefix(k, http.TrailerPrefix) {
			writeField(w.c.bw, k, vv)
		}
	}
}

var newlineToSpace = strings.NewReplacer("\r", " ", "\n", " ")

// writeField writes one field line per value, skipping a name that is not
// valid and turning CR and LF in a value into spaces, as http.Header.Write
// does, so a value cannot split the header.
func writeField(bw *bufio.Writer, k string, vv []string) {
	if !httpguts.ValidHeaderFieldName(k) {
		return
	}
	for _, v := range vv {
		_, _ = bw.WriteString(k)
		_, _ = bw.WriteString(": ")
		if strings.ContainsAny(v, "\r\n") {
			v = newlineToSpace.Replace(v)
		}
		_, _ = bw.WriteString(v)
		_, _ = bw.WriteString("\r\n")
	}
}

// Flush sends what has been written; an answer of unknown length is
// chunked from here on.
func (w *h1Response) Flush() {
	if w.hijacked {
		return
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.commit()
	_ = w.c.bw.Flush()
}

// Hijack hands the connection to the handler (upgrades, berth-tcp).
func (w *h1Response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.committed {
		_ = w.c.bw.Flush()
	}
	w.hijacked = true
	_ = w.c.nc.SetDeadline(time.Time{})
	return w.c.nc, bufio.NewReadWriter(w.c.br, w.c.bw), nil
}

// finish completes the answer after the handler returned: headers if none
// went out, the held-back body with its length, the last chunk and the
// trailers. false if the connection must close.
func (w *h1Response) finish() bool {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.contentLength = int64(len(w.pre))
		w.Header()["Content-Length"] = []string{strconv.Itoa(len(w.pre))}
		w.commit()
	}
	if w.chunked {
		_, _ = w.c.bw.WriteString("0\r\n")
		w.writeTrailers()
		_, _ = w.c.bw.WriteString("\r\n")
	}
	if err := w.c.bw.Flush(); err != nil {
		return false
	}
	if w.bodyAllowed && w.contentLength >= 0 && w.written < w.contentLength {
		return false // the answer is shorter than it said: the client must see it cut
	}
	return !w.closeAfter
}

// writeTrailers writes the fields declared in the Trailer header (set
// after the headers went out) and those set with http.TrailerPrefix.
func (w *h1Response) writeTrailers() {
	for _, name := range w.trailers {
		if vv, ok := w.header[name]; ok {
			writeField(w.c.bw, name, vv)
		}
	}
	for k, vv := range w.header {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			writeField(w.c.bw, name, vv)
		}
	}
}
