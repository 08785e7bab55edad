package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Errors of the agent.
var (
	// ErrClosed is returned by Accept (and Run, WaitReady) once the agent is
	// closed. It matches net.ErrClosed, so servers treat it as a closed
	// listener.
	ErrClosed = fmt.Errorf("agent: closed: %w", net.ErrClosed)
	// ErrRunning is a second concurrent call to Run.
	ErrRunning = errors.New("agent: already running")
)

// Stream is one stream a proxy opened to one of the agent's endpoints,
// already accepted: it carries raw bytes (an HTTP/1.1 exchange for
// STREAM_KIND_HTTP). Close half-closes it (the other side sees EOF and the
// stream can still be read), as yamux streams do.
type Stream struct {
	Endpoint      string
	Kind          berthv1.StreamKind
	ClientAddress string
	net.Conn
}

// RemoteAddr is the downstream client's address when the proxy gave one
// (host:port, or a bare IP with port 0; of an X-Forwarded-For list, the
// last hop), so servers log the real client rather than the proxy.
func (s *Stream) RemoteAddr() net.Addr {
	addr := s.ClientAddress
	if i := strings.LastIndexByte(addr, ','); i >= 0 {
		addr = strings.TrimSpace(addr[i+1:]) // an X-Forwarded-For list: the hop the proxy saw
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return net.TCPAddrFromAddrPort(ap)
	}
	if ip, err := netip.ParseAddr(addr); err == nil {
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
	}
	return s.Conn.RemoteAddr()
}

// CloseWrite sends EOF to the other side; reading goes on.
func (s *Stream) CloseWrite() error { return s.Conn.Close() }

// Status is a snapshot of the agent's tunnels.
type Status struct {
	// Connected is whether a tunnel is up and current.
	Connected bool
	// Proxy is the address of the proxy holding the current tunnel;
	// ProxyID and ConnectionID are what its welcome said.
	Proxy        string
	ProxyID      string
	ConnectionID string
	// Tunnels counts open sessions: the current one and any still draining
	// after a move.
	Tunnels int
	// Reconnects counts tunnels established after the previous one was
	// lost (a drop, not a move).
	Reconnects int
	// Moves counts make-before-break switches (Reconnect or Drain).
	Moves int
	// LastError is the most recent failed dial or move, "" if none yet.
	LastError string
}

// Agent keeps a tunnel up to one of its proxies and serves its endpoints.
type Agent struct {
	cfg    Config
	logger *slog.Logger
	serves map[string]bool
	// httpProxy finds the HTTP proxy a tunnel goes through (nil: direct).
	httpProxy func(*http.Request) (*url.URL, error)

	queue   chan *pending
	control chan controlReq
	ready   chan struct{} // closed when the first tunnel is welcomed
	closed  chan struct{}
	running atomic.Bool

	mu        sync.Mutex
	isClosed  bool
	runCancel context.CancelFunc
	tunnels   map[*tunnelConn]struct{}
	status    Status
	metrics   *metrics
	readyOnce sync.Once
	wg        sync.WaitGroup
}

// tunnelConn is one session to one proxy.
type tunnelConn struct {
	sess    *tunnel.Session
	addr    string
	proxyID string
	connID  string
	upAt    time.Time
}

// pending is a stream waiting for an Accept caller. Whoever claims it
// first (Accept, or the timer that refuses it) answers the opener.
type pending struct {
	in      *tunnel.Incoming
	claimed atomic.Bool
	timer   *time.Timer
}

func (p *pending) claim() bool { return p.claimed.CompareAndSwap(false, true) }

type controlReq struct {
	from *tunnelConn
	msg  *berthv1.ControlMessage
}

// New checks cfg and builds an agent; Run connects it.
func New(cfg Config, logger *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:     cfg,
		logger:  logger.With("subsystem", "agent", "agent_id", cfg.AgentID, "slot", cfg.Slot),
		serves:  make(map[string]bool, len(cfg.Endpoints)),
		queue:   make(chan *pending, cfg.Tunnel.AcceptBacklog),
		control: make(chan controlReq, 4),
		ready:   make(chan struct{}),
		closed:  make(chan struct{}),
		tunnels: make(map[*tunnelConn]struct{}),
	}
	for _, e := range cfg.Endpoints {
		a.serves[e] = true
	}
	a.httpProxy, _ = cfg.proxyFunc() // Validate checked it
	a.metrics = newMetrics(a)
	return a, nil
}

