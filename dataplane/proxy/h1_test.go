package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// startH1 serves h on a loopback listener until the test ends.
func startH1(t *testing.T, h http.Handler, readHeader, idle time.Duration) (*h1Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newH1Server(h, slog.New(slog.DiscardHandler), readHeader, idle)
	done := make(chan struct{})
	go func() { _ = s.Serve(ln); close(done) }()
	t.Cleanup(func() {
		_ = ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return s, ln.Addr().String()
}

// dialRaw connects to addr for a hand-written exchange, closed when the
// test ends, with a deadline that keeps a hang from stalling the suite.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// exchange writes raw to a new connection and reads one response.
func exchange(t *testing.T, addr, raw string) (*http.Response, string) {
	t.Helper()
	c := dialRaw(t, addr)
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestH1KeepAliveCarriesManyRequestsOnOneConnection(t *testing.T) {
	var conns atomic.Int32
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = w.Write(body)
	}), time.Second, time.Minute)
	tr := &http.Transport{DialContext: func(ctx context.Context, n, a string) (net.Conn, error) {
		conns.Add(1)
		return (&net.Dialer{}).DialContext(ctx, n, a)
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	for i := range 20 {
		want := strings.Repeat("x", i*100)
		resp, err := client.Post("http://"+addr+"/echo", "text/plain", strings.NewReader(want))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if string(got) != want || resp.ContentLength != int64(len(want)) {
			t.Fatalf("request %d: got %d bytes (Content-Length %d), want %d", i, len(got), resp.ContentLength, len(want))
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 requests used %d connections, want 1", n)
	}
}

func TestH1FramesAnswersOfUnknownLength(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/small":
			_, _ = io.WriteString(w, "short answer")
		case "/big":
			w.Header().Set("Trailer", "X-Sum")
			for range 10 {
				_, _ = w.Write([]byte(strings.Repeat("y", 1000)))
			}
			w.Header().Set("X-Sum", "10000")
			w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
		case "/flushed":
			_, _ = io.WriteString(w, "first")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, " second")
		}
	}), time.Second, time.Minute)

	resp, body := exchange(t, addr, "GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp.ContentLength != int64(len("short answer")) || body != "short answer" || resp.Header.Get("Date") == "" {
		t.Fatalf("small: Content-Length %d, body %q, Date %q", resp.ContentLength, body, resp.Header.Get("Date"))
	}
	resp, body = exchange(t, addr, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || len(body) != 10000 {
		t.Fatalf("big: transfer encoding %v, %d bytes", resp.TransferEncoding, len(body))
	}
	if resp.Trailer.Get("X-Sum") != "10000" || resp.Trailer.Get("X-Late") != "yes" {
		t.Fatalf("big: trailers %v", resp.Trailer)
	}
	resp, body = exchange(t, addr, "GET /flushed HTTP/1.1\r\nHost: a\r\n\r\n")
	if body != "first second" || resp.ContentLength != -1 {
		t.Fatalf("flushed: body %q, Content-Length %d", body, resp.ContentLength)
	}
	// HTTP/1.0 has no chunks: the body ends with the connection.
	resp, body = exchange(t, addr, "GET /big HTTP/1.0\r\n\r\n")
	if len(body) != 10000 || !resp.Close {
		t.Fatalf("HTTP/1.0: %d bytes, close %v", len(body), resp.Close)
	}
}

func TestH1HeadAndNoContentCarryNoBody(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/204" {
			w.WriteHeader(http.StatusNoContent)
			if _, err := w.Write([]byte("x")); err != http.ErrBodyNotAllowed {
				panic("a 204 took a body")
			}
			return
		}
		w.Header().Set("Content-Length", "5")
		_, _ = io.WriteString(w, "hello")
	}), time.Second, time.Minute)
	c := dialRaw(t, addr)
	_, _ = io.WriteString(c, "HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(c)
	head, err := http.ReadResponse(br, &http.Request{Method: http.MethodHead})
	if err != nil || head.ContentLength != 5 {
		t.Fatalf("HEAD: %v, Content-Length %d", err, head.ContentLength)
	}
	noContent, err := http.ReadResponse(br, nil)
	if err != nil || noContent.StatusCode != http.StatusNoContent {
		t.Fatalf("204: %v %v", err, noContent)
	}
	get, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(get.Body); string(b) != "hello" {
		t.Fatalf("GET after HEAD and 204: %q (a stray body would shift it)", b)
	}
}

func TestH1RefusesBadRequests(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("the handler saw a request it should not: %s %s", r.Method, r.URL)
	}), time.Second, time.Minute)
	for _, tc := range []struct {
		name, raw string
		code      int
	}{
		{"garbage", "NOT HTTP AT ALL\r\n\r\n", http.StatusBadRequest},
		{"no host", "GET / HTTP/1.1\r\n\r\n", http.StatusBadRequest},
		{"conflicting lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", http.StatusBadRequest},
		{"bad chunking", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", http.StatusBadRequest},
		{"header too large", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("z", h1MaxHeaderBytes+10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := exchange(t, addr, tc.raw)
			if resp.StatusCode != tc.code || !resp.Close {
				t.Fatalf("status %d (close %v), want %d and close", resp.StatusCode, resp.Close, tc.code)
			}
		})
	}
}

