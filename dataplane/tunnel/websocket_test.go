package tunnel

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// serveHTTP runs h on a loopback listener for the test.
func serveHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	ln := listen(t)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func TestTunnelOverWebSocket(t *testing.T) {
	cfg := testConfig()
	got := make(chan proxyResult, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addr := serveHTTP(t, WebSocketHandler(ctx, func(c net.Conn) {
		hello, err := ReadTunnelHello(c, cfg)
		if err != nil {
			got <- proxyResult{err: err}
			return
		}
		sess, err := AcceptTunnel(c, &berthv1.TunnelWelcome{ConnectionId: "c1", ProxyId: "p"}, cfg)
		got <- proxyResult{hello: hello, sess: sess, err: err}
		if sess != nil {
			<-sess.Closed()
		}
	}))
	// Any path: a load balancer may rewrite it.
	agent, welcome, err := Dialer{}.DialTunnel(context.Background(), "ws://"+addr+"/lb/prefix"+WebSocketPath,
		&berthv1.TunnelHello{AgentId: "agent-1", Endpoints: []string{"web"}}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Close() })
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { _ = r.sess.Close() })
	if welcome.ConnectionId != "c1" || r.hello.AgentId != "agent-1" {
		t.Fatalf("welcome %v, hello %v", welcome, r.hello)
	}
	if !strings.HasPrefix(r.sess.RemoteAddr().String(), "127.0.0.1:") {
		t.Errorf("proxy side RemoteAddr = %s, want the client's", r.sess.RemoteAddr())
	}
	// Many streams, both ways, with more than one WebSocket message each.
	for range 3 {
		echoStream(t, r.sess, agent)
		echoStream(t, agent, r.sess)
	}
	if _, err := agent.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestWebSocketDialRefusals(t *testing.T) {
	cfg := testConfig()
	hello := func() *berthv1.TunnelHello { return &berthv1.TunnelHello{AgentId: "a", Endpoints: []string{"web"}} }
	// A WebSocket server that does not speak the tunnel subprotocol.
	other := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err == nil {
			_ = c.CloseNow()
		}
	}))
	// A plain HTTP server.
	plain := serveHTTP(t, http.NotFoundHandler())
	// The tunnel handler asked for plain HTTP says what it is.
	tunnelPort := serveHTTP(t, WebSocketHandler(context.Background(), func(c net.Conn) { _ = c.Close() }))

	for name, tc := range map[string]struct{ addr, want string }{
		"no subprotocol": {"ws://" + other + "/", "did not speak " + WebSocketProtocol},
		"not websocket":  {"ws://" + plain + "/", "404"},
		"bad scheme":     {"wss//" + plain, "dial"},
		"no host":        {"ws:///path", "no host"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Dialer{}.DialTunnel(context.Background(), tc.addr, hello(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	resp, err := http.Get("http://" + tunnelPort + WebSocketPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("plain GET on the tunnel handler: %s, close %v; want 400 and the connection closed", resp.Status, resp.Close)
	}
}

func TestMoveTarget(t *testing.T) {
	for _, tt := range []struct{ cur, to, want string }{
		{"10.0.0.1:8443", "10.0.0.2:8443", "10.0.0.2:8443"},
		{"ws://lb.example.com/berth/tunnel", "10.0.0.2:8443", "ws://10.0.0.2:8443/berth/tunnel"},
		{"wss://lb.example.com/x/berth/tunnel?a=1", "10.0.0.2:8443", "wss://10.0.0.2:8443/x/berth/tunnel"},
		{"wss://lb.example.com/berth/tunnel", "wss://b.example.com/t", "wss://b.example.com/t"},
	} {
		if got := MoveTarget(tt.cur, tt.to); got != tt.want {
			t.Errorf("MoveTarget(%q, %q) = %q, want %q", tt.cur, tt.to, got, tt.want)
		}
	}
}

func TestConnectProxyRefusalIsTyped(t *testing.T) {
	addr := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dialer{Proxy: func(*http.Request) (*url.URL, error) { return parseURL(t, "http://"+addr), nil }}.dialTCP(ctx, "127.0.0.1:1")
	if !errors.Is(err, ErrProxyRefused) || !strings.Contains(err.Error(), "403") {
		t.Fatalf("got %v, want ErrProxyRefused with the status", err)
	}
}

func parseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