// Run keeps a tunnel up until ctx ends or the agent is closed, and returns
// nil then (ErrClosed if the agent was closed before Run started). A
// refused hello or a dropped tunnel is retried with jittered backoff,
// rotating through the proxies; Run never returns because of a proxy.
// Tunnels are closed when Run returns.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer a.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	if a.isClosed {
		a.mu.Unlock()
		return ErrClosed
	}
	a.runCancel = cancel
	a.wg.Add(1)
	a.mu.Unlock()
	defer a.wg.Done()
	defer a.closeTunnels()

	l := &loop{a: a, next: rand.IntN(len(a.cfg.Proxies)), backoff: backoff{base: a.cfg.BackoffBase, max: a.cfg.BackoffMax}}
	l.run(ctx)
	return nil
}

// loop is Run's state; only Run's goroutine touches it, so moves and
// reconnects never race each other.
type loop struct {
	a       *Agent
	next    int // index in Proxies of the next address to dial
	backoff backoff
	cur     *tunnelConn
}

func (l *loop) run(ctx context.Context) {
	a := l.a
	wait := false
	for {
		if l.cur == nil {
			tc := l.connect(ctx, wait)
			if tc == nil {
				return
			}
			if !l.adopt(tc, wait) {
				return // closed meanwhile
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-l.cur.sess.Closed():
			lived := time.Since(l.cur.upAt)
			a.logger.Warn("tunnel lost; reconnecting", "proxy", l.cur.addr, "connection_id", l.cur.connID, "up_for", lived.Round(time.Millisecond))
			if lived >= l.backoff.stableAfter() {
				l.backoff.reset()
			}
			a.setStatus(func(s *Status) { s.Connected = false })
			l.cur = nil
			wait = true
		case req := <-a.control:
			if req.from != l.cur {
				a.logger.Debug("control message from a draining tunnel ignored", "proxy", req.from.addr)
				continue
			}
			switch k := req.msg.Kind.(type) {
			case *berthv1.ControlMessage_Reconnect:
				l.move(ctx, k.Reconnect)
			case *berthv1.ControlMessage_Drain:
				l.drain(ctx, k.Drain)
			}
		}
	}
}

// connect dials proxies in rotation until one welcomes the agent, waiting
// a backoff between failures (and before the first attempt when wait is
// set, so agents of a dead proxy do not all redial at once). nil means ctx
// ended.
func (l *loop) connect(ctx context.Context, wait bool) *tunnelConn {
	for {
		if wait && !sleep(ctx, l.backoff.next()) {
			return nil
		}
		wait = true
		addr := l.a.cfg.Proxies[l.next%len(l.a.cfg.Proxies)]
		l.next = (l.next + 1) % len(l.a.cfg.Proxies)
		tc, err := l.a.dial(ctx, addr, "")
		if err == nil {
			return tc
		}
		if ctx.Err() != nil {
			return nil
		}
		l.a.logger.Warn("tunnel dial failed", "proxy", addr, "err", err)
	}
}

// adopt makes tc the current tunnel and serves it; false when the agent
// is closed (tc is closed then).
func (l *loop) adopt(tc *tunnelConn, reconnect bool) bool {
	a := l.a
	if !a.serve(tc) {
		return false
	}
	l.cur = tc
	a.setStatus(func(s *Status) {
		s.Connected = true
		s.Proxy, s.ProxyID, s.ConnectionID = tc.addr, tc.proxyID, tc.connID
		if reconnect {
			s.Reconnects++
		}
	})
	a.readyOnce.Do(func() { close(a.ready) })
	a.logger.Info("tunnel up", "proxy", tc.addr, "proxy_id", tc.proxyID, "connection_id", tc.connID)
	return true
}

// move carries out a Reconnect make-before-break: the old tunnel serves
// until the new one is welcomed, then drains.
func (l *loop) move(ctx context.Context, r *berthv1.Reconnect) {
	a := l.a
	log := a.logger.With("move_id", r.GetMoveId(), "to", r.GetAddress(), "to_proxy_id", r.GetProxyId())
	if r.GetAddress() == "" || r.GetMoveId() == "" {
		log.Warn("reconnect without an address or move id ignored")
		return
	}
	log.Info("moving tunnel")
	// A WebSocket tunnel moves over WebSocket to the target's tunnel port.
	nt, err := a.dial(ctx, tunnel.MoveTarget(l.cur.addr, r.GetAddress()), r.GetMoveId())
	if err != nil {
		// The control plane aborts the move when the target never reports
		// the new connection; the old tunnel stays.
		log.Warn("move target unreachable; keeping the current tunnel", "err", err)
		return
	}
	old := l.cur
	moved := &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Moved{Moved: &berthv1.Moved{
		MoveId: r.GetMoveId(), NewConnectionId: nt.connID,
	}}}
	if err := old.sess.SendControl(moved); err != nil {
		log.Warn("could not tell the old proxy the move is done", "err", err)
	}
	l.switchTo(old, nt, a.cfg.DrainTimeout)
	log.Info("tunnel moved", "connection_id", nt.connID)
}

