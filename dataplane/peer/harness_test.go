package peer

import (
	"context"
	"errors"
	"io"
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

// checkLeaks fails the test if goroutines started during it outlive its
// cleanups. Call it first so its cleanup runs last.
func checkLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// directory is the peer directory the pools resolve through.
type directory struct {
	mu    sync.Mutex
	addrs map[string]string
}

func newDirectory() *directory { return &directory{addrs: map[string]string{}} }

func (d *directory) set(id, addr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs[id] = addr
}

func (d *directory) resolve(id string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.addrs[id]
	return a, ok
}

// fakeClock drives back-off; heartbeats use real time.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const testBackoff = 200 * time.Millisecond

func testConfig(id string) Config {
	cfg := Default()
	cfg.SelfID = id
	cfg.BackoffBase = testBackoff
	cfg.BackoffMax = 8 * testBackoff
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.HeartbeatTimeout = 2 * time.Second
	cfg.Tunnel.HandshakeTimeout = 3 * time.Second
	return cfg
}

// newTestPool returns a pool on clock with jitter off, closed at cleanup.
func newTestPool(t *testing.T, cfg Config, dir *directory, clock *fakeClock) *Pool {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("pool", cfg.SelfID)
	p := NewPool(cfg, dir.resolve, logger)
	p.now = clock.Now
	p.jitter = func(d time.Duration) time.Duration { return d }
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// countingListener counts accepted connections: one per dial.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// server is a pool serving peer links on a listener.
type server struct {
	pool   *Pool
	ln     *countingListener
	addr   string
	served chan error // Serve's result
	got    chan received
}

type received struct {
	hdr  *berthv1.StreamHeader
	from string
}

// serve starts p.Serve on addr ("127.0.0.1:0" for any port) with
// testHandler; received headers go to the server's got channel.
func serve(t *testing.T, p *Pool, addr string) *server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{
		pool:   p,
		ln:     &countingListener{Listener: ln},
		addr:   ln.Addr().String(),
		served: make(chan error, 1),
		got:    make(chan received, 1000),
	}
	go func() { s.served <- p.Serve(s.ln, s.handle) }()
	t.Cleanup(func() {
		_ = s.ln.Close()
		select {
		case <-s.served:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after its listener closed")
		}
	})
	return s
}

// handle rejects endpoint "refused" and echoes anything else.
func (s *server) handle(in *tunnel.Incoming, from string) {
	s.got <- received{in.Header, from}
	if in.Header.GetEndpoint() == "refused" {
		in.Reject(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE, "no connection for %s", in.Header.GetEndpoint()))
		return
	}
	c, err := in.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = io.Copy(c, c)
}

func header(endpoint string) *berthv1.StreamHeader {
	return &berthv1.StreamHeader{Endpoint: endpoint, Kind: berthv1.StreamKind_STREAM_KIND_TCP, ClientAddress: "192.0.2.1:4000"}
}

// roundTrip writes msg on c and expects it echoed.
func roundTrip(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo mismatch: " + string(buf))
	}
	return nil
}

// stateLog records OnStateChange calls for one peer.
type stateLog struct {
	mu     sync.Mutex
	states []berthv1.ConnectivityState
}

func watch(p *Pool, peer string) *stateLog {
	l := &stateLog{}
	p.OnStateChange(func(id string, s berthv1.ConnectivityState) {
		if id != peer {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.states = append(l.states, s)
	})
	return l
}

func (l *stateLog) get() []berthv1.ConnectivityState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]berthv1.ConnectivityState(nil), l.states...)
}

func (l *stateLog) equal(want ...berthv1.ConnectivityState) bool {
	got := l.get()
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// relay forwards TCP to target until frozen; frozen, it keeps both
// connections open and drops every byte, like a peer that hangs.
type relay struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func newRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			_ = c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", r.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		r.mu.Lock()
		r.conns = append(r.conns, in, out)
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pump(in, out)
		go r.pump(out, in)
	}
}

func (r *relay) pump(from, to net.Conn) {
	defer r.wg.Done()
	defer from.Close()
	defer to.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !r.frozen.Load() {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
