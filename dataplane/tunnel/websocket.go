package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Transports. A tunnel runs on any net.Conn: a TCP connection (TLS
// optional), or a WebSocket, so that it crosses HTTP load balancers and
// proxies that pass nothing else. Over a WebSocket, every write is one
// binary message and the yamux session runs on top unchanged: the same
// preamble, hello, tokens, limits and moves as over TCP. Either transport
// can go through an HTTP proxy with CONNECT.

// WebSocket conventions.
const (
	// WebSocketPath is where agents ask for a tunnel by default; proxies
	// accept the upgrade on any path, so a load balancer may rewrite it.
	WebSocketPath = "/berth/tunnel"
	// WebSocketProtocol is the subprotocol both sides insist on, so a
	// WebSocket meant for something else is never taken for a tunnel.
	WebSocketProtocol = "berth-tunnel.v1"
)

// ErrProxyRefused is an HTTP proxy answering CONNECT with other than 200.
var ErrProxyRefused = errors.New("tunnel: http proxy refused CONNECT")

// Dialer opens the connection a tunnel runs on.
type Dialer struct {
	// TLS secures a host:port tunnel (nil: plaintext) and is the client
	// config of a wss:// one (its ServerName, when empty, is the URL's
	// host).
	TLS *tls.Config
	// Proxy returns the HTTP proxy to CONNECT through for a target
	// (https://host:port for either transport), nil for a direct dial;
	// nil Proxy: always direct. http.ProxyFromEnvironment fits.
	Proxy func(*http.Request) (*url.URL, error)
}

// IsWebSocketURL reports whether addr names a WebSocket tunnel (ws:// or
// wss://) rather than a host:port.
func IsWebSocketURL(addr string) bool {
	return strings.HasPrefix(addr, "ws://") || strings.HasPrefix(addr, "wss://")
}

// ParseWebSocketURL checks a ws:// or wss:// tunnel URL.
func ParseWebSocketURL(addr string) (*url.URL, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: %q: %w", addr, err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return nil, fmt.Errorf("tunnel: %q: scheme must be ws or wss", addr)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("tunnel: %q: no host", addr)
	}
	if u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("tunnel: %q: user info and fragments are not allowed", addr)
	}
	return u, nil
}

// MoveTarget is where a tunnel that reached the proxy at cur dials a move
// target the control plane names by its tunnel host:port: the same
// transport (a ws or wss URL with cur's path for a WebSocket tunnel), or
// to as it is.
func MoveTarget(cur, to string) string {
	if !IsWebSocketURL(cur) || IsWebSocketURL(to) {
		return to
	}
	u, err := url.Parse(cur)
	if err != nil {
		return to
	}
	u.Host, u.RawQuery = to, ""
	return u.String()
}

// dial connects to addr, a host:port or a WebSocket URL.
func (d Dialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	if IsWebSocketURL(addr) {
		return d.dialWebSocket(ctx, addr)
	}
	conn, err := d.dialTCP(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("tunnel: dial %s: %w", addr, err)
	}
	if d.TLS != nil {
		tc := tls.Client(conn, d.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("tunnel: tls handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	return conn, nil
}

func (d Dialer) dialWebSocket(ctx context.Context, addr string) (net.Conn, error) {
	u, err := ParseWebSocketURL(addr)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, hostport string) (net.Conn, error) { return d.dialTCP(ctx, hostport) },
		TLSClientConfig:   d.TLS,
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	c, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient:      &http.Client{Transport: tr},
		Subprotocols:    []string{WebSocketProtocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("tunnel: websocket %s: answered %s: %w", addr, resp.Status, err)
		}
		return nil, fmt.Errorf("tunnel: websocket %s: %w", addr, err)
	}
	if c.Subprotocol() != WebSocketProtocol {
		_ = c.Close(websocket.StatusPolicyViolation, "want subprotocol "+WebSocketProtocol)
		return nil, fmt.Errorf("tunnel: websocket %s: the server did not speak %s (is it a berth proxy's tunnel port?)", addr, WebSocketProtocol)
	}
	// The conn outlives ctx, which bounds only the handshake.
	return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
}

// dialTCP connects to hostport, through d's HTTP proxy when it names one.
func (d Dialer) dialTCP(ctx context.Context, hostport string) (net.Conn, error) {
	var proxyURL *url.URL
	if d.Proxy != nil {
		req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Scheme: "https", Host: hostport}, Host: hostport}
		var err error
		if proxyURL, err = d.Proxy(req); err != nil {
			return nil, fmt.Errorf("http proxy for %s: %w", hostport, err)
		}
	}
	var nd net.Dialer
	if proxyURL == nil {
		return nd.DialContext(ctx, "tcp", hostport)
	}
	return connectVia(ctx, proxyURL, hostport)
}

