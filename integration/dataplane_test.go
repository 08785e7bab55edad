package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
)

func httpClient(t *testing.T) *http.Client {
	c := &http.Client{Timeout: 10 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// expectBody polls GET on proxy i until it answers 200 with want.
func expectBody(t *testing.T, e *dataplanetest.Env, c *http.Client, i int, endpoint, path, want string) {
	t.Helper()
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		code, body, hdr, err := e.Get(c, i, endpoint, path)
		if err != nil {
			return err
		}
		if code != 200 || body != want {
			return fmt.Errorf("proxy %d: %d %q (%s)", i, code, body, hdr.Get(proxy.ErrorHeader))
		}
		return nil
	})
}

func TestRequestsLocalAndForwarded(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	up := dataplanetest.Upstream(t, "svc-a")
	e.Agent("agent-a", e.TunnelAddrs()[:1], map[string]string{"web": up})
	conns := e.WaitConnections("web", 1)
	if conns[0].ProxyId != "proxy-0" {
		t.Fatalf("agent landed on %s", conns[0].ProxyId)
	}
	if n := e.Proxy(1).Connections(); n != 0 {
		t.Fatalf("proxy-1 holds %d tunnels; its requests must be forwarded", n)
	}
	c := httpClient(t)
	expectBody(t, e, c, 0, "web", "/hello", "svc-a /hello") // local
	expectBody(t, e, c, 1, "web", "/hello", "svc-a /hello") // forwarded over the peer link
	// Many forwarded requests in a row all succeed (one persistent link).
	for i := range 50 {
		code, body, _, err := e.Get(c, 1, "web", fmt.Sprintf("/n/%d", i))
		if err != nil || code != 200 || body != fmt.Sprintf("svc-a /n/%d", i) {
			t.Fatalf("request %d: %d %q %v", i, code, body, err)
		}
	}
	// POST bodies stream through and back.
	req, _ := http.NewRequest("POST", "http://"+e.DownstreamAddr(1)+"/echo", strings.NewReader(strings.Repeat("x", 1<<20)))
	req.Header.Set(proxy.EndpointHeader, "web")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(b) != 1<<20 || resp.Header.Get("X-Upstream") != "svc-a" {
		t.Fatalf("echo: %d, %d bytes", resp.StatusCode, len(b))
	}
}

func TestUnknownEndpointAndBadHandshakes(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 1, ConfigureProxy: func(_ int, cfg *proxy.Config) {
		cfg.Tunnel.HandshakeTimeout = 2 * time.Second
	}})
	up := dataplanetest.Upstream(t, "svc")
	e.Agent("a1", e.TunnelAddrs(), map[string]string{"web": up})
	e.WaitConnections("web", 1)
	c := httpClient(t)
	code, _, hdr, err := e.Get(c, 0, "nothing", "/")
	if err != nil || code != http.StatusServiceUnavailable || hdr.Get(proxy.ErrorHeader) != "no-upstream" {
		t.Fatalf("unknown endpoint: %d %q %v", code, hdr.Get(proxy.ErrorHeader), err)
	}
	req, _ := http.NewRequest("GET", "http://"+e.DownstreamAddr(0)+"/", nil)
	resp, err := c.Do(req) // Host is the IP address
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(proxy.ErrorHeader) != "invalid-endpoint" {
		t.Fatalf("IP host: %d %q", resp.StatusCode, resp.Header.Get(proxy.ErrorHeader))
	}
	// Garbage, HTTP and an oversize frame on the tunnel port are dropped;
	// the proxy keeps serving.
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		append([]byte("BRTA\x01"), 0xff, 0xff, 0xff, 0xff),
		append([]byte("BRTA\x01"), 0, 0, 0, 3, 0xff, 0xff, 0xff),
		{0x16, 0x03, 0x01, 0x00},
	} {
		conn, err := net.Dial("tcp", e.TunnelAddrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(junk)
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, _ = io.ReadAll(conn) // the proxy closes it
		conn.Close()
	}
	expectBody(t, e, c, 0, "web", "/still", "svc /still")
}

