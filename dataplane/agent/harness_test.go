package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// testProxy is the proxy side of the tunnel protocol, just enough to drive
// an agent: it welcomes (or refuses) hellos, records them, and hands each
// session to the test, which opens streams and sends control messages.
type testProxy struct {
	t        *testing.T
	id       string
	ln       net.Listener
	cfg      tunnel.Config
	refuse   atomic.Int32 // refuse this many hellos before welcoming
	sessions chan *proxySession
	done     chan struct{}

	mu     sync.Mutex
	hellos []*berthv1.TunnelHello
	open   []*proxySession
	conns  int
	wg     sync.WaitGroup
}

// proxySession is one welcomed tunnel as the proxy sees it.
type proxySession struct {
	proxy   *testProxy
	hello   *berthv1.TunnelHello
	connID  string
	sess    *tunnel.Session
	control chan *berthv1.ControlMessage // what the agent sent
}

func newTestProxy(t *testing.T, id string) *testProxy {
	return newTestProxyTLS(t, id, nil)
}

func newTestProxyTLS(t *testing.T, id string, tlsCfg *tls.Config) *testProxy {
	t.Helper()
	watchLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	p := &testProxy{t: t, id: id, ln: ln, cfg: testTunnelConfig(), sessions: make(chan *proxySession, 16), done: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(p.stop)
	return p
}

func (p *testProxy) addr() string { return p.ln.Addr().String() }

func (p *testProxy) stop() {
	close(p.done)
	_ = p.ln.Close()
	p.mu.Lock()
	for _, s := range p.open {
		_ = s.sess.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *testProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handshake(c)
		}()
	}
}

func (p *testProxy) handshake(c net.Conn) {
	hello, err := tunnel.ReadTunnelHello(c, p.cfg)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.hellos = append(p.hellos, hello)
	p.conns++
	connID := fmt.Sprintf("%s-conn-%d", p.id, p.conns)
	p.mu.Unlock()
	if p.refuse.Add(-1) >= 0 {
		tunnel.Refuse(c, &berthv1.TunnelWelcome{Error: tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAUTHENTICATED, "test refusal")})
		return
	}
	p.refuse.Store(0)
	sess, err := tunnel.AcceptTunnel(c, &berthv1.TunnelWelcome{ConnectionId: connID, ProxyId: p.id}, p.cfg)
	if err != nil {
		return
	}
	ps := &proxySession{proxy: p, hello: hello, connID: connID, sess: sess, control: make(chan *berthv1.ControlMessage, 16)}
	p.mu.Lock()
	p.open = append(p.open, ps)
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			m, err := sess.RecvControl()
			if err != nil {
				return
			}
			ps.control <- m
		}
	}()
	select {
	case p.sessions <- ps:
	case <-p.done:
	}
}

// next waits for the proxy's next welcomed session.
func (p *testProxy) next(t *testing.T) *proxySession {
	t.Helper()
	select {
	case ps := <-p.sessions:
		return ps
	case <-time.After(10 * time.Second):
		t.Fatalf("proxy %s: no tunnel within 10s", p.id)
		return nil
	}
}

func (p *testProxy) helloCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.hellos)
}

func (p *testProxy) lastHello() *berthv1.TunnelHello {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.hellos) == 0 {
		return nil
	}
	return p.hellos[len(p.hellos)-1]
}

// nextOf waits for a session on whichever of proxies gets one first.
func nextOf(t *testing.T, proxies ...*testProxy) *proxySession {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		for _, p := range proxies {
			select {
			case ps := <-p.sessions:
				return ps
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatal("no tunnel on any proxy within 10s")
		case <-time.After(5 * time.Millisecond): // poll interval
		}
	}
}

// openStream opens a stream to endpoint over ps.
func (ps *proxySession) openStream(t *testing.T, endpoint string, kind berthv1.StreamKind) (net.Conn, error) {
	t.Helper()
	return ps.sess.OpenStream(t.Context(), &berthv1.StreamHeader{Endpoint: endpoint, Kind: kind, ClientAddress: "192.0.2.7:5555"})
}