func TestH1RefusesAnExpectationItCannotMeet(t *testing.T) {
	called := false
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called = true }), time.Second, time.Minute)
	resp, _ := exchange(t, addr, "GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n")
	if resp.StatusCode != http.StatusExpectationFailed || !resp.Close || called {
		t.Fatalf("unknown Expect: status %d, close %v, handler called %v; want 417, close, not called", resp.StatusCode, resp.Close, called)
	}
}

func TestH1ContinuesOnlyWhenTheBodyIsRead(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/read" {
			b, _ := io.ReadAll(r.Body)
			_, _ = w.Write(b)
			return
		}
		http.Error(w, "no thanks", http.StatusForbidden)
	}), time.Second, time.Minute)
	c := dialRaw(t, addr)
	br := bufio.NewReader(c)
	_, _ = io.WriteString(c, "POST /read HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	cont, err := http.ReadResponse(br, nil)
	if err != nil || cont.StatusCode != http.StatusContinue {
		t.Fatalf("want 100 Continue first: %v %v", err, cont)
	}
	_, _ = io.WriteString(c, "data")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "data" {
		t.Fatalf("body %q", b)
	}
	// Refused without reading: no 100, and the connection closes (the
	// client never sent the body, so nothing is left to skip).
	_, _ = io.WriteString(c, "POST /refuse HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("refusal: %v %v", err, resp)
	}
	_, _ = io.ReadAll(resp.Body)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection still open after a refused 100-continue: %v", err)
	}
}

func TestH1DrainsAnUnreadBodyOrCloses(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), time.Second, time.Minute)
	c := dialRaw(t, addr)
	br := bufio.NewReader(c)
	small := strings.Repeat("s", 1000)
	_, _ = fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%sGET /next HTTP/1.1\r\nHost: a\r\n\r\n", len(small), small)
	for i := range 2 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if b, _ := io.ReadAll(resp.Body); string(b) != "ok" {
			t.Fatalf("response %d: %q", i, b)
		}
	}
	// Too much left unread: the answer says close.
	_, _ = fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", 10*h1MaxDrain)
	go func() { _, _ = c.Write(make([]byte, 10*h1MaxDrain)) }()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the connection stayed open with megabytes of body unread")
	}
}

func TestH1AbortedAnswerCutsTheConnection(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		_, _ = io.WriteString(w, "partial")
		panic(http.ErrAbortHandler)
	}), time.Second, time.Minute)
	c := dialRaw(t, addr)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(resp.Body); err != io.ErrUnexpectedEOF {
		t.Fatalf("reading a cut answer: %v, want unexpected EOF", err)
	}
}

func TestH1HijackHandsOverTheConnection(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nc, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		defer nc.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	}), time.Second, time.Minute)
	c := dialRaw(t, addr)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("%v %v", err, resp)
	}
	if line, _ := br.ReadString('\n'); line != "echo: hello\n" {
		t.Fatalf("after the upgrade: %q", line)
	}
}

func TestH1TimeoutsCutSlowAndIdleClients(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), 200*time.Millisecond, 300*time.Millisecond)
	slow := dialRaw(t, addr)
	_, _ = io.WriteString(slow, "GET / HTTP/1.1\r\nHost: a\r\n") // and never the blank line
	if _, err := slow.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("a client that never finished its headers was not cut: %v", err)
	}
	idle := dialRaw(t, addr)
	_, _ = io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("an idle keep-alive connection was not closed: %v", err)
	}
}

func TestH1ShutdownClosesIdleAndWaitsForBusy(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	s, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		_, _ = io.WriteString(w, "done")
	}), time.Second, time.Minute)
	idle := dialRaw(t, addr)
	_, _ = io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil {
		t.Fatal(err)
	} else {
		_, _ = io.ReadAll(resp.Body)
	}
	busy := dialRaw(t, addr)
	_, _ = io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	<-started
	shut := make(chan struct{})
	go func() {
		s.Shutdown(context.Background())
		close(shut)
	}()
	if _, err := ibr.ReadByte(); err != io.EOF {
		t.Fatalf("an idle connection survived shutdown: %v", err)
	}
	select {
	case <-shut:
		t.Fatal("shutdown returned while a request was running")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "done" || !resp.Close {
		t.Fatalf("the running request: %q, close %v", b, resp.Close)
	}
	<-shut
}

func TestH1HeaderValuesCannotSplitTheHeader(t *testing.T) {
	_, addr := startH1(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Evil"] = []string{"a\r\nInjected: 1"}
		w.Header()["Bad Name"] = []string{"dropped"}
		_, _ = io.WriteString(w, "ok")
	}), time.Second, time.Minute)
	resp, body := exchange(t, addr, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp.Header.Get("Injected") != "" || resp.Header.Get("X-Evil") != "a  Injected: 1" || body != "ok" {
		t.Fatalf("headers %v, body %q", resp.Header, body)
	}
	if _, ok := resp.Header["Bad Name"]; ok {
		t.Fatal("an invalid field name went out")
	}
}
