package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// yamuxHTTP serves h over yamux streams on a loopback TCP connection, as
// an agent's streams reach an upstream, and returns a pool whose streams
// open on it, with the server's connection events.
type yamuxHTTP struct {
	pool   *streamPool
	opened atomic.Int64
	closed chan struct{} // one send per server connection closed
}

type connKey struct{}

func newYamuxHTTP(t *testing.T, h http.Handler, idle time.Duration) *yamuxHTTP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc := <-accepted
	_ = ln.Close()
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	server, err := yamux.Server(sc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := yamux.Client(cc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	y := &yamuxHTTP{closed: make(chan struct{}, 100)}
	srv := &http.Server{
		Handler:     h,
		IdleTimeout: idle,
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, new(atomic.Int64))
		},
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				y.opened.Add(1)
			case http.StateClosed, http.StateHijacked:
				y.closed <- struct{}{}
			}
		},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(server)
	}()
	y.pool = &streamPool{open: func(context.Context) (net.Conn, error) { return client.Open() }}
	t.Cleanup(func() {
		y.pool.close()
		_ = client.Close()
		_ = srv.Close()
		<-done
	})
	return y
}

// call sends one request through the pool and reads the whole answer.
func (y *yamuxHTTP) call(t *testing.T, method, path string, body []byte) (int, string, error) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://upstream"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := y.pool.roundTrip(req)
	if err != nil {
		return 0, "", err
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, string(b), err
}

func echo(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	_, _ = w.Write(append([]byte(r.Method+" "), b...))
}

func TestStreamPoolReusesStreams(t *testing.T) {
	y := newYamuxHTTP(t, http.HandlerFunc(echo), 0)
	for i := range 20 {
		code, body, err := y.call(t, http.MethodPost, "/", []byte(strings.Repeat("x", i)))
		if err != nil || code != http.StatusOK || body != "POST "+strings.Repeat("x", i) {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}
	if n := y.opened.Load(); n != 1 {
		t.Fatalf("20 sequential requests opened %d streams, want 1", n)
	}

	// Concurrent requests each need a stream; afterwards they are all
	// reused.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				if code, _, err := y.call(t, http.MethodGet, "/", nil); err != nil || code != http.StatusOK {
					t.Errorf("concurrent: %d %v", code, err)
				}
			}
		})
	}
	wg.Wait()
	if n := y.opened.Load(); n > 9 {
		t.Fatalf("8 clients opened %d streams, want at most 9", n)
	}
}

func TestStreamPoolSkipsStreamsTheUpstreamClosed(t *testing.T) {
	y := newYamuxHTTP(t, http.HandlerFunc(echo), 20*time.Millisecond)
	if _, _, err := y.call(t, http.MethodPost, "/", []byte("one")); err != nil {
		t.Fatal(err)
	}
	// The upstream ends the idle keep-alive connection; its stream's FIN
	// reaches the pool a moment later.
	<-y.closed
	time.Sleep(100 * time.Millisecond)
	// A POST is never sent twice, so it only succeeds if the pool saw
	// the closed stream before using it.
	code, body, err := y.call(t, http.MethodPost, "/", []byte("two"))
	if err != nil || code != http.StatusOK || body != "POST two" {
		t.Fatalf("after the upstream closed the idle stream: %d %q %v", code, body, err)
	}
	if n := y.opened.Load(); n != 2 {
		t.Fatalf("opened %d streams, want 2", n)
	}
}

// TestStreamPoolRetriesOnlyRepeatableRequests: a reused stream that dies
// before answering is replaced for a GET, not for a POST.
func TestStreamPoolRetriesOnlyRepeatableRequests(t *testing.T) {
	y := newYamuxHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The second request on any connection is dropped unanswered.
		if r.Context().Value(connKey{}).(*atomic.Int64).Add(1) == 2 {
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = c.Close()
			}
			return
		}
		echo(w, r)
	}), 0)
	for i, want := range []string{"GET ", "GET "} {
		if code, body, err := y.call(t, http.MethodGet, "/", nil); err != nil || code != http.StatusOK || body != want {
			t.Fatalf("GET %d: %d %q %v", i, code, body, err)
		}
	}
	if n := y.opened.Load(); n != 2 {
		t.Fatalf("opened %d streams, want 2 (the retry on a new one)", n)
	}
	// Stream two has answered once; a POST on it is dropped and not sent
	// again.
	if _, _, err := y.call(t, http.MethodPost, "/", []byte("once")); err == nil {
		t.Fatal("a POST whose stream died unanswered succeeded; it must not be sent twice")
	}
}

// TestStreamPoolEarlyAnswerToUpload: an upstream that answers before
// reading a large body ends that stream; the next request gets a new one.
func TestStreamPoolEarlyAnswerToUpload(t *testing.T) {
	y := newYamuxHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > 1<<20 {
			w.Header().Set("Connection", "close")
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		echo(w, r)
	}), 0)
	code, _, err := y.call(t, http.MethodPost, "/", bytes.Repeat([]byte("u"), 8<<20))
	if err != nil || code != http.StatusRequestEntityTooLarge {
		t.Fatalf("large upload: %d %v", code, err)
	}
	code, body, err := y.call(t, http.MethodPost, "/", []byte("small"))
	if err != nil || code != http.StatusOK || body != "POST small" {
		t.Fatalf("after the upload: %d %q %v", code, body, err)
	}
	if n := y.opened.Load(); n != 2 {
		t.Fatalf("opened %d streams, want 2", n)
	}
}

// writeFails is a stream whose session ended between the idle check and
// the request write: reads still see an open stream, writes fail.
type writeFails struct{ net.Conn }

func (writeFails) Write([]byte) (int, error) { return 0, yamux.ErrSessionShutdown }

// TestStreamPoolRetriesAFailedWrite: a reused stream that cannot take the
// request counts as unanswered, so a GET goes again on a new stream and a
// POST is refused rather than risked.
func TestStreamPoolRetriesAFailedWrite(t *testing.T) {
	y := newYamuxHTTP(t, http.HandlerFunc(echo), 0)
	breakIdle := func() {
		t.Helper()
		y.pool.mu.Lock()
		defer y.pool.mu.Unlock()
		if len(y.pool.idle) != 1 {
			t.Fatalf("%d idle streams, want 1", len(y.pool.idle))
		}
		hs := y.pool.idle[0]
		hs.bw.Reset(writeFails{hs.conn})
	}
	if _, _, err := y.call(t, http.MethodGet, "/", nil); err != nil {
		t.Fatal(err)
	}
	breakIdle()
	if code, body, err := y.call(t, http.MethodGet, "/", nil); err != nil || code != http.StatusOK || body != "GET " {
		t.Fatalf("GET on a stream whose write fails: %d %q %v", code, body, err)
	}
	if n := y.opened.Load(); n != 2 {
		t.Fatalf("opened %d streams, want 2 (the retry on a new one)", n)
	}
	breakIdle()
	if _, _, err := y.call(t, http.MethodPost, "/", []byte("once")); err == nil {
		t.Fatal("a POST went again after a failed write; it must not be retried")
	}
}