func (ps *proxySession) send(t *testing.T, m *berthv1.ControlMessage) {
	t.Helper()
	if err := ps.sess.SendControl(m); err != nil {
		t.Fatalf("send control: %v", err)
	}
}

// recvControl waits for the agent's next control message.
func (ps *proxySession) recvControl(t *testing.T) *berthv1.ControlMessage {
	t.Helper()
	select {
	case m := <-ps.control:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no control message from the agent within 10s")
		return nil
	}
}

func testTunnelConfig() tunnel.Config {
	c := tunnel.DefaultConfig()
	c.HandshakeTimeout = 2 * time.Second
	c.AcceptBacklog = 64
	return c
}

func testConfig(proxies ...string) Config {
	c := Default()
	c.Proxies = proxies
	c.AgentID = "agent-1"
	c.Slot = "slot-1"
	c.Endpoints = []string{"web", "api"}
	c.Token = "token-1"
	c.Tunnel = testTunnelConfig()
	c.BackoffBase = 5 * time.Millisecond
	c.BackoffMax = 50 * time.Millisecond
	c.DrainTimeout = 10 * time.Second
	return c
}

// runningAgent is an agent whose Run is going in the background.
type runningAgent struct {
	*Agent
	runErr chan error
}

// startAgent builds and runs an agent; cleanup closes it, checks Run
// returned nil, and that no goroutine of the agent, the tunnel or yamux
// outlives the test.
func startAgent(t *testing.T, cfg Config) *runningAgent {
	t.Helper()
	a, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ra := &runningAgent{Agent: a, runErr: make(chan error, 1)}
	go func() { ra.runErr <- a.Run(context.Background()) }()
	t.Cleanup(func() {
		_ = a.Close()
		select {
		case err := <-ra.runErr:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after Close")
		}
	})
	return ra
}

// stillRunning fails the test if Run has returned.
func (ra *runningAgent) stillRunning(t *testing.T) {
	t.Helper()
	select {
	case err := <-ra.runErr:
		t.Fatalf("Run returned %v while it should keep going", err)
	default:
	}
}

// acceptAsync runs Accept once in the background.
func (ra *runningAgent) acceptAsync() <-chan *Stream {
	ch := make(chan *Stream, 1)
	go func() {
		s, err := ra.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- s
	}()
	return ch
}

func eventually(t *testing.T, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %s", timeout, fmt.Sprintf(format, args...))
		}
		time.Sleep(5 * time.Millisecond) // poll interval, not synchronisation
	}
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// testLogger sends logs to t.Log until the test's cleanups are done.
func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	watchLeaks(t)
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.done = true
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

var leakWatched sync.Map // *testing.T → struct{}

// watchLeaks registers, once per test and before anything it checks is
// created (so its cleanup runs last), a check that no goroutine of the
// agent, the tunnel or yamux outlives the test.
func watchLeaks(t *testing.T) {
	if _, loaded := leakWatched.LoadOrStore(t, struct{}{}); loaded {
		return
	}
	t.Cleanup(func() {
		leakWatched.Delete(t)
		checkLeaks(t)
	})
}

type tWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// checkLeaks waits for every goroutine running agent, tunnel or yamux code
// to end.
func checkLeaks(t *testing.T) {
	t.Helper()
	var leaked []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		leaked = leakedGoroutines()
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
	t.Errorf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
}

func leakedGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for i, g := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 { // this goroutine
			continue
		}
		s := string(g)
		if strings.Contains(s, "hashicorp/yamux") ||
			strings.Contains(s, "berth/dataplane/agent.(*") ||
			strings.Contains(s, "berth/dataplane/tunnel.") {
			out = append(out, s)
		}
	}
	return out
}