func TestWebSocketAndTCPThroughTunnels(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	demo := startDemo(t)
	echo := startTCPEcho(t)
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"ws": demo, "tcp": echo})
	e.WaitConnections("ws", 1)
	// The tunnel is committed before the agent is welcomed; wait until both
	// proxies route to it.
	c := httpClient(t)
	for p := range 2 {
		controlplanetest.Eventually(t, 20*time.Second, func() error {
			code, _, _, err := e.Get(c, p, "ws", "/")
			if err != nil || code != 200 {
				return fmt.Errorf("proxy %d: %d %v", p, code, err)
			}
			return nil
		})
	}

	// WebSocket through the proxy that forwards to the holder.
	ws := dialWebSocket(t, "ws://"+e.DownstreamAddr(1)+"/ws", "ws.berth.test")
	for i := range 5 {
		msg := fmt.Sprintf("hello %d", i)
		if got := ws(msg); got != msg {
			t.Fatalf("websocket echo: %q", got)
		}
	}
	// TCP through the berth-tcp upgrade, on both proxies.
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := agent.DialEndpoint(ctx, e.DownstreamAddr(i), "tcp", nil)
		cancel()
		if err != nil {
			t.Fatalf("proxy %d: %v", i, err)
		}
		for j := range 3 {
			line := fmt.Sprintf("line %d/%d\n", i, j)
			if _, err := io.WriteString(conn, line); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, len(line))
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != line {
				t.Fatalf("tcp echo: %q %v", buf, err)
			}
		}
		conn.Close()
	}
}

func TestProxyKilledAgentReconnectsElsewhere(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	up := dataplanetest.Upstream(t, "svc")
	e.Agent("a1", e.TunnelAddrs(), map[string]string{"web": up})
	conns := e.WaitConnections("web", 1)
	holder := 0
	if conns[0].ProxyId == "proxy-1" {
		holder = 1
	}
	other := 1 - holder
	c := httpClient(t)
	expectBody(t, e, c, other, "web", "/before", "svc /before")
	e.StopProxy(holder)
	// The agent redials the survivor; requests succeed again there.
	expectBody(t, e, c, other, "web", "/after", "svc /after")
	controlplanetest.Eventually(t, 30*time.Second, func() error {
		if n := e.Proxy(other).Connections(); n != 1 {
			return fmt.Errorf("survivor holds %d tunnels", n)
		}
		return nil
	})
}

func TestControlPlaneDownTrafficFlowsAndReconciles(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	up1 := dataplanetest.Upstream(t, "one")
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"web": up1})
	e.WaitConnections("web", 1)
	c := httpClient(t)
	expectBody(t, e, c, 1, "web", "/x", "one /x")

	for i := range e.CP.Len() {
		e.CP.Stop(i)
	}
	controlplanetest.Eventually(t, 30*time.Second, func() error {
		if e.Proxy(0).ControlPlaneConnected() || e.Proxy(1).ControlPlaneConnected() {
			return fmt.Errorf("a proxy still has a session")
		}
		return nil
	})
	// Existing connections keep serving, locally and forwarded.
	for i := range 20 {
		for p := range 2 {
			code, body, _, err := e.Get(c, p, "web", "/down")
			if err != nil || code != 200 || body != "one /down" {
				t.Fatalf("round %d proxy %d with the control plane down: %d %q %v", i, p, code, body, err)
			}
		}
	}
	// A new agent is still served.
	up2 := dataplanetest.Upstream(t, "two")
	e.Agent("a2", e.TunnelAddrs()[1:], map[string]string{"api": up2})
	expectBody(t, e, c, 1, "api", "/new", "two /new")

	// The control plane returns; the proxies reconcile their full sets.
	for i := range e.CP.Len() {
		e.CP.Start(i)
	}
	e.WaitControlPlane(0)
	e.WaitControlPlane(1)
	e.WaitConnections("web", 1)
	if conns := e.WaitConnections("api", 1); conns[0].ProxyId != "proxy-1" {
		t.Fatalf("api connection on %s", conns[0].ProxyId)
	}
	expectBody(t, e, c, 0, "api", "/after", "two /after") // forwarded: the peer directory knows it now
}

func TestRingHashIsStickyAcrossProxies(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{ConfigureProxy: func(_ int, cfg *proxy.Config) { cfg.HashHeader = "X-User" }})
	names := []string{"u0", "u1", "u2"}
	for i, n := range names {
		e.Agent("slot-"+n, e.TunnelAddrs()[i%2:i%2+1], map[string]string{"web": dataplanetest.Upstream(t, n)})
	}
	e.WaitConnections("web", 3)
	c := httpClient(t)
	get := func(p int, user string) string {
		req, _ := http.NewRequest("GET", "http://"+e.DownstreamAddr(p)+"/", nil)
		req.Host = "web.berth.test"
		req.Header.Set("X-User", user)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get(proxy.ErrorHeader))
		}
		return strings.Fields(string(b))[0]
	}
	// Let both proxies learn every connection and open their peer links.
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		for u := range 20 {
			user := fmt.Sprintf("user-%d", u)
			if a, b := get(0, user), get(1, user); a != b {
				return fmt.Errorf("%s: proxy-0 -> %s, proxy-1 -> %s", user, a, b)
			}
		}
		return nil
	})
	seen := map[string]bool{}
	for u := range 60 {
		user := fmt.Sprintf("user-%d", u)
		first := get(u%2, user)
		seen[first] = true
		for range 3 {
			if again := get((u+1)%2, user); again != first {
				t.Fatalf("%s moved from %s to %s", user, first, again)
			}
		}
	}
	if len(seen) < 2 {
		t.Fatalf("60 keys all went to %v", seen)
	}
}

