package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Streams are pooled: HTTP requests to the same target and endpoint reuse
// an idle tunnel stream (HTTP/1.1 keep-alive inside the stream), so a
// request costs neither a stream handshake nor, behind the agent, a new
// upstream connection. Retiring a connection drops its pools.
//
// The pool is its own HTTP/1.1 client rather than an http.Transport: a
// request is written and its response read on the goroutine that serves
// the downstream request. http.Transport hands every request to a writer
// goroutine and every response from a reader goroutine, four wake-ups a
// request that cost more CPU than the proxying itself. A body too large
// to send before the answer (or of unknown length) is still written from
// its own goroutine, so an upstream may answer while it uploads.

// Pool limits, as http.Transport's were.
const (
	maxIdlePerPool = 256
	idleTimeout    = 90 * time.Second
	// inlineBody is the largest request body written before the response
	// is read, on the serving goroutine.
	inlineBody = 64 << 10
)

// dialError marks a failure to open a stream: nothing reached the
// upstream, so the request may go to another target.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

type poolKey struct {
	conn     string // local connection id ("" for a peer target)
	peer     string
	peerConn string // the connection a peer should use ("" for any)
	endpoint string
}

func keyOf(t target, endpoint string) poolKey {
	if t.local != nil {
		return poolKey{conn: t.local.id, endpoint: endpoint}
	}
	return poolKey{peer: t.peer, peerConn: t.connID, endpoint: endpoint}
}

// streamPools holds one pool per (target, endpoint).
type streamPools struct {
	p  *Proxy
	mu sync.Mutex
	m  map[poolKey]*streamPool
}

func newStreamPools(p *Proxy) *streamPools {
	return &streamPools{p: p, m: map[poolKey]*streamPool{}}
}

func (ps *streamPools) get(t target, endpoint string) *streamPool {
	k := keyOf(t, endpoint)
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if sp := ps.m[k]; sp != nil {
		return sp
	}
	hdr := &berthv1.StreamHeader{Endpoint: endpoint, Kind: berthv1.StreamKind_STREAM_KIND_HTTP}
	sp := &streamPool{open: func(ctx context.Context) (net.Conn, error) { return ps.p.openOn(ctx, t, hdr) },
		headerTimeout: ps.p.cfg.Edge.UpstreamHeaderTimeout}
	ps.m[k] = sp
	return sp
}

// dropConn forgets every pool of local connection id and closes their idle
// streams; streams carrying requests finish on their own.
func (ps *streamPools) dropConn(id string) {
	ps.drop(func(k poolKey) bool { return k.conn == id })
}

func (ps *streamPools) drop(match func(poolKey) bool) {
	ps.mu.Lock()
	var gone []*streamPool
	for k, sp := range ps.m {
		if match(k) {
			gone = append(gone, sp)
			delete(ps.m, k)
		}
	}
	ps.mu.Unlock()
	for _, sp := range gone {
		sp.close()
	}
}

func (ps *streamPools) closeAll() {
	ps.drop(func(poolKey) bool { return true })
}

// streamPool is the idle streams of one target and endpoint, most recently
// used last.
type streamPool struct {
	open func(context.Context) (net.Conn, error)
	// headerTimeout bounds the wait for a response's head (0: none).
	headerTimeout time.Duration

	mu     sync.Mutex
	idle   []*httpStream
	sweep  *time.Timer // closes streams idle for idleTimeout
	closed bool
}

// httpStream is one tunnel stream carrying HTTP/1.1.
type httpStream struct {
	conn      net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
}

func (hs *httpStream) close() { _ = hs.conn.Close() }

// take returns an idle stream that is still open, or nil.
func (sp *streamPool) take() *httpStream {
	for {
		sp.mu.Lock()
		n := len(sp.idle)
		if n == 0 {
			sp.mu.Unlock()
			return nil
		}
		hs := sp.idle[n-1]
		sp.idle[n-1] = nil
		sp.idle = sp.idle[:n-1]
		sp.mu.Unlock()
		if time.Since(hs.idleSince) < idleTimeout && hs.stillOpen() {
			return hs
		}
		hs.close()
	}
}

