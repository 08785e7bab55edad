package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/berthhq/berth/dataplane/agent/demo"
)

func TestBenchHTTPChecksEveryAnswer(t *testing.T) {
	var endpoints []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		endpoints = append(endpoints, r.Header.Get("X-Berth-Endpoint")+"/"+r.Header.Get("X-Extra"))
		// Read the whole body before answering: an HTTP/1 handler that
		// writes first may lose the rest of the request.
		body, _ := io.ReadAll(r.Body)
		_, _ = w.Write(body)
	}))
	defer srv.Close()

	r := berthctlEnv(t, nil, "bench", "http", "-o", "json", "-c", "1", "-n", "50", "--warmup", "0",
		"--body-size", "64", "--endpoint", "demo", "-H", "X-Extra: 1", srv.URL+"/echo")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	if rep.Requests != 50 || rep.Failed != 0 || rep.BodySize != 64 || rep.PerSecond <= 0 {
		t.Fatalf("report %+v", rep)
	}
	if len(endpoints) != 50 || endpoints[0] != "demo/1" {
		t.Fatalf("server saw %d requests, first %q", len(endpoints), endpoints)
	}

	r = berthctlEnv(t, nil, "bench", "http", "-c", "1", "-n", "10", "--warmup", "0", srv.URL)
	if r.code != 0 || !strings.Contains(r.stdout, "req/s") || !strings.Contains(r.stdout, "errors    none") {
		t.Fatalf("table: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
}

func TestBenchHTTPFailsOnBadAnswers(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("not your body, but long enough to compare"))
	}))
	defer srv.Close()
	r := berthctlEnv(t, nil, "bench", "http", "-o", "yaml", "-c", "2", "-d", "200ms", "--warmup", "0", srv.URL)
	if r.code != 1 || !strings.Contains(r.stdout, "body-mismatch:") || !strings.Contains(r.errorLine(), "request(s) failed") {
		t.Fatalf("exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}

	for _, args := range [][]string{
		{"bench", "http", "https://127.0.0.1:1/"},
		{"bench", "http", "-H", "novalue", "http://127.0.0.1:1/"},
		{"bench", "http", "-c", "0", "http://127.0.0.1:1/"},
	} {
		if r := berthctlEnv(t, nil, args...); r.code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}

func TestBenchHTTPReportsWhenInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if n.Add(1) == 20 {
			cancel() // what signal.NotifyContext does on Ctrl-C
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	root := newRootCmd(&stdout, &stderr, func(string) string { return "" })
	code := execute(ctx, root, []string{"bench", "http", "-o", "json", "-c", "1", "-d", "1h", "--warmup", "0", srv.URL}, &stderr)
	if code != 0 || !strings.Contains(stderr.String(), "interrupted") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var rep benchReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || rep.Requests < 19 || rep.Failed != 0 {
		t.Fatalf("report %+v %v\n%s", rep, err, stdout.String())
	}
}

func TestBenchStreamReportsThroughput(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = demo.ServeTCPEcho(ctx, ln, nil); close(done) }()
	defer func() { cancel(); <-done }()
	r := berthctlEnv(t, nil, "bench", "stream", "-o", "json", "-d", "300ms", "tcp", ln.Addr().String())
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rep streamReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, r.stdout)
	}
	if rep.Kind != "tcp" || rep.Bytes <= 0 || rep.MBps <= 0 {
		t.Fatalf("report %+v", rep)
	}

	srv := httptest.NewServer(demo.Handler("t", nil))
	defer srv.Close()
	r = berthctlEnv(t, nil, "bench", "stream", "-d", "300ms", "ws", "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws")
	if r.code != 0 || !strings.Contains(r.stdout, "MB/s") {
		t.Fatalf("ws: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r = berthctlEnv(t, nil, "bench", "stream", "--via", "127.0.0.1:1", "ws", "x"); r.code == 0 {
		t.Fatal("--via with a WebSocket was accepted")
	}
	if r = berthctlEnv(t, nil, "bench", "stream", "udp", "x"); r.code == 0 || !strings.Contains(r.stderr, "tcp or ws") {
		t.Fatalf("an unknown kind: exit %d, %s", r.code, r.stderr)
	}
}