// gatedUpstream answers /stream with one line, then waits for release
// before the next; /hang waits for release before answering at all.
func gatedUpstream(t *testing.T) (addr string, release chan struct{}, entered chan struct{}) {
	t.Helper()
	release, entered = make(chan struct{}), make(chan struct{}, 16)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		switch r.URL.Path {
		case "/stream":
			fmt.Fprintln(w, "first")
			w.(http.Flusher).Flush()
			<-release
			fmt.Fprintln(w, "second")
		case "/hang":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		default:
			fmt.Fprint(w, "ok")
		}
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), release, entered
}

func TestStreamingResponsesAreNotBuffered(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	up, release, _ := gatedUpstream(t)
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"live": up})
	e.WaitConnections("live", 1)
	c := httpClient(t)
	expectBody(t, e, c, 1, "live", "/", "ok")
	for p := range 2 {
		req, _ := http.NewRequest("GET", "http://"+e.DownstreamAddr(p)+"/stream", nil)
		req.Host = "live.berth.test"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		// The first line must arrive while the upstream still holds the
		// response open: a buffering proxy would block here until the
		// test's deadline.
		buf := make([]byte, len("first\n"))
		if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first\n" {
			t.Fatalf("proxy %d: first line %q %v", p, buf, err)
		}
		release <- struct{}{}
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(rest) != "second\n" {
			t.Fatalf("proxy %d: rest %q %v", p, rest, err)
		}
	}
}

func TestAgentVanishingMidRequest(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	gated, _, entered := gatedUpstream(t)
	steady := dataplanetest.Upstream(t, "steady")
	doomed := e.Agent("doomed", e.TunnelAddrs()[:1], map[string]string{"gone": gated})
	e.Agent("steady", e.TunnelAddrs()[:1], map[string]string{"web": steady})
	e.WaitConnections("gone", 1)
	e.WaitConnections("web", 1)
	c := httpClient(t)
	type result struct {
		code   int
		reason string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		code, _, hdr, err := e.Get(c, 1, "gone", "/hang") // forwarded to proxy-0
		res <- result{code, hdr.Get(proxy.ErrorHeader), err}
	}()
	<-entered          // the request reached the upstream
	_ = doomed.Close() // the agent vanishes with the request in flight
	if r := <-res; r.err != nil || r.code != http.StatusBadGateway || r.reason == "" {
		t.Fatalf("in-flight request when the agent vanished: %d %q %v", r.code, r.reason, r.err)
	}
	// The endpoint is gone: a clear 503; the other endpoint is unaffected.
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		code, _, hdr, err := e.Get(c, 1, "gone", "/")
		if err != nil || code != http.StatusServiceUnavailable || hdr.Get(proxy.ErrorHeader) != "no-upstream" {
			return fmt.Errorf("%d %q %v", code, hdr.Get(proxy.ErrorHeader), err)
		}
		return nil
	})
	expectBody(t, e, c, 0, "web", "/fine", "steady /fine")
	expectBody(t, e, c, 1, "web", "/fine", "steady /fine")
}

func TestForwardingFailsOverToAnotherHolder(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 3})
	up0 := dataplanetest.Upstream(t, "on-0")
	up1 := dataplanetest.Upstream(t, "on-1")
	addrs := e.TunnelAddrs()
	e.Agent("a0", addrs[0:1], map[string]string{"web": up0})
	e.Agent("a1", addrs[1:2], map[string]string{"web": up1})
	e.WaitConnections("web", 2)
	c := httpClient(t)
	// proxy-2 holds nothing: it forwards to proxy-0 or proxy-1.
	seen := map[string]bool{}
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		code, body, _, err := e.Get(c, 2, "web", "/")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		seen[strings.Fields(body)[0]] = true
		if len(seen) < 2 {
			return fmt.Errorf("only reached %v", seen)
		}
		return nil
	})
	// One holder dies (its agent has nowhere else to go): every request
	// still succeeds, through the other holder.
	e.StopProxy(0)
	for i := range 40 {
		code, body, hdr, err := e.Get(c, 2, "web", "/")
		if err != nil || code != 200 || !strings.HasPrefix(body, "on-1") {
			t.Fatalf("request %d after proxy-0 died: %d %q %q %v", i, code, body, hdr.Get(proxy.ErrorHeader), err)
		}
	}
}
