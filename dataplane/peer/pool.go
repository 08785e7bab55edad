package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Connectivity states, shortened.
const (
	idle       = berthv1.ConnectivityState_CONNECTIVITY_STATE_IDLE
	connecting = berthv1.ConnectivityState_CONNECTIVITY_STATE_CONNECTING
	ready      = berthv1.ConnectivityState_CONNECTIVITY_STATE_READY
	failure    = berthv1.ConnectivityState_CONNECTIVITY_STATE_TRANSIENT_FAILURE
)

// Resolve maps a peer proxy id to its peer address (from the control
// plane's peer directory); ok is false if the id is unknown. It is called
// without the pool's lock held, before each dial.
type Resolve func(proxyID string) (addr string, ok bool)

// Pool holds this proxy's outgoing links, one per peer, and serves the
// links other proxies dial to it. It is safe for concurrent use.
type Pool struct {
	cfg     Config
	resolve Resolve
	logger  *slog.Logger

	// Tests replace these before first use to make back-off deterministic.
	now    func() time.Time
	jitter func(time.Duration) time.Duration

	ctx    context.Context // cancelled by Close: aborts dials and handshakes
	cancel context.CancelFunc
	// wg counts every goroutine the pool starts. Add is called with mu held
	// and closed false, or from a goroutine wg already counts, so Close's
	// Wait sees them all.
	wg sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	links     map[string]*link
	inbound   map[string]*tunnel.Session // by the dialling proxy's id
	listeners map[net.Listener]struct{}
	watchers  []func(string, berthv1.ConnectivityState)
	events    []event       // state changes not yet delivered to watchers
	wake      chan struct{} // capacity 1: events is not empty
	stats     Stats         // counters guarded by mu; the two below are not

	streamsOpened, streamsAccepted atomic.Uint64
}

// link is the pool's record of one peer; guarded by Pool.mu.
type link struct {
	id       string
	state    berthv1.ConnectivityState
	sess     *tunnel.Session // READY only
	dial     *attempt        // CONNECTING only
	failures int             // failures in a row, since the last READY
	retryAt  time.Time       // TRANSIENT_FAILURE: no dial before this
	lastErr  error
}

// attempt is one dial, shared by every caller that waits for it.
type attempt struct {
	done chan struct{} // closed when sess or err is set
	sess *tunnel.Session
	err  error
}

type event struct {
	id    string
	state berthv1.ConnectivityState
}

// Stats is a snapshot of a pool's counters.
type Stats struct {
	// Outgoing links by state; peers with no link are IDLE and not counted.
	Connecting, Ready, TransientFailure int
	// Inbound is the number of links other proxies hold to this one.
	Inbound int
	// Dials counts dials started; DialFailures those that did not reach
	// READY.
	Dials, DialFailures uint64
	// StreamsOpened counts streams OpenStream returned; StreamsAccepted
	// those Serve handed to its handler.
	StreamsOpened, StreamsAccepted uint64
}

// NewPool returns a pool with no links. cfg must pass Validate, or NewPool
// panics. resolve finds a peer's address when a link is dialled.
func NewPool(cfg Config, resolve Resolve, logger *slog.Logger) *Pool {
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("peer: NewPool: %v", err))
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		cfg:       cfg,
		resolve:   resolve,
		logger:    logger.With("subsystem", "peer"),
		now:       time.Now,
		jitter:    fullJitter,
		ctx:       ctx,
		cancel:    cancel,
		links:     make(map[string]*link),
		inbound:   make(map[string]*tunnel.Session),
		listeners: make(map[net.Listener]struct{}),
		wake:      make(chan struct{}, 1),
	}
	p.wg.Add(1)
	go p.notifyLoop()
	return p
}

func fullJitter(d time.Duration) time.Duration {
	return time.Duration(rand.Int64N(int64(d) + 1))
}

