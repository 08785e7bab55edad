package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// httpVia is an HTTP client whose every connection is a stream opened over
// ps, the way a proxy forwards a request.
func httpVia(t *testing.T, ps *proxySession, endpoint string) *http.Client {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return ps.sess.OpenStream(ctx, &berthv1.StreamHeader{Endpoint: endpoint, Kind: berthv1.StreamKind_STREAM_KIND_HTTP, ClientAddress: "198.51.100.9:4242"})
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// logToTest sends slog.Default (which Listen logs to) to t.Log.
func logToTest(t *testing.T) {
	prev := slog.Default()
	slog.SetDefault(testLogger(t))
	t.Cleanup(func() { slog.SetDefault(prev) })
}

func TestListenServesHTTP(t *testing.T) {
	logToTest(t)
	p := newTestProxy(t, "a")
	cfg := testConfig(p.addr())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, err := Listen(ctx, "web", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr().Network() != "berth" || l.Addr().String() != "web" {
		t.Fatalf("Addr = %s/%s", l.Addr().Network(), l.Addr())
	}
	served := make(chan error, 1)
	go func() {
		served <- http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hi %s from %s", r.URL.Path, r.RemoteAddr)
		}))
	}()
	ps := p.next(t)
	if eps := ps.hello.GetEndpoints(); len(eps) != 1 || eps[0] != "web" {
		t.Fatalf("endpoints = %v, want [web]", eps)
	}
	c := httpVia(t, ps, "web")
	for i := range 3 { // keep-alive: several requests over one stream
		code, body := get(t, c, fmt.Sprintf("http://web/req%d", i))
		if want := fmt.Sprintf("hi /req%d from 198.51.100.9:4242", i); code != 200 || body != want {
			t.Fatalf("got %d %q, want 200 %q", code, body, want)
		}
	}

	// The listener survives a dropped tunnel.
	_ = ps.sess.Close()
	ps = p.next(t)
	if code, _ := get(t, httpVia(t, ps, "web"), "http://web/again"); code != 200 {
		t.Fatalf("after reconnect: %d", code)
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, served, "http.Serve to return"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve = %v, want net.ErrClosed", err)
	}
}

func TestListenFailsWithoutProxy(t *testing.T) {
	logToTest(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err = Listen(ctx, "web", testConfig(dead))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), dead) {
		t.Fatalf("Listen = %v, want a deadline error naming %s", err, dead)
	}
	if _, err := Listen(t.Context(), "Not_A_Label", testConfig(dead)); err == nil {
		t.Fatal("Listen accepted an invalid endpoint name")
	}
}