// drain moves to another configured proxy, trying each once; if none
// answers the old tunnel stays until its proxy closes it, and Run
// reconnects as after any drop.
func (l *loop) drain(ctx context.Context, d *berthv1.Drain) {
	a := l.a
	old := l.cur
	timeout := a.cfg.DrainTimeout
	if ms := d.GetDeadlineUnixMs(); ms > 0 {
		if until := time.Until(time.UnixMilli(ms)); until > 0 && until < timeout {
			timeout = until
		}
	}
	a.logger.Info("proxy is draining the tunnel", "proxy", old.addr, "reason", d.GetReason())
	n := len(a.cfg.Proxies)
	for i := 0; i < n; i++ {
		addr := a.cfg.Proxies[(l.next+i)%n]
		if addr == old.addr {
			continue
		}
		nt, err := a.dial(ctx, addr, "")
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.logger.Warn("drain: dial failed", "proxy", addr, "err", err)
			continue
		}
		l.next = (l.next + i + 1) % n
		l.switchTo(old, nt, timeout)
		return
	}
	a.logger.Warn("drain: no other proxy reachable; staying until the tunnel closes", "proxy", old.addr)
}

// switchTo makes nt current and gives old until timeout to finish.
func (l *loop) switchTo(old, nt *tunnelConn, timeout time.Duration) {
	a := l.a
	if !l.adopt(nt, false) {
		return // closed meanwhile; Run's next look at ctx ends it
	}
	a.setStatus(func(s *Status) { s.Moves++ })
	a.mu.Lock()
	if a.isClosed {
		a.mu.Unlock()
		return
	}
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-old.sess.Closed():
			a.logger.Debug("old tunnel closed by its proxy", "proxy", old.addr, "connection_id", old.connID)
		case <-t.C:
			a.logger.Info("old tunnel still open after the drain timeout; closing it", "proxy", old.addr, "connection_id", old.connID, "streams", old.sess.NumStreams()-1)
			_ = old.sess.Close()
		case <-a.closed:
		}
	}()
}

// dial opens one tunnel; moveID is set for the target side of a move.
func (a *Agent) dial(ctx context.Context, addr, moveID string) (*tunnelConn, error) {
	hello := &berthv1.TunnelHello{
		AgentId:   a.cfg.AgentID,
		Slot:      a.cfg.Slot,
		Endpoints: slices.Clone(a.cfg.Endpoints),
		Token:     a.cfg.Token,
		MoveId:    moveID,
	}
	d := tunnel.Dialer{TLS: tlsFor(a.cfg.TLS, addr), Proxy: a.httpProxy}
	sess, welcome, err := d.DialTunnel(ctx, addr, hello, a.cfg.Tunnel)
	if err != nil {
		a.metrics.dialErrors.Inc()
		a.setStatus(func(s *Status) { s.LastError = err.Error() })
		return nil, err
	}
	return &tunnelConn{sess: sess, addr: addr, proxyID: welcome.GetProxyId(), connID: welcome.GetConnectionId(), upAt: time.Now()}, nil
}

// serve tracks tc and starts its stream and control loops; false (and tc
// closed) when the agent is closed.
func (a *Agent) serve(tc *tunnelConn) bool {
	a.mu.Lock()
	if a.isClosed {
		a.mu.Unlock()
		_ = tc.sess.Close()
		return false
	}
	a.tunnels[tc] = struct{}{}
	a.status.Tunnels = len(a.tunnels)
	a.wg.Add(2)
	a.mu.Unlock()
	go a.acceptLoop(tc)
	go a.controlLoop(tc)
	return true
}

func (a *Agent) acceptLoop(tc *tunnelConn) {
	defer a.wg.Done()
	defer a.forget(tc)
	wait := a.cfg.Tunnel.HandshakeTimeout / 2
	for {
		in, err := tc.sess.AcceptStream()
		if err != nil {
			return
		}
		ep := in.Header.GetEndpoint()
		if !a.serves[ep] {
			a.logger.Warn("stream for an endpoint not served here refused", "endpoint", ep, "proxy", tc.addr)
			a.metrics.refused.WithLabelValues(refusedUnknownEndpoint).Inc()
			in.Reject(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST, "endpoint %s is not served here", ep))
			continue
		}
		// The opener waits HandshakeTimeout for the reply in all; refusing
		// at half of it leaves time for the refusal to reach it.
		p := &pending{in: in}
		p.timer = time.AfterFunc(wait, func() {
			if p.claim() {
				a.logger.Warn("stream not accepted in time; refused", "endpoint", ep, "waited", wait)
				a.metrics.refused.WithLabelValues(refusedNotAccepted).Inc()
				in.Reject(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE, "no one accepted the stream within %s", wait))
			}
		})
		select {
		case a.queue <- p:
		default:
			if p.claim() {
				p.timer.Stop()
				a.metrics.refused.WithLabelValues(refusedBacklog).Inc()
				in.Reject(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE, "%d streams already wait to be accepted", cap(a.queue)))
			}
		}
	}
}