// connectVia opens a CONNECT tunnel to target through the HTTP proxy at
// proxyURL (http://, or https:// for TLS to the proxy; user info becomes
// Basic proxy authorization).
func connectVia(ctx context.Context, proxyURL *url.URL, target string) (net.Conn, error) {
	host := proxyURL.Host
	if proxyURL.Port() == "" {
		port := "80"
		if proxyURL.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(proxyURL.Hostname(), port)
	}
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("http proxy %s: %w", host, err)
	}
	switch proxyURL.Scheme {
	case "http", "":
	case "https":
		tc := tls.Client(conn, &tls.Config{ServerName: proxyURL.Hostname(), MinVersion: tls.VersionTLS12})
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("http proxy %s: tls: %w", host, err)
		}
		conn = tc
	default:
		_ = conn.Close()
		return nil, fmt.Errorf("http proxy %s: scheme %q: want http or https", host, proxyURL.Scheme)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	fail := func(err error) (net.Conn, error) {
		stop()
		_ = conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("http proxy %s: CONNECT %s: %w (%w)", host, target, ctx.Err(), err)
		}
		return nil, err
	}
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: target}, Host: target, Header: http.Header{}}
	if u := proxyURL.User; u != nil {
		pw, _ := u.Password()
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pw)))
	}
	if err := req.Write(conn); err != nil {
		return fail(fmt.Errorf("http proxy %s: CONNECT %s: %w", host, target, err))
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fail(fmt.Errorf("http proxy %s: CONNECT %s: %w", host, target, err))
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("%w: %s answered %s for %s", ErrProxyRefused, host, resp.Status, target))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	if br.Buffered() > 0 {
		return &prereadConn{Conn: conn, r: br}, nil
	}
	return conn, nil
}

// prereadConn reads first what was buffered past the proxy's answer.
type prereadConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *prereadConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// WebSocketHandler accepts tunnel WebSockets (subprotocol
// WebSocketProtocol, any path) and hands each connection to serve, which
// runs it to its end; ctx ends them all. Anything else gets a 400 that
// says what the port is.
func WebSocketHandler(ctx context.Context, serve func(net.Conn)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			w.Header().Set("Connection", "close") // nothing else to do here
			http.Error(w, "this is a Berth tunnel port: agents connect here (WebSocket, subprotocol "+WebSocketProtocol+")", http.StatusBadRequest)
			return
		}
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			Subprotocols:    []string{WebSocketProtocol},
			CompressionMode: websocket.CompressionDisabled,
		})
		if err != nil {
			return // Accept has answered
		}
		if c.Subprotocol() != WebSocketProtocol {
			_ = c.Close(websocket.StatusPolicyViolation, "subprotocol "+WebSocketProtocol+" required")
			return
		}
		serve(&wsConn{Conn: websocket.NetConn(ctx, c, websocket.MessageBinary), remote: remoteAddr(r.RemoteAddr)})
	})
}

// wsConn is a tunnel WebSocket with the HTTP client's address as its
// remote address.
type wsConn struct {
	net.Conn
	remote net.Addr
}

func (c *wsConn) RemoteAddr() net.Addr { return c.remote }

func remoteAddr(s string) net.Addr {
	if a, err := net.ResolveTCPAddr("tcp", s); err == nil {
		return a
	}
	return wsAddr(s)
}

type wsAddr string

func (a wsAddr) Network() string { return "websocket" }
func (a wsAddr) String() string  { return string(a) }