// OpenStream opens a stream to peer proxyID over its link, dialling the
// link first if there is none. Concurrent callers for the same peer share
// one dial. While the peer is in back-off after a failure it fails at once
// with an error wrapping ErrBackoff, so the caller can fail over to another
// holder. A refusal from the peer is a *tunnel.Error (errors.As) and
// leaves the link up. ctx bounds the wait for the dial and the stream's
// handshake; the dial itself is shared and outlives one caller's ctx.
func (p *Pool) OpenStream(ctx context.Context, proxyID string, hdr *berthv1.StreamHeader) (net.Conn, error) {
	sess, err := p.session(ctx, proxyID)
	if err != nil {
		return nil, err
	}
	st, err := sess.OpenStream(ctx, hdr)
	if err != nil {
		var refused *tunnel.Error
		if !errors.As(err, &refused) && sess.IsClosed() {
			p.broken(proxyID, sess, err)
		}
		return nil, fmt.Errorf("peer %s: %w", proxyID, err)
	}
	p.streamsOpened.Add(1)
	return st, nil
}

// session returns proxyID's READY session, dialling or waiting for a dial
// as needed.
func (p *Pool) session(ctx context.Context, proxyID string) (*tunnel.Session, error) {
	if proxyID == p.cfg.SelfID {
		return nil, fmt.Errorf("peer %s: this proxy: %w", proxyID, ErrUnknownPeer)
	}
	var (
		addr     string
		resolved bool
	)
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		l := p.links[proxyID]
		now := p.now()
		switch {
		case l != nil && l.state == ready:
			s := l.sess
			p.mu.Unlock()
			return s, nil
		case l != nil && l.state == connecting:
			a := l.dial
			p.mu.Unlock()
			return p.wait(ctx, proxyID, a)
		case l != nil && l.state == failure && now.Before(l.retryAt):
			err := fmt.Errorf("peer %s: %w for %v more (last error: %v)",
				proxyID, ErrBackoff, l.retryAt.Sub(now).Round(time.Millisecond), l.lastErr)
			p.mu.Unlock()
			return nil, err
		case !resolved:
			// Resolve without the lock, then look again: the state may
			// have moved meanwhile.
			p.mu.Unlock()
			var ok bool
			if addr, ok = p.resolve(proxyID); !ok {
				return nil, fmt.Errorf("peer %s: %w", proxyID, ErrUnknownPeer)
			}
			resolved = true
			continue
		}
		a := p.startDial(proxyID, addr)
		p.mu.Unlock()
		return p.wait(ctx, proxyID, a)
	}
}

func (p *Pool) wait(ctx context.Context, proxyID string, a *attempt) (*tunnel.Session, error) {
	select {
	case <-a.done:
		if a.err != nil {
			return nil, fmt.Errorf("peer %s: %w", proxyID, a.err)
		}
		return a.sess, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("peer %s: waiting for the link: %w", proxyID, ctx.Err())
	case <-p.ctx.Done():
		return nil, ErrClosed
	}
}

// dialable reports whether l (nil: no link) may be dialled now.
func dialable(l *link, now time.Time) bool {
	return l == nil || l.state == idle || l.state == failure && !now.Before(l.retryAt)
}

// startDial moves proxyID's link to CONNECTING and dials addr in the
// background. p.mu must be held, the pool open and the link dialable.
func (p *Pool) startDial(proxyID, addr string) *attempt {
	l := p.links[proxyID]
	if l == nil {
		l = &link{id: proxyID, state: idle}
		p.links[proxyID] = l
	}
	a := &attempt{done: make(chan struct{})}
	l.dial = a
	p.setState(l, connecting)
	p.stats.Dials++
	p.wg.Add(1)
	go p.dial(l, a, addr)
	return a
}

