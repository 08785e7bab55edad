package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/berthhq/berth/dataplane/agent/demo"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// serveLocal runs h on a loopback port for the test.
func serveLocal(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// tcpEcho is a local TCP service that echoes until EOF, then half-closes.
func tcpEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String()
}

func TestForward(t *testing.T) {
	p := newTestProxy(t, "a")
	web := serveLocal(t, demo.Handler("demo-1", nil))
	echo := tcpEcho(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	_ = ln.Close()

	cfg := testConfig(p.addr())
	cfg.Endpoints = []string{"web", "echo", "down"}
	a := startAgent(t, cfg)
	fwd := make(chan error, 1)
	go func() {
		fwd <- Forward(a.Agent, map[string]string{"web": web, "echo": echo, "down": down}, testLogger(t))
	}()
	ps := p.next(t)

	t.Run("http", func(t *testing.T) {
		c := httpVia(t, ps, "web")
		if code, body := get(t, c, "http://web/"); code != 200 || body != "hello from demo-1\n" {
			t.Fatalf("GET / = %d %q", code, body)
		}
		resp, err := c.Post("http://web/echo", "text/plain", strings.NewReader("echo me"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "echo me" {
			t.Fatalf("POST /echo = %q", b)
		}
		if code, body := get(t, c, "http://web/stream?n=3"); code != 200 || strings.Count(body, "\n") != 3 || !strings.Contains(body, "demo-1 line 3/3") {
			t.Fatalf("GET /stream = %d %q", code, body)
		}
	})

	t.Run("websocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, "ws://web/ws", &websocket.DialOptions{HTTPClient: httpVia(t, ps, "web")})
		if err != nil {
			t.Fatalf("websocket dial: %v", err)
		}
		defer ws.CloseNow()
		ws.SetReadLimit(1 << 20)
		for _, msg := range []string{"one", "two", strings.Repeat("x", 100_000)} {
			if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatal(err)
			}
			_, got, err := ws.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != msg {
				t.Fatalf("ws echo of %d bytes = %d bytes", len(msg), len(got))
			}
		}
		if err := ws.Close(websocket.StatusNormalClosure, ""); err != nil {
			t.Fatalf("ws close: %v", err)
		}
	})

	t.Run("tcp half-close", func(t *testing.T) {
		s, err := ps.openStream(t, "echo", berthv1.StreamKind_STREAM_KIND_TCP)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		payload := strings.Repeat("abc", 200_000) // over the stream window
		go func() {
			_, _ = io.WriteString(s, payload)
			_ = s.Close() // half-close: the service sees EOF, then answers EOF
		}()
		_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(s)
		if err != nil || string(got) != payload {
			t.Fatalf("echo: %d bytes, %v", len(got), err)
		}
	})

	t.Run("service down", func(t *testing.T) {
		s, err := ps.openStream(t, "down", berthv1.StreamKind_STREAM_KIND_HTTP)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(s), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Berth-Error") == "" {
			t.Fatalf("answer = %d, X-Berth-Error %q", resp.StatusCode, resp.Header.Get("X-Berth-Error"))
		}
	})

	// A stream left open by the client ends when the agent closes.
	s, err := ps.openStream(t, "echo", berthv1.StreamKind_STREAM_KIND_TCP)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, fwd, "Forward to return"); err != nil {
		t.Fatalf("Forward = %v", err)
	}
}

func TestPipeErrorClosesBoth(t *testing.T) {
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	done := make(chan struct{}, 1)
	go func() {
		Pipe(a2, b1)
		done <- struct{}{}
	}()
	// net.Pipe has no half-close: EOF from one side closes both.
	_ = a1.Close()
	recv(t, done, "Pipe to return")
	if _, err := b2.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("other side read = %v, want EOF", err)
	}
}
