package tunnel

import (
	"net"
	"testing"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// testConfig keeps handshakes short so failures show quickly.
func testConfig() Config {
	c := DefaultConfig()
	c.HandshakeTimeout = 2 * time.Second
	return c
}

// listen opens a listener on 127.0.0.1 closed at the end of the test.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

// acceptOne runs fn on the next connection to ln in the background; the
// returned channel is closed when fn returns.
func acceptOne(t *testing.T, ln net.Listener, fn func(net.Conn)) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fn(c)
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return done
}

// proxyResult is what the accepting side of tunnelPair saw.
type proxyResult struct {
	hello *berthv1.TunnelHello
	sess  *Session
	err   error
}

// tunnelPair connects an agent-side session to a proxy-side one over
// loopback TCP and returns both plus the hello the proxy read.
func tunnelPair(t *testing.T) (agent, proxy *Session, hello *berthv1.TunnelHello) {
	t.Helper()
	cfg := testConfig()
	ln := listen(t)
	res := make(chan proxyResult, 1)
	acceptOne(t, ln, func(c net.Conn) {
		h, err := ReadTunnelHello(c, cfg)
		if err != nil {
			_ = c.Close()
			res <- proxyResult{err: err}
			return
		}
		s, err := AcceptTunnel(c, &berthv1.TunnelWelcome{ConnectionId: "conn-1", ProxyId: "proxy-a"}, cfg)
		res <- proxyResult{hello: h, sess: s, err: err}
	})
	a, welcome, err := DialTunnel(t.Context(), ln.Addr().String(), nil,
		&berthv1.TunnelHello{AgentId: "agent-1", Slot: "slot-1", Endpoints: []string{"web"}}, cfg)
	if err != nil {
		t.Fatalf("DialTunnel: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if welcome.GetConnectionId() != "conn-1" || welcome.GetProxyId() != "proxy-a" {
		t.Fatalf("welcome = %v", welcome)
	}
	r := <-res
	if r.err != nil {
		t.Fatalf("proxy side: %v", r.err)
	}
	t.Cleanup(func() { _ = r.sess.Close() })
	return a, r.sess, r.hello
}

// within fails the test if ch is not closed (or does not yield) in d.
func within[T any](t *testing.T, d time.Duration, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("timed out after %s waiting for %s", d, what)
		panic("unreachable")
	}
}