func (p *Pool) dial(l *link, a *attempt, addr string) {
	defer p.wg.Done()
	hello := &berthv1.PeerHello{ProxyId: p.cfg.SelfID}
	sess, welcome, err := tunnel.DialPeer(p.ctx, addr, p.clientTLS(addr), hello, p.cfg.Tunnel)
	if err == nil && welcome.GetProxyId() != l.id {
		// The directory is stale: another proxy has this address now.
		_ = sess.Close()
		err = fmt.Errorf("%s answered as proxy %q", addr, welcome.GetProxyId())
	}

	p.mu.Lock()
	current := !p.closed && p.links[l.id] == l
	if err == nil && !current {
		_ = sess.Close()
		err = ErrClosed
		if !p.closed {
			err = errors.New("peer forgotten while dialling")
		}
	}
	a.sess, a.err = sess, err
	close(a.done)
	if !current {
		p.mu.Unlock()
		return
	}
	l.dial = nil
	if err != nil {
		p.stats.DialFailures++
		l.failures++
		failures := l.failures
		backoff := p.backoff(failures)
		l.retryAt, l.lastErr = p.now().Add(backoff), err
		p.setState(l, failure)
		p.mu.Unlock()
		p.logger.Warn("peer dial failed", "peer", l.id, "addr", addr, "failures", failures, "backoff", backoff, "err", err)
		return
	}
	l.sess, l.failures, l.lastErr = sess, 0, nil
	p.setState(l, ready)
	p.wg.Add(1)
	go p.monitor(l.id, sess)
	p.mu.Unlock()
	p.logger.Info("peer link up", "peer", l.id, "addr", addr)
}

// clientTLS is the TLS config for dialling addr: the configured one, with
// the address's host as the server name unless one is set, as net/http
// does (tls.Client cannot verify without it).
func (p *Pool) clientTLS(addr string) *tls.Config {
	c := p.cfg.TLS
	if c == nil || c.ServerName != "" || c.InsecureSkipVerify {
		return c
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return c
	}
	c = c.Clone()
	c.ServerName = host
	return c
}

// backoff is the wait after the n-th failure in a row (n >= 1).
func (p *Pool) backoff(n int) time.Duration {
	d := p.cfg.BackoffBase
	for i := 1; i < n && d < p.cfg.BackoffMax; i++ {
		d *= 2
	}
	return p.jitter(min(d, p.cfg.BackoffMax))
}

// monitor pings sess every HeartbeatInterval until it fails, times out or
// closes, and then marks the link broken.
func (p *Pool) monitor(proxyID string, sess *tunnel.Session) {
	defer p.wg.Done()
	tick := time.NewTicker(p.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-sess.Closed():
			p.broken(proxyID, sess, errors.New("link closed"))
			return
		case <-tick.C:
			if err := p.ping(sess); err != nil {
				p.broken(proxyID, sess, err)
				return
			}
		}
	}
}

// ping runs one heartbeat. yamux's Ping waits for its write timeout, which
// is longer than HeartbeatTimeout, so it runs aside; closing the session
// (by broken or Close) ends it.
func (p *Pool) ping(sess *tunnel.Session) error {
	done := make(chan error, 1)
	p.wg.Add(1) // counted: the caller is a counted goroutine
	go func() {
		defer p.wg.Done()
		_, err := sess.Ping()
		done <- err
	}()
	timer := time.NewTimer(p.cfg.HeartbeatTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("heartbeat: no answer within %v", p.cfg.HeartbeatTimeout)
	case <-p.ctx.Done():
		return nil
	}
}

// broken moves proxyID's link to TRANSIENT_FAILURE if sess is still its
// session, and closes sess. The next dial waits out one base back-off.
func (p *Pool) broken(proxyID string, sess *tunnel.Session, cause error) {
	defer sess.Close()
	p.mu.Lock()
	l := p.links[proxyID]
	if p.closed || l == nil || l.sess != sess {
		p.mu.Unlock()
		return
	}
	l.sess = nil
	l.failures = 1
	backoff := p.backoff(1)
	l.retryAt, l.lastErr = p.now().Add(backoff), cause
	p.setState(l, failure)
	p.mu.Unlock()
	p.logger.Warn("peer link down", "peer", proxyID, "backoff", backoff, "err", cause)
}