func (a *Agent) controlLoop(tc *tunnelConn) {
	defer a.wg.Done()
	for {
		m, err := tc.sess.RecvControl()
		if err != nil {
			_ = tc.sess.Close() // a tunnel without its control stream cannot be moved
			return
		}
		switch m.Kind.(type) {
		case *berthv1.ControlMessage_Reconnect, *berthv1.ControlMessage_Drain:
			select {
			case a.control <- controlReq{from: tc, msg: m}:
			case <-tc.sess.Closed():
				return
			case <-a.closed:
				return
			}
		default:
			a.logger.Debug("control message ignored", "message", m.String())
		}
	}
}

func (a *Agent) forget(tc *tunnelConn) {
	_ = tc.sess.Close()
	a.mu.Lock()
	delete(a.tunnels, tc)
	a.status.Tunnels = len(a.tunnels)
	a.mu.Unlock()
}

// Accept returns the next stream for one of the agent's endpoints, from
// any tunnel. A stream not taken within half the handshake timeout is
// refused as UNAVAILABLE, so the proxy can try elsewhere.
func (a *Agent) Accept() (*Stream, error) {
	for {
		select {
		case <-a.closed:
			return nil, ErrClosed
		default:
		}
		select {
		case <-a.closed:
			return nil, ErrClosed
		case p := <-a.queue:
			if !p.claim() {
				continue
			}
			p.timer.Stop()
			conn, err := p.in.Accept()
			if err != nil {
				a.logger.Debug("accepting a stream failed", "err", err)
				continue
			}
			h := p.in.Header
			a.metrics.endpoint(h.GetEndpoint()).streams.Inc()
			return &Stream{Endpoint: h.GetEndpoint(), Kind: h.GetKind(), ClientAddress: h.GetClientAddress(), Conn: conn}, nil
		}
	}
}

// WaitReady blocks until the agent's first tunnel is welcomed, ctx ends
// (the error then includes the last dial failure) or the agent is closed.
func (a *Agent) WaitReady(ctx context.Context) error {
	select {
	case <-a.ready:
		return nil
	case <-a.closed:
		return ErrClosed
	case <-ctx.Done():
		if last := a.Status().LastError; last != "" {
			return fmt.Errorf("agent: no tunnel yet (last error: %s): %w", last, ctx.Err())
		}
		return fmt.Errorf("agent: no tunnel yet: %w", ctx.Err())
	}
}

// Status reports the current tunnel and counters.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

func (a *Agent) setStatus(f func(*Status)) {
	a.mu.Lock()
	f(&a.status)
	a.mu.Unlock()
}

// Close stops Run, closes every tunnel (and the streams on them), refuses
// streams still waiting for Accept and waits for the agent's goroutines.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.isClosed {
		a.mu.Unlock()
		return nil
	}
	a.isClosed = true
	close(a.closed)
	if a.runCancel != nil {
		a.runCancel()
	}
	a.mu.Unlock()
	a.closeTunnels()
	a.wg.Wait()
	for {
		select {
		case p := <-a.queue:
			if p.claim() {
				p.timer.Stop()
				p.in.Reject(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE, "agent closed"))
			}
		default:
			return nil
		}
	}
}

func (a *Agent) closeTunnels() {
	a.mu.Lock()
	open := make([]*tunnelConn, 0, len(a.tunnels))
	for tc := range a.tunnels {
		open = append(open, tc)
	}
	a.status.Connected = false
	a.mu.Unlock()
	for _, tc := range open {
		_ = tc.sess.Close()
	}
}

// backoff is exponential with full jitter: attempt n waits a uniform
// duration in [0, min(max, base*2^n)].
type backoff struct {
	base, max time.Duration
	attempt   int
}

func (b *backoff) next() time.Duration {
	ceil := b.base
	for i := 0; i < b.attempt && ceil < b.max; i++ {
		ceil *= 2
	}
	ceil = min(ceil, b.max)
	b.attempt++
	return rand.N(ceil + 1)
}

func (b *backoff) reset() { b.attempt = 0 }

// stableAfter is how long a tunnel must have lived for its loss to count
// as a fresh failure rather than part of a flapping streak.
func (b *backoff) stableAfter() time.Duration { return max(b.max, time.Second) }

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
