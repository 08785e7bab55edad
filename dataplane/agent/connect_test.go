package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// upgradeServer is the proxy's side of the TCP upgrade contract: GET
// /.berth/tcp with X-Berth-Endpoint and Upgrade: berth-tcp gets 101 and a
// raw echo (with a greeting sent in the same write as the response
// headers); an unknown endpoint gets 404 with X-Berth-Error. With silent
// set it reads the request and never answers.
type upgradeServer struct {
	ln     net.Listener
	silent bool
	wg     sync.WaitGroup

	mu       sync.Mutex
	requests []*http.Request
}

func newUpgradeServer(t *testing.T, silent bool) *upgradeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &upgradeServer{ln: ln, silent: silent}
	var conns sync.Map
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, nil)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer conns.Delete(c)
				defer c.Close()
				s.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		conns.Range(func(k, _ any) bool { _ = k.(net.Conn).Close(); return true })
		s.wg.Wait()
	})
	return s
}

func (s *upgradeServer) serve(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	if s.silent {
		_, _ = io.Copy(io.Discard, br)
		return
	}
	ep := req.Header.Get("X-Berth-Endpoint")
	if req.URL.Path != "/.berth/tcp" || !strings.EqualFold(req.Header.Get("Upgrade"), "berth-tcp") || ep != "db" {
		msg := fmt.Sprintf("no connection serves endpoint %s", ep)
		fmt.Fprintf(c, "HTTP/1.1 404 Not Found\r\nX-Berth-Error: %s\r\nContent-Length: %d\r\n\r\n%s", msg, len(msg), msg)
		return
	}
	_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: berth-tcp\r\n\r\nwelcome;")
	_, _ = io.Copy(c, br) // echo, starting with what the reader buffered
	_ = c.(*net.TCPConn).CloseWrite()
}

func (s *upgradeServer) addr() string { return s.ln.Addr().String() }

func TestDialEndpoint(t *testing.T) {
	srv := newUpgradeServer(t, false)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := DialEndpoint(ctx, srv.addr(), "db", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel() // ctx bounds the upgrade only

	srv.mu.Lock()
	req := srv.requests[0]
	srv.mu.Unlock()
	if req.Method != "GET" || req.Host != "db" || req.Header.Get("Connection") != "Upgrade" {
		t.Fatalf("request = %s %s host=%s headers=%v", req.Method, req.URL, req.Host, req.Header)
	}

	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	// The greeting came in the same packet as the headers: it must not be
	// lost in the response parser's buffer.
	if string(got) != "welcome;ping" {
		t.Fatalf("got %q, want %q", got, "welcome;ping")
	}
}

func TestDialEndpointRefused(t *testing.T) {
	srv := newUpgradeServer(t, false)
	_, err := DialEndpoint(t.Context(), srv.addr(), "nope", nil)
	var ee *EndpointError
	if !errors.As(err, &ee) {
		t.Fatalf("err = %v, want *EndpointError", err)
	}
	if ee.StatusCode != 404 || ee.Message != "no connection serves endpoint nope" {
		t.Fatalf("refusal = %+v", ee)
	}
	if !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "no connection serves endpoint nope") {
		t.Fatalf("message %q lacks the status or the X-Berth-Error", err)
	}
}

func TestDialEndpointTimeout(t *testing.T) {
	srv := newUpgradeServer(t, true)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := DialEndpoint(ctx, srv.addr(), "db", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
}

func TestRelay(t *testing.T) {
	watchLeaks(t)
	srv := newUpgradeServer(t, false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	// The first proxy is down: Relay fails over to the second.
	deadLn, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := deadLn.Addr().String()
	_ = deadLn.Close()
	go func() { done <- Relay(ctx, ln, []string{dead, srv.addr()}, "db", nil, testLogger(t)) }()

	for i := range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("hello %d", i)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		_ = c.Close()
		if err != nil || string(got) != "welcome;"+msg {
			t.Fatalf("relay %d: %q, %v", i, got, err)
		}
	}
	// A connection still open when ctx ends is cut.
	open, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	_ = open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(open, make([]byte, len("welcome;"))); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := recv(t, done, "Relay to return"); err != nil {
		t.Fatalf("Relay = %v", err)
	}
	if _, err := io.ReadAll(open); err != nil {
		t.Fatalf("open relay: %v", err)
	}
}
