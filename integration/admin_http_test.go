package integration

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
)

// httpGet returns the status and body of GET url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// TestProxyPprof: --pprof serves the runtime profiles next to /metrics on
// the admin address, and only when asked for.
func TestProxyPprof(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 2, ControlPlaneNodes: 1, ConfigureProxy: func(i int, cfg *proxy.Config) {
		cfg.Pprof = i == 0
	}})
	on, off := "http://"+e.Proxy(0).HTTPAddr(), "http://"+e.Proxy(1).HTTPAddr()
	if code, body := httpGet(t, on+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof index: %d %.200s", code, body)
	}
	if code, body := httpGet(t, on+"/debug/pprof/profile?seconds=1"); code != http.StatusOK || len(body) == 0 {
		t.Fatalf("cpu profile: %d, %d bytes", code, len(body))
	}
	if code, body := httpGet(t, on+"/metrics"); code != http.StatusOK || !strings.Contains(body, "berth_") {
		t.Fatalf("metrics beside pprof: %d %.200s", code, body)
	}
	if code, _ := httpGet(t, off+"/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("pprof without --pprof: %d, want 404", code)
	}

	cfg := proxy.Default()
	cfg.ID, cfg.Pprof, cfg.HTTPAddr = "p", true, ""
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "pprof") {
		t.Fatalf("pprof without http-addr: %v", err)
	}
}

func TestAgentAdmin(t *testing.T) {
	for _, pprof := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- agent.ServeAdmin(ctx, ln, agent.AdminOptions{Pprof: pprof}) }()
		base := "http://" + ln.Addr().String()
		if code, body := httpGet(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
			t.Fatalf("healthz: %d %q", code, body)
		}
		want := http.StatusNotFound
		if pprof {
			want = http.StatusOK
		}
		if code, _ := httpGet(t, base+"/debug/pprof/cmdline"); code != want {
			t.Fatalf("pprof=%v: cmdline %d, want %d", pprof, code, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("ServeAdmin: %v", err)
		}
	}
}
