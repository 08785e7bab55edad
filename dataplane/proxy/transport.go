package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// errAllRefused: every candidate refused the stream; nothing was sent.
var errAllRefused = errors.New("every upstream connection refused the stream")

// replayLimit is the largest request body kept in memory so the request
// can go to another target if the first one turns it away unsent.
const replayLimit = 64 << 10

// roundTrip sends one request to the first candidate target that takes it.
// A target that cannot open a stream is skipped (nothing was sent), and so
// is a peer that answers that it sent nothing upstream (its connection
// moved away a moment ago): the request goes to the next candidate, and if
// none is left, candidates are looked up again briefly while the
// directory catches up with a move. Any other failure ends the request,
// since an upstream may have seen it.
func (p *Proxy) roundTrip(req *http.Request, rt route) (*http.Response, error) {
	replayable, release, err := p.bodies.makeReplayable(req)
	if err != nil {
		return nil, err
	}
	// Every attempt has written the body by the time roundTrip returns: a
	// replayable body is at most inlineBody, which goes out before the
	// answer is read.
	defer release()
	var last error
	for attempt := 0; ; attempt++ {
		cands, err := p.candidates(rt)
		if errors.Is(err, errNoUpstream) && p.awaitDirectory(req.Context()) {
			cands, err = p.candidates(rt)
		}
		if err != nil && (last == nil || !errors.Is(err, errNoUpstream)) {
			return nil, err
		}
		for _, t := range cands {
			if t.local != nil && !t.local.usable() {
				continue
			}
			if req.GetBody != nil && req.Body != nil && req.Body != http.NoBody {
				if req.Body, err = req.GetBody(); err != nil {
					return nil, err
				}
			}
			resp, err := p.tryTarget(req, t, rt.endpoint)
			if err == nil {
				rt.acc.served(t)
				return resp, nil
			}
			if !notSent(err) || !replayable {
				return nil, errors.Join(errUnreachable, err)
			}
			last = err
			p.metrics.streamFailures.WithLabelValues(kindOf(t)).Inc()
		}
		if !replayable || attempt >= 4 || rt.peerHop {
			break
		}
		select {
		case <-req.Context().Done():
			return nil, req.Context().Err()
		case <-time.After(time.Duration(25<<attempt) * time.Millisecond):
		}
	}
	if last == nil {
		return nil, errUnreachable
	}
	return nil, errors.Join(errUnreachable, errAllRefused, last)
}

// tryTarget sends req to one target. A dial failure, or a peer's "not
// sent" answer, comes back as an error for which notSent holds.
func (p *Proxy) tryTarget(req *http.Request, t target, endpoint string) (*http.Response, error) {
	done := p.begin(t)
	resp, err := p.pools.get(t, endpoint).roundTrip(req)
	if err != nil {
		done()
		var de *dialError
		if errors.As(err, &de) && req.Context().Err() == nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	if t.local == nil && resp.Header.Get(RetryHeader) != "" {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
		done()
		return nil, &dialError{fmt.Errorf("%s: peer sent nothing upstream: %s", t, resp.Header.Get(ErrorHeader))}
	}
	resp.Body = finishOnClose(resp.Body, done)
	return resp, nil
}

// bodyBuffers lends the buffers that hold replayable request bodies, in
// three sizes up to replayLimit.
type bodyBuffers struct{ pools [3]sync.Pool }

var bodyBufferSizes = [3]int{4 << 10, 16 << 10, replayLimit}

// makeReplayable lets req be sent again: a request without a body always
// can; a small body of known length is read into a pooled buffer first,
// which release gives back. Larger or streamed bodies go once.
func (b *bodyBuffers) makeReplayable(req *http.Request) (replayable bool, release func(), err error) {
	release = func() {}
	if req.Body == nil || req.Body == http.NoBody || req.GetBody != nil {
		return true, release, nil
	}
	if req.ContentLength <= 0 || req.ContentLength > replayLimit {
		return false, release, nil
	}
	class := 0
	for int64(bodyBufferSizes[class]) < req.ContentLength {
		class++
	}
	bufp, _ := b.pools[class].Get().(*[]byte)
	if bufp == nil {
		buf := make([]byte, bodyBufferSizes[class])
		bufp = &buf
	}
	body := (*bufp)[:req.ContentLength]
	if _, err := io.ReadFull(req.Body, body); err != nil {
		b.pools[class].Put(bufp)
		return false, release, fmt.Errorf("reading the request body: %w", err)
	}
	_ = req.Body.Close()
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	req.Body, _ = req.GetBody()
	return true, func() { b.pools[class].Put(bufp) }, nil
}

// begin counts a request in flight on a local target (least-loaded
// routing and draining both read it) and returns its end.
func (p *Proxy) begin(t target) func() {
	if t.local == nil {
		return func() {}
	}
	t.local.outstanding.Add(1)
	var once sync.Once
	return func() { once.Do(func() { t.local.outstanding.Add(-1) }) }
}

// finishOnClose runs done when the response body is closed, keeping the
// io.ReadWriteCloser of an upgraded (101) response.
func finishOnClose(body io.ReadCloser, done func()) io.ReadCloser {
	if rwc, ok := body.(io.ReadWriteCloser); ok {
		return &upgradedBody{ReadWriteCloser: rwc, done: done}
	}
	return &finishingBody{ReadCloser: body, done: done}
}

type finishingBody struct {
	io.ReadCloser
	done func()
}

func (b *finishingBody) Close() error {
	defer b.done()
	return b.ReadCloser.Close()
}

type upgradedBody struct {
	io.ReadWriteCloser
	done func()
}

// CloseWrite passes a half-close on to the upgraded stream.
func (b *upgradedBody) CloseWrite() error { return closeWrite(b.ReadWriteCloser) }

func (b *upgradedBody) Close() error {
	defer b.done()
	return b.ReadWriteCloser.Close()
}