// stillOpen reports whether an idle stream can carry a request: the
// other side has not closed it (an upstream ending a keep-alive
// connection closes the stream through the agent) and sent nothing
// unasked for. The stream is in memory, so the check costs no syscall.
func (hs *httpStream) stillOpen() bool {
	if hs.br.Buffered() > 0 {
		return false
	}
	_ = hs.conn.SetReadDeadline(time.Now())
	_, err := hs.br.Peek(1)
	_ = hs.conn.SetReadDeadline(time.Time{})
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// put returns a stream whose last response was read whole.
func (sp *streamPool) put(hs *httpStream) {
	hs.idleSince = time.Now()
	sp.mu.Lock()
	if sp.closed || len(sp.idle) >= maxIdlePerPool {
		sp.mu.Unlock()
		hs.close()
		return
	}
	sp.idle = append(sp.idle, hs)
	if sp.sweep == nil {
		sp.sweep = time.AfterFunc(idleTimeout, sp.sweepIdle)
	}
	sp.mu.Unlock()
}

// sweepIdle closes streams idle for idleTimeout and, while any stay idle,
// comes back when the oldest of them would expire.
func (sp *streamPool) sweepIdle() {
	now := time.Now()
	sp.mu.Lock()
	var old []*httpStream
	keep := sp.idle[:0]
	for _, hs := range sp.idle {
		if now.Sub(hs.idleSince) >= idleTimeout {
			old = append(old, hs)
		} else {
			keep = append(keep, hs)
		}
	}
	clear(sp.idle[len(keep):])
	sp.idle = keep
	sp.sweep = nil
	if len(keep) > 0 && !sp.closed {
		sp.sweep = time.AfterFunc(idleTimeout-now.Sub(keep[0].idleSince), sp.sweepIdle)
	}
	sp.mu.Unlock()
	for _, hs := range old {
		hs.close()
	}
}

func (sp *streamPool) close() {
	sp.mu.Lock()
	idle := sp.idle
	sp.idle, sp.closed = nil, true
	if sp.sweep != nil {
		sp.sweep.Stop()
	}
	sp.mu.Unlock()
	for _, hs := range idle {
		hs.close()
	}
}

// roundTrip sends req on a pooled stream, or a new one. A reused stream
// that fails before any answer (its upstream closed the connection as the
// request went out) is replaced once for a request that may be repeated.
// A failure to open a new stream is a *dialError.
func (sp *streamPool) roundTrip(req *http.Request) (*http.Response, error) {
	for retried := false; ; retried = true {
		hs := sp.take()
		reused := hs != nil
		if hs == nil {
			c, err := sp.open(req.Context())
			if err != nil {
				return nil, &dialError{err}
			}
			hs = &httpStream{conn: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}
		}
		resp, err := sp.send(hs, req)
		if err == nil {
			return resp, nil
		}
		var na *noAnswer
		if !reused || retried || !errors.As(err, &na) || !repeatable(req) || req.Context().Err() != nil {
			return nil, err
		}
		if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
			if req.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
	}
}

// noAnswer is a stream that ended before the first byte of a response.
type noAnswer struct{ err error }

func (e *noAnswer) Error() string { return "no response: " + e.err.Error() }
func (e *noAnswer) Unwrap() error { return e.err }

// repeatable is http.Transport's rule for sending a request again after a
// reused connection failed: an idempotent method, or an idempotency key,
// and a body that can be read again.
func repeatable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// send writes req on hs and reads the response head. The response body
// reads from the stream and, at its end, returns the stream to the pool.
func (sp *streamPool) send(hs *httpStream, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// Cancelling the request unblocks any read or write on the stream.
	stop := context.AfterFunc(ctx, func() { _ = hs.conn.SetDeadline(time.Now()) })
	fail := func(err error) (*http.Response, error) {
		stop()
		hs.close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, err
	}

	var wrote chan error // set when the body is written from its own goroutine
	if req.Body == nil || req.Body == http.NoBody || (req.ContentLength > 0 && req.ContentLength <= inlineBody) {
		if err := writeRequest(hs.bw, req); err != nil {
			// Nothing was answered: a reused stream whose session just
			// ended fails here, and a repeatable request may go again.
			return fail(&noAnswer{fmt.Errorf("writing the request: %w", err)})
		}
	} else {
		wrote = make(chan error, 1)
		go func() { wrote <- writeRequest(hs.bw, req) }()
	}

	trace := httptrace.ContextClientTrace(ctx)
	if sp.headerTimeout > 0 {
		_ = hs.conn.SetReadDeadline(time.Now().Add(sp.headerTimeout))
	}
	for {
		resp, err := http.ReadResponse(hs.br, req)
		if err != nil && sp.headerTimeout > 0 && ctx.Err() == nil && isTimeout(err) {
			return fail(fmt.Errorf("%w: none within %s", errUpstreamHeaderTimeout, sp.headerTimeout))
		}
		if err == nil && sp.headerTimeout > 0 && (resp.StatusCode < 100 || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols) {
			clearReadDeadline(ctx, hs.conn)
		}
		if err != nil {
			if wrote != nil {
				if werr := <-wrote; werr != nil {
					err = fmt.Errorf("writing the request: %w (%w)", werr, err)
				}
			}
			return fail(&noAnswer{err})
		}
		// 1xx answers come before the real one; 101 is the real one.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return fail(err)
				}
			}
			continue
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			if wrote != nil {
				if err := <-wrote; err != nil {
					return fail(fmt.Errorf("writing the request: %w", err))
				}
			}
			// The stream is the upgraded connection now; it is never pooled.
			stop()
			resp.Body = &upgradedStream{Reader: hs.br, hs: hs}
			return resp, nil
		}
		resp.Body = &pooledBody{body: resp.Body, sp: sp, hs: hs, stop: stop, wrote: wrote,
			reuse: !resp.Close && !req.Close}
		return resp, nil
	}
}