// State is proxyID's link connectivity, as a gRPC subchannel's: IDLE (no
// link: never tried, or forgotten), CONNECTING (dial in progress), READY
// (link up), TRANSIENT_FAILURE (the last dial failed or the link broke).
// A link stays TRANSIENT_FAILURE after its back-off until the next dial.
func (p *Pool) State(proxyID string) berthv1.ConnectivityState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.links[proxyID]; l != nil {
		return l.state
	}
	return idle
}

// Connect starts dialling proxyID in the background if its link is IDLE,
// or TRANSIENT_FAILURE with its back-off elapsed; otherwise, or if the
// peer is unknown, it does nothing. It never blocks.
func (p *Pool) Connect(proxyID string) {
	if proxyID == p.cfg.SelfID || !p.mayDial(proxyID) {
		return
	}
	addr, ok := p.resolve(proxyID)
	if !ok {
		p.logger.Debug("connect to unknown peer ignored", "peer", proxyID)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed && dialable(p.links[proxyID], p.now()) {
		p.startDial(proxyID, addr)
	}
}

func (p *Pool) mayDial(proxyID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.closed && dialable(p.links[proxyID], p.now())
}

// OnStateChange registers fn, called after any link's state changes, in
// the order the changes happened. Calls come from one goroutine of the
// pool's, holding no lock, so fn may call back into the pool; a slow fn
// delays later calls but nothing else.
func (p *Pool) OnStateChange(fn func(proxyID string, s berthv1.ConnectivityState)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.watchers = append(p.watchers, fn)
}

// setState records a change for the watchers; p.mu must be held.
func (p *Pool) setState(l *link, s berthv1.ConnectivityState) {
	if l.state == s {
		return
	}
	l.state = s
	p.emit(l.id, s)
}

func (p *Pool) emit(proxyID string, s berthv1.ConnectivityState) {
	p.events = append(p.events, event{proxyID, s})
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// notifyLoop delivers state changes. A goroutine of its own keeps callers
// such as Connect from running watchers (which may take the caller's own
// locks) and keeps the order.
func (p *Pool) notifyLoop() {
	defer p.wg.Done()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		}
		p.mu.Lock()
		events, watchers := p.events, p.watchers
		p.events = nil
		p.mu.Unlock()
		for _, e := range events {
			for _, fn := range watchers {
				fn(e.id, e.state)
			}
		}
	}
}

// Forget closes and drops the link to a peer that left the directory; its
// state becomes IDLE. A dial in progress is abandoned.
func (p *Pool) Forget(proxyID string) {
	p.mu.Lock()
	l := p.links[proxyID]
	if p.closed || l == nil {
		p.mu.Unlock()
		return
	}
	delete(p.links, proxyID)
	sess := l.sess
	l.sess = nil
	if l.state != idle {
		p.emit(proxyID, idle)
	}
	p.mu.Unlock()
	if sess != nil {
		_ = sess.Close()
	}
	p.logger.Info("peer forgotten", "peer", proxyID)
}

// Stats returns a snapshot of the pool's counters.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	for _, l := range p.links {
		switch l.state {
		case connecting:
			s.Connecting++
		case ready:
			s.Ready++
		case failure:
			s.TransientFailure++
		}
	}
	s.Inbound = len(p.inbound)
	s.StreamsOpened, s.StreamsAccepted = p.streamsOpened.Load(), p.streamsAccepted.Load()
	return s
}

// Close closes every link and every listener Serve is using, abandons
// dials, stops heartbeats and watchers, and waits for every goroutine the
// pool started, the handlers Serve started included (their streams are
// closed). Later calls fail with ErrClosed; Close is idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var sessions []*tunnel.Session
	for _, l := range p.links {
		if l.sess != nil {
			sessions = append(sessions, l.sess)
		}
	}
	for _, s := range p.inbound {
		sessions = append(sessions, s)
	}
	listeners := make([]net.Listener, 0, len(p.listeners))
	for ln := range p.listeners {
		listeners = append(listeners, ln)
	}
	p.mu.Unlock()

	p.cancel()
	for _, ln := range listeners {
		_ = ln.Close()
	}
	for _, s := range sessions {
		_ = s.Close()
	}
	p.wg.Wait()
	return nil
}
