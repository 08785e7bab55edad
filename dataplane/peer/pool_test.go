package peer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestOpenStreamReachesPeer(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	a := newTestPool(t, testConfig("a"), dir, clock)
	b := serve(t, newTestPool(t, testConfig("b"), dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)

	st, err := a.OpenStream(ctxT(t), "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got := <-b.got
	if got.from != "a" || got.hdr.GetEndpoint() != "web" || got.hdr.GetKind() != berthv1.StreamKind_STREAM_KIND_TCP ||
		got.hdr.GetClientAddress() != "192.0.2.1:4000" {
		t.Fatalf("handler got %v from %q", got.hdr, got.from)
	}
	for i := range 3 {
		if err := roundTrip(st, fmt.Sprintf("message %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if s := a.Stats(); s.Ready != 1 || s.Dials != 1 || s.StreamsOpened != 1 {
		t.Fatalf("a's stats %+v", s)
	}
	if s := b.pool.Stats(); s.Inbound != 1 || s.StreamsAccepted != 1 {
		t.Fatalf("b's stats %+v", s)
	}
}

func TestConcurrentOpenStreamsShareOneDial(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	a := newTestPool(t, testConfig("a"), dir, clock)
	b := serve(t, newTestPool(t, testConfig("b"), dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)

	const n = 100
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			st, err := a.OpenStream(ctxT(t), "b", header("web"))
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			errs <- roundTrip(st, fmt.Sprintf("caller %d", i))
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := b.ln.n.Load(); got != 1 {
		t.Fatalf("%d connections accepted, want 1", got)
	}
	if s := a.Stats(); s.Dials != 1 || s.StreamsOpened != n {
		t.Fatalf("stats %+v", s)
	}
}

func TestStateTransitionsAndBackoff(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	a := newTestPool(t, testConfig("a"), dir, clock)
	log := watch(a, "b")
	b := serve(t, newTestPool(t, testConfig("b"), dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)
	ctx := ctxT(t)

	if s := a.State("b"); s != idle {
		t.Fatalf("state before any dial %v", s)
	}
	st, err := a.OpenStream(ctx, "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	if s := a.State("b"); s != ready {
		t.Fatalf("state after OpenStream %v", s)
	}
	eventually(t, 5*time.Second, "IDLE -> CONNECTING -> READY", func() bool { return log.equal(connecting, ready) })

	// Kill b: its listener and its end of the link.
	_ = b.pool.Close()
	eventually(t, 5*time.Second, "TRANSIENT_FAILURE after the peer died", func() bool { return a.State("b") == failure })

	began := time.Now()
	_, err = a.OpenStream(ctx, "b", header("web"))
	if !errors.Is(err, ErrBackoff) {
		t.Fatalf("OpenStream in back-off: %v, want ErrBackoff", err)
	}
	if d := time.Since(began); d > time.Second {
		t.Fatalf("OpenStream in back-off took %v", d)
	}

	// Back-off over, b still down: the dial fails and the back-off doubles.
	clock.Advance(testBackoff)
	_, err = a.OpenStream(ctx, "b", header("web"))
	if err == nil || errors.Is(err, ErrBackoff) {
		t.Fatalf("OpenStream to a dead peer after back-off: %v, want a dial error", err)
	}
	if s := a.State("b"); s != failure {
		t.Fatalf("state after failed dial %v", s)
	}
	clock.Advance(testBackoff)
	if _, err := a.OpenStream(ctx, "b", header("web")); !errors.Is(err, ErrBackoff) {
		t.Fatalf("OpenStream one base back-off after the second failure: %v, want ErrBackoff", err)
	}

	// Restart b on the same address; once the back-off ends, a redials.
	b2 := serve(t, newTestPool(t, testConfig("b"), dir, clock), b.addr)
	clock.Advance(testBackoff)
	st, err = a.OpenStream(ctx, "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := roundTrip(st, "after restart"); err != nil {
		t.Fatal(err)
	}
	if s := a.State("b"); s != ready {
		t.Fatalf("state after restart %v", s)
	}
	eventually(t, 5*time.Second, "state history", func() bool {
		return log.equal(connecting, ready, failure, connecting, failure, connecting, ready)
	})
	t.Logf("states: %v", log.get())
	if s := a.Stats(); s.Dials != 3 || s.DialFailures != 1 {
		t.Fatalf("stats %+v", s)
	}
	if got := b2.ln.n.Load(); got != 1 {
		t.Fatalf("restarted peer accepted %d connections", got)
	}
}

func TestHeartbeatDetectsHungPeer(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	cfg := testConfig("a")
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.HeartbeatTimeout = 300 * time.Millisecond
	a := newTestPool(t, cfg, dir, clock)
	b := serve(t, newTestPool(t, testConfig("b"), dir, clock), "127.0.0.1:0")
	r := newRelay(t, b.addr)
	dir.set("b", r.addr())

	st, err := a.OpenStream(ctxT(t), "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := roundTrip(st, "through the relay"); err != nil {
		t.Fatal(err)
	}

	r.frozen.Store(true)
	frozen := time.Now()
	// yamux's own keepalive is 15s; only the heartbeat notices this soon.
	eventually(t, 3*time.Second, "heartbeat marks the hung peer TRANSIENT_FAILURE", func() bool { return a.State("b") == failure })
	t.Logf("hung peer detected after %v (interval %v, timeout %v)", time.Since(frozen), cfg.HeartbeatInterval, cfg.HeartbeatTimeout)
	if _, err := a.OpenStream(ctxT(t), "b", header("web")); !errors.Is(err, ErrBackoff) {
		t.Fatalf("OpenStream after the heartbeat failed: %v, want ErrBackoff", err)
	}
}

func TestConnect(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	a := newTestPool(t, testConfig("a"), dir, clock)
	log := watch(a, "b")
	b := serve(t, newTestPool(t, testConfig("b"), dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)

	a.Connect("b")
	eventually(t, 5*time.Second, "Connect reaches READY", func() bool { return a.State("b") == ready })
	eventually(t, 5*time.Second, "CONNECTING then READY reported", func() bool { return log.equal(connecting, ready) })
	a.Connect("b") // READY: nothing to do
	st, err := a.OpenStream(ctxT(t), "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	if got := b.ln.n.Load(); got != 1 {
		t.Fatalf("%d connections accepted, want 1", got)
	}

	// Unknown peers and this proxy itself are ignored.
	a.Connect("ghost")
	a.Connect("a")
	if s := a.State("ghost"); s != idle {
		t.Fatalf("unknown peer state %v", s)
	}

	// A dead peer: Connect fails into back-off, does nothing during it, and
	// dials again after.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir.set("c", dead.Addr().String())
	_ = dead.Close()
	a.Connect("c")
	eventually(t, 5*time.Second, "failed Connect reaches TRANSIENT_FAILURE", func() bool { return a.State("c") == failure })
	a.Connect("c")
	if s := a.Stats(); s.Dials != 2 || s.DialFailures != 1 {
		t.Fatalf("Connect during back-off dialled: %+v", s)
	}
	clock.Advance(testBackoff)
	a.Connect("c")
	eventually(t, 5*time.Second, "second dial fails", func() bool { return a.Stats().DialFailures == 2 })
	if s := a.Stats(); s.Dials != 3 || s.TransientFailure != 1 || s.Ready != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRefusals(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	a := newTestPool(t, testConfig("a"), dir, clock)
	b := serve(t, newTestPool(t, testConfig("b"), dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)
	ctx := ctxT(t)

	t.Run("unknown peer", func(t *testing.T) {
		for _, id := range []string{"ghost", "a"} {
			if _, err := a.OpenStream(ctx, id, header("web")); !errors.Is(err, ErrUnknownPeer) {
				t.Errorf("OpenStream to %q: %v, want ErrUnknownPeer", id, err)
			}
		}
	})

	t.Run("hello refused", func(t *testing.T) {
		for _, id := range []string{"b", "", "bad id"} {
			_, welcome, err := tunnel.DialPeer(ctx, b.addr, nil, &berthv1.PeerHello{ProxyId: id}, tunnel.DefaultConfig())
			var te *tunnel.Error
			if !errors.As(err, &te) || te.Code != berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST {
				t.Errorf("hello as %q: %v, want a BAD_REQUEST refusal", id, err)
				continue
			}
			if welcome.GetProxyId() != "b" {
				t.Errorf("refusal from proxy %q", welcome.GetProxyId())
			}
		}
		if s := b.pool.Stats(); s.Inbound != 0 {
			t.Errorf("refused hellos left %d inbound links", s.Inbound)
		}
	})

	t.Run("stream refused", func(t *testing.T) {
		dials := b.ln.n.Load()
		_, err := a.OpenStream(ctx, "b", header("refused"))
		var te *tunnel.Error
		if !errors.As(err, &te) || te.Code != berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("refused stream: %v, want an UNAVAILABLE *tunnel.Error", err)
		}
		if s := a.State("b"); s != ready {
			t.Fatalf("state after a refused stream %v", s)
		}
		st, err := a.OpenStream(ctx, "b", header("web"))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := roundTrip(st, "still up"); err != nil {
			t.Fatal(err)
		}
		if got := b.ln.n.Load() - dials; got != 1 {
			t.Fatalf("%d connections accepted, want 1", got)
		}
	})

	t.Run("stale directory", func(t *testing.T) {
		// c's entry points at b: the link must not be taken for c's.
		dir.set("c", b.addr)
		_, err := a.OpenStream(ctx, "c", header("web"))
		if err == nil || !strings.Contains(err.Error(), `answered as proxy "b"`) {
			t.Fatalf("OpenStream to c at b's address: %v", err)
		}
		if s := a.State("c"); s != failure {
			t.Fatalf("state %v", s)
		}
	})
}

func TestForget(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	a := newTestPool(t, testConfig("a"), dir, clock)
	log := watch(a, "b")
	b := serve(t, newTestPool(t, testConfig("b"), dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)

	st, err := a.OpenStream(ctxT(t), "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	a.Forget("b")
	if s := a.State("b"); s != idle {
		t.Fatalf("state after Forget %v", s)
	}
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := st.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a forgotten link's stream: %v, want it closed", err)
	}
	eventually(t, 5*time.Second, "b drops its end", func() bool { return b.pool.Stats().Inbound == 0 })
	eventually(t, 5*time.Second, "IDLE reported", func() bool { return log.equal(connecting, ready, idle) })

	// A peer that comes back is dialled afresh, without back-off.
	st2, err := a.OpenStream(ctxT(t), "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if got := b.ln.n.Load(); got != 2 {
		t.Fatalf("%d connections accepted, want 2", got)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	checkLeaks(t)
	dir, clock := newDirectory(), newClock()
	a := newTestPool(t, testConfig("a"), dir, clock)
	bcfg := testConfig("b")
	bcfg.Tunnel.HandshakeTimeout = 30 * time.Second
	b := serve(t, newTestPool(t, bcfg, dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)
	// a is served too, so b can hold an outgoing link and a an inbound one.
	as := serve(t, a, "127.0.0.1:0")
	dir.set("a", as.addr)

	st, err := a.OpenStream(ctxT(t), "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	back, err := b.pool.OpenStream(ctxT(t), "a", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()

	// A peer that accepts TCP and never answers the hello: the dial hangs
	// in CONNECTING, and an OpenStream waits on it.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	dir.set("hole", hole.Addr().String())
	waited := make(chan error, 1)
	go func() {
		_, err := a.OpenStream(ctxT(t), "hole", header("web"))
		waited <- err
	}()
	eventually(t, 5*time.Second, "dial to the hole in progress", func() bool { return a.State("hole") == connecting })

	// A client that connects to b and sends nothing holds a handshake.
	idleConn, err := net.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idleConn.Close()
	eventually(t, 5*time.Second, "b accepted the silent client", func() bool { return b.ln.n.Load() == 2 })

	began := time.Now()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; !errors.Is(err, ErrClosed) {
		t.Fatalf("OpenStream waiting on a dial during Close: %v, want ErrClosed", err)
	}
	if err := <-as.served; !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve after Close: %v, want ErrClosed", err)
	}
	as.served <- nil // for the server's cleanup
	if _, err := a.OpenStream(ctxT(t), "b", header("web")); !errors.Is(err, ErrClosed) {
		t.Fatalf("OpenStream after Close: %v", err)
	}
	a.Connect("b")
	a.Forget("b")
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(st); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a stream outlived Close")
	}

	if err := b.pool.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Fatalf("Close took %v: a handshake was not interrupted", d)
	}
	if err := <-b.served; !errors.Is(err, ErrClosed) {
		t.Fatalf("b's Serve after Close: %v", err)
	}
	b.served <- nil
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Serve(ln, b.handle); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve on a closed pool: %v", err)
	}
}

func TestServeReturnsWhenListenerCloses(t *testing.T) {
	checkLeaks(t)
	p := newTestPool(t, testConfig("a"), newDirectory(), newClock())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln, func(*tunnel.Incoming, string) {}) }()
	_ = ln.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve after its listener closed: %v, want nil", err)
	}
}

func TestTLS(t *testing.T) {
	checkLeaks(t)
	tlsCfg := selfSigned(t)
	dir, clock := newDirectory(), newClock()
	acfg, bcfg := testConfig("a"), testConfig("b")
	acfg.TLS, bcfg.TLS = tlsCfg, tlsCfg
	a := newTestPool(t, acfg, dir, clock)
	b := serve(t, newTestPool(t, bcfg, dir, clock), "127.0.0.1:0")
	dir.set("b", b.addr)

	st, err := a.OpenStream(ctxT(t), "b", header("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := roundTrip(st, "over tls"); err != nil {
		t.Fatal(err)
	}

	// A plaintext peer is not let in.
	plain := newTestPool(t, testConfig("p"), dir, clock)
	if _, err := plain.OpenStream(ctxT(t), "b", header("web")); err == nil {
		t.Fatal("plaintext dial to a TLS peer port succeeded")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Default()
	ok.SelfID = "proxy-1"
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"ok", func(*Config) {}, ""},
		{"no self id", func(c *Config) { c.SelfID = "" }, "self id: empty"},
		{"bad self id", func(c *Config) { c.SelfID = "a b" }, "self id:"},
		{"tunnel", func(c *Config) { c.Tunnel.HandshakeTimeout = 0 }, "tunnel: handshake timeout"},
		{"backoff base", func(c *Config) { c.BackoffBase = 0 }, "backoff base"},
		{"backoff max", func(c *Config) { c.BackoffMax = c.BackoffBase / 2 }, "backoff max"},
		{"heartbeat interval", func(c *Config) { c.HeartbeatInterval = 0 }, "heartbeat interval"},
		{"heartbeat timeout", func(c *Config) { c.HeartbeatTimeout = -1 }, "heartbeat timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mutate(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestBackoffDoublesToMax(t *testing.T) {
	cfg := testConfig("a")
	p := &Pool{cfg: cfg, jitter: func(d time.Duration) time.Duration { return d }}
	want := []time.Duration{1, 2, 4, 8, 8, 8}
	for i, w := range want {
		if got := p.backoff(i + 1); got != w*testBackoff {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w*testBackoff)
		}
	}
	for range 1000 {
		if d := fullJitter(time.Second); d < 0 || d > time.Second {
			t.Fatalf("jitter %v out of [0, 1s]", d)
		}
	}
}

func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "berth peer test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		RootCAs:      roots,
		MinVersion:   tls.VersionTLS13,
	}
}
