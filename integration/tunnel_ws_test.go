package integration

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// tlsMode says the suite runs with TLS everywhere (BERTH_TEST_TLS=1).
func tlsMode() bool { return os.Getenv("BERTH_TEST_TLS") == "1" }

// wsURL is the WebSocket tunnel URL of a proxy's tunnel address.
func wsURL(hostport string) string {
	scheme := "ws"
	if tlsMode() {
		scheme = "wss"
	}
	return scheme + "://" + hostport + tunnel.WebSocketPath
}

// startReverseProxy runs a plain HTTP reverse proxy (as an HTTP load
// balancer would be) in front of backend and counts the upgrades it saw.
func startReverseProxy(t *testing.T, backend string) (addr string, upgrades *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: backend})
	upgrades = new(atomic.Int64)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			upgrades.Add(1)
		}
		rp.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), upgrades
}

func TestWebSocketTunnelBehindReverseProxyMovesWithoutLoss(t *testing.T) {
	if tlsMode() {
		t.Skip("the reverse proxy in front speaks plain HTTP to the tunnel port")
	}
	e := dataplanetest.Start(t, dataplanetest.Options{ConfigureNode: fastRebalance,
		ConfigureProxy: func(_ int, cfg *proxy.Config) { cfg.Edge.AccessLog = false }})
	lb, upgrades := startReverseProxy(t, e.TunnelAddrs()[0])
	up := dataplanetest.Upstream(t, "svc")
	a := e.Agent("ws-agent", []string{"ws://" + lb + tunnel.WebSocketPath}, map[string]string{"web": up})
	conns := e.WaitConnections("web", 1)
	if conns[0].ProxyId != "proxy-0" || upgrades.Load() != 1 {
		t.Fatalf("tunnel on %s after %d upgrades at the reverse proxy", conns[0].ProxyId, upgrades.Load())
	}
	c := httpClient(t)
	for p := range 2 {
		expectBody(t, e, c, p, "web", "/x", "svc /x")
	}

	// Requests keep flowing while the tunnel moves, make-before-break,
	// from proxy-0 (behind the reverse proxy) to proxy-1.
	tr := startTraffic(t, e, "web", 6)
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if ok := tr.ok.Load(); ok < 50 {
			return fmt.Errorf("%d requests so far", ok)
		}
		return nil
	})
	if _, err := e.CP.Admin(0).DrainProxy(context.Background(), &berthv1.DrainProxyRequest{ProxyId: "proxy-0"}); err != nil {
		t.Fatal(err)
	}
	controlplanetest.Eventually(t, 60*time.Second, func() error {
		if n := counts(t, e); n["proxy-1"] != 1 || n["proxy-0"] != 0 {
			return fmt.Errorf("connections per proxy: %v\n%s", n, describeMoves(t, e))
		}
		return nil
	})
	before := tr.ok.Load()
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if ok := tr.ok.Load(); ok < before+50 {
			return fmt.Errorf("%d requests since the move", ok-before)
		}
		return nil
	})
	tr.finish(t)
	st := a.Status()
	if want := wsURL(e.TunnelAddrs()[1]); st.Proxy != want || st.Moves < 1 || st.Reconnects != 0 {
		t.Fatalf("agent status %+v; want a move (no reconnect) to %s", st, want)
	}
}

// connectProxy is an HTTP proxy that only does CONNECT, requiring Basic
// credentials user:pass, and counts the tunnels it opened.
type connectProxy struct {
	addr    string
	tunnels atomic.Int64
	wg      sync.WaitGroup
}

func startConnectProxy(t *testing.T) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp := &connectProxy{addr: ln.Addr().String()}
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("user:pass"))
	var mu sync.Mutex
	var live []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			live = append(live, c)
			mu.Unlock()
			cp.wg.Add(1)
			go func() {
				defer cp.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if req.Method != http.MethodConnect {
					_, _ = io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
					return
				}
				if req.Header.Get("Proxy-Authorization") != want {
					_, _ = io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
					return
				}
				up, err := net.Dial("tcp", req.Host)
				if err != nil {
					_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
					return
				}
				defer up.Close()
				mu.Lock()
				live = append(live, up)
				mu.Unlock()
				cp.tunnels.Add(1)
				if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
					return
				}
				done := make(chan struct{})
				go func() { _, _ = io.Copy(up, br); _ = up.(*net.TCPConn).CloseWrite(); close(done) }()
				_, _ = io.Copy(c, up)
				<-done
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range live {
			_ = c.Close()
		}
		mu.Unlock()
		cp.wg.Wait()
	})
	return cp
}

func TestTunnelsThroughConnectProxy(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	cp := startConnectProxy(t)
	up := dataplanetest.Upstream(t, "svc")
	via := func(u string) func(*agent.Config) { return func(c *agent.Config) { c.HTTPProxy = u } }
	addrs := e.TunnelAddrs()
	// Raw TCP transport to proxy-0 and WebSocket to proxy-1, both through
	// the CONNECT proxy.
	e.Agent("raw", addrs[:1], map[string]string{"web": up}, via("http://user:pass@"+cp.addr))
	e.Agent("ws", []string{wsURL(addrs[1])}, map[string]string{"web": up}, via("http://user:pass@"+cp.addr))
	conns := e.WaitConnections("web", 2)
	held := map[string]bool{}
	for _, c := range conns {
		held[c.ProxyId] = true
	}
	if !held["proxy-0"] || !held["proxy-1"] || cp.tunnels.Load() != 2 {
		t.Fatalf("connections on %v, %d CONNECT tunnels; want one per proxy, both through the proxy", held, cp.tunnels.Load())
	}
	c := httpClient(t)
	for p := range 2 {
		expectBody(t, e, c, p, "web", "/x", "svc /x")
	}

	// Wrong credentials: the proxy's refusal is the dial error.
	_, _, err := tunnel.Dialer{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: cp.addr, User: url.UserPassword("user", "wrong")})}.
		DialTunnel(context.Background(), addrs[0], &berthv1.TunnelHello{AgentId: "x", Endpoints: []string{"web"}}, tunnelConfig())
	if err == nil || !strings.Contains(err.Error(), "407") {
		t.Fatalf("dial with wrong proxy credentials: %v", err)
	}
}

func tunnelConfig() tunnel.Config {
	cfg := tunnel.DefaultConfig()
	cfg.HandshakeTimeout = 5 * time.Second
	return cfg
}
