package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/agent/demo"
)

func tcpEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = demo.ServeTCPEcho(ctx, ln, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func streamConfig(kind, target string) StreamConfig {
	c := DefaultStream()
	c.Kind, c.Target, c.Duration, c.Timeout = kind, target, 300*time.Millisecond, 5*time.Second
	return c
}

func TestRunStreamTCPChecksEveryByte(t *testing.T) {
	res, err := RunStream(context.Background(), streamConfig(StreamTCP, tcpEcho(t)))
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes < 1<<20 || res.MBps <= 0 || res.Elapsed <= 0 {
		t.Fatalf("a loopback echo carried only %d bytes (%.1f MB/s in %s)", res.Bytes, res.MBps, res.Elapsed)
	}
}

func TestRunStreamTCPCatchesAWrongByte(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 4096)
		var seen int
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if seen < 100_000 && seen+n >= 100_000 {
					buf[100_000-seen-1] ^= 0xff // one byte corrupted on the way back
				}
				seen += n
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	_, err = RunStream(context.Background(), streamConfig(StreamTCP, ln.Addr().String()))
	if err == nil || !strings.Contains(err.Error(), "differ") {
		t.Fatalf("a corrupted echo was not caught: %v", err)
	}
}

func TestRunStreamTCPCatchesLostBytes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.CopyN(c, c, 10_000) // echoes the start, then hangs up
	}()
	_, err = RunStream(context.Background(), streamConfig(StreamTCP, ln.Addr().String()))
	if err == nil || !strings.Contains(err.Error(), "came back") {
		t.Fatalf("a short echo was not caught: %v", err)
	}
}

func TestRunStreamWebSocket(t *testing.T) {
	srv := httptest.NewServer(demo.Handler("t", nil))
	defer srv.Close()
	res, err := RunStream(context.Background(), streamConfig(StreamWebSocket, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes < 1<<20 {
		t.Fatalf("a loopback WebSocket echo carried only %d bytes", res.Bytes)
	}
}

func TestRunStreamUpgradeRefused(t *testing.T) {
	srv := httptest.NewServer(demo.Handler("t", nil)) // knows no berth-tcp
	defer srv.Close()
	c := streamConfig(StreamTCP, strings.TrimPrefix(srv.URL, "http://"))
	c.Via, c.Endpoint = true, "demo"
	var refused *agent.EndpointError
	if _, err := RunStream(context.Background(), c); !errors.As(err, &refused) || refused.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("want the refused upgrade reported, got %v", err)
	}
}

func TestStreamConfigValidate(t *testing.T) {
	for _, c := range []StreamConfig{
		{Kind: "udp", Target: "x", Duration: time.Second, ChunkSize: 1024, Window: 1, Timeout: time.Second},
		{Kind: StreamTCP, Duration: time.Second, ChunkSize: 1024, Window: 1, Timeout: time.Second},
		{Kind: StreamTCP, Target: "x", ChunkSize: 1024, Window: 1, Timeout: time.Second},
		{Kind: StreamTCP, Target: "x", Duration: time.Second, ChunkSize: 10, Window: 1, Timeout: time.Second},
		{Kind: StreamWebSocket, Target: "x", Duration: time.Second, ChunkSize: 1024, Window: 0, Timeout: time.Second},
		{Kind: StreamWebSocket, Target: "x", Via: true, Duration: time.Second, ChunkSize: 1024, Window: 1, Timeout: time.Second},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
}

// TestRunStreamTCPThroughAnUpgrade speaks the berth-tcp upgrade to a
// server that answers it as a proxy does and then echoes.
func TestRunStreamTCPThroughAnUpgrade(t *testing.T) {
	var endpoint atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.berth/tcp" || !strings.EqualFold(r.Header.Get("Upgrade"), "berth-tcp") {
			http.Error(w, "not an upgrade", http.StatusBadRequest)
			return
		}
		endpoint.Store(r.Header.Get("X-Berth-Endpoint"))
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: berth-tcp\r\n\r\n")
		_ = brw.Flush()
		_, _ = io.Copy(c, brw)
		_ = c.(*net.TCPConn).CloseWrite()
	}))
	defer srv.Close()
	c := streamConfig(StreamTCP, strings.TrimPrefix(srv.URL, "http://"))
	c.Via, c.Endpoint = true, "echo"
	res, err := RunStream(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes < 1<<20 || endpoint.Load() != "echo" {
		t.Fatalf("carried %d bytes; the upgrade named endpoint %v", res.Bytes, endpoint.Load())
	}
}
