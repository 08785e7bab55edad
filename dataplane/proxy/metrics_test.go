package proxy_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
)

// statusUpstream answers /status/N with status N and anything else with
// 200.
func statusUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/")); err == nil {
			w.WriteHeader(code)
			return
		}
		_, _ = w.Write([]byte("ok"))
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// Real requests through a real proxy land in the latency histogram under
// their endpoint and status class; a made-up endpoint gets no series of
// its own.
func TestRequestDurationHistogram(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{ControlPlaneNodes: 1, Proxies: 1})
	e.Agent("a1", e.TunnelAddrs(), map[string]string{"web": statusUpstream(t)})
	e.WaitConnections("web", 1)
	metricsAddr := e.Proxy(0).HTTPAddr()
	const name = "berth_proxy_request_duration_seconds"
	count := func(endpoint, class string) uint64 {
		t.Helper()
		fams, err := dataplanetest.Scrape(context.Background(), metricsAddr)
		if err != nil {
			t.Fatal(err)
		}
		m := dataplanetest.Find(fams, name, map[string]string{"endpoint": endpoint, "code": class})
		if m == nil {
			return 0
		}
		return m.GetHistogram().GetSampleCount()
	}
	get := func(endpoint, path string, want int) {
		t.Helper()
		code, body, _, err := e.Get(http.DefaultClient, 0, endpoint, path)
		if err != nil || code != want {
			t.Fatalf("GET %s%s: %d %q %v, want %d", endpoint, path, code, body, err, want)
		}
	}

	// Until the proxy's directory has the endpoint, its requests count as
	// unknown; wait for its own series.
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		// The proxy may answer 503 until it routes to the new connection.
		if code, body, _, err := e.Get(http.DefaultClient, 0, "web", "/"); err != nil || code != http.StatusOK {
			return fmt.Errorf("GET web/: %d %q %v", code, body, err)
		}
		if count("web", "2xx") == 0 {
			return fmt.Errorf("no web 2xx series yet")
		}
		return nil
	})
	before2, before4, before5 := count("web", "2xx"), count("web", "4xx"), count("web", "5xx")
	beforeUnknown := count(proxy.UnknownEndpoint, "5xx")
	get("web", "/", http.StatusOK)
	get("web", "/", http.StatusOK)
	get("web", "/status/404", http.StatusNotFound)
	get("web", "/status/503", http.StatusServiceUnavailable)
	get("nosuch", "/", http.StatusServiceUnavailable)

	if got := count("web", "2xx") - before2; got != 2 {
		t.Errorf("web 2xx: %d new observations, want 2", got)
	}
	if got := count("web", "4xx") - before4; got != 1 {
		t.Errorf("web 4xx: %d new observations, want 1", got)
	}
	if got := count("web", "5xx") - before5; got != 1 {
		t.Errorf("web 5xx: %d new observations, want 1", got)
	}
	if got := count(proxy.UnknownEndpoint, "5xx") - beforeUnknown; got != 1 {
		t.Errorf("%s 5xx: %d new observations, want 1", proxy.UnknownEndpoint, got)
	}
	fams, err := dataplanetest.Scrape(context.Background(), metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if m := dataplanetest.Find(fams, name, map[string]string{"endpoint": "nosuch"}); m != nil {
		t.Errorf("a made-up endpoint got its own series: %v", m)
	}
	m := dataplanetest.Find(fams, name, map[string]string{"endpoint": "web", "code": "2xx"})
	if s := m.GetHistogram().GetSampleSum(); s <= 0 || s > 60 {
		t.Errorf("web 2xx duration sum %v s, want a positive, plausible time", s)
	}
}