// writeRequest writes req and flushes it to the stream in one write.
func writeRequest(bw *bufio.Writer, req *http.Request) error {
	if err := req.Write(bw); err != nil {
		return err
	}
	return bw.Flush()
}

// pooledBody is a response body on a pooled stream: read to its end and
// closed, it gives the stream back; closed early, it closes the stream.
type pooledBody struct {
	body  io.ReadCloser
	sp    *streamPool
	hs    *httpStream
	stop  func() bool
	wrote chan error
	reuse bool
	eof   bool
	done  bool
}

func (b *pooledBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("read on a closed response body")
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *pooledBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	_ = b.body.Close()
	reuse := b.eof && b.reuse
	if b.wrote != nil {
		// A request still uploading after its answer is whole (or a
		// failed upload) leaves the stream unusable: closing it ends the
		// upload, whose goroutine returns once its write fails.
		select {
		case err := <-b.wrote:
			reuse = reuse && err == nil
		default:
			reuse = false
		}
	}
	// A cancelled request may have set the stream's deadline.
	if !b.stop() || !reuse {
		b.hs.close()
		return nil
	}
	b.sp.put(b.hs)
	return nil
}

// upgradedStream is the body of a 101 response: the stream itself, read
// through what was buffered with the response head.
type upgradedStream struct {
	io.Reader
	hs   *httpStream
	once sync.Once
}

func (u *upgradedStream) Write(p []byte) (int, error) { return u.hs.conn.Write(p) }

func (u *upgradedStream) Close() error {
	u.once.Do(u.hs.close)
	return nil
}

// CloseWrite passes a half-close on to the stream.
func (u *upgradedStream) CloseWrite() error { return closeWrite(u.hs.conn) }
