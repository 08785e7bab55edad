package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// errNotCommitted means the control plane could not be asked in time; the
// connection is served anyway and reconciled by the next full sync.
var errNotCommitted = errors.New("not committed: control plane unreachable")

// cpLink is the proxy's side of its session with the control plane:
// connection events queue here and go up in batches; an open can wait for
// its batch's acknowledgement.
type cpLink struct {
	mu        sync.Mutex
	connected bool
	queue     []*pendingEvent
	wake      chan struct{}
	inflight  map[uint64][]*pendingEvent // by batch seq
	seq       uint64
}

type pendingEvent struct {
	ev   *berthv1.ConnectionEvent
	done chan error // nil for closes (nobody waits)
}

func newCPLink() *cpLink {
	return &cpLink{wake: make(chan struct{}, 1), inflight: map[uint64][]*pendingEvent{}}
}

// enqueue adds an event; with wait it returns a channel that receives the
// event's outcome: nil (committed), a refusal, or errNotCommitted.
func (l *cpLink) enqueue(ev *berthv1.ConnectionEvent, wait bool) <-chan error {
	pe := &pendingEvent{ev: ev}
	if wait {
		pe.done = make(chan error, 1)
	}
	l.mu.Lock()
	if !l.connected {
		l.mu.Unlock()
		if pe.done != nil {
			pe.done <- errNotCommitted
		}
		return pe.done
	}
	l.queue = append(l.queue, pe)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return pe.done
}

// take removes up to max queued events and files them under a new seq.
func (l *cpLink) take(max int) (uint64, []*pendingEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) == 0 {
		return 0, nil
	}
	n := min(max, len(l.queue))
	batch := l.queue[:n:n]
	l.queue = l.queue[n:]
	l.seq++
	l.inflight[l.seq] = batch
	return l.seq, batch
}

func (l *cpLink) nextSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	return l.seq
}

// acked resolves a batch with the control plane's answer.
func (l *cpLink) acked(seq uint64, res *berthv1.CommandResult) {
	l.mu.Lock()
	batch := l.inflight[seq]
	delete(l.inflight, seq)
	l.mu.Unlock()
	refused := map[uint32]error{}
	for _, e := range res.GetEventErrors() {
		refused[e.Position] = fmt.Errorf("%s: %s", e.Code, e.Message)
	}
	whole := fsm.ResultError(res)
	for i, pe := range batch {
		if pe.done == nil {
			continue
		}
		switch {
		case refused[uint32(i)] != nil:
			pe.done <- refused[uint32(i)]
		case whole != nil:
			pe.done <- whole
		default:
			pe.done <- nil
		}
	}
}

// up marks the session established: everything queued before is covered
// by the full sync the caller sends next, so it is dropped.
func (l *cpLink) up() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.connected = true
	l.release(errNotCommitted)
}

// down marks the session lost; waiting opens proceed uncommitted.
func (l *cpLink) down() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.connected = false
	l.release(errNotCommitted)
}

func (l *cpLink) release(err error) {
	for _, pe := range l.queue {
		if pe.done != nil {
			pe.done <- err
		}
	}
	l.queue = nil
	for seq, batch := range l.inflight {
		for _, pe := range batch {
			if pe.done != nil {
				pe.done <- err
			}
		}
		delete(l.inflight, seq)
	}
}

func (l *cpLink) isConnected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.connected
}

// runControlPlane keeps a session with the control plane for as long as
// the proxy runs, reconnecting with jittered backoff. The proxy serves
// throughout (static stability).
func (p *Proxy) runControlPlane(ctx context.Context) {
	attempt := 0
	for ctx.Err() == nil {
		start := time.Now()
		err := p.session(ctx)
		p.link.down()
		p.metrics.cpConnected.Set(0)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			attempt = 0
		}
		attempt++
		wait := backoff(attempt, 100*time.Millisecond, 5*time.Second)
		p.logger.Warn("control-plane session ended; serving from the last state", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func backoff(attempt int, base, maxWait time.Duration) time.Duration {
	d := base << min(attempt, 16)
	if d <= 0 || d > maxWait {
		d = maxWait
	}
	return time.Duration(rand.Int64N(int64(d)) + 1)
}

// session registers the proxy, opens its session stream, sends the full
// set of live connections, and then runs until the stream breaks.
func (p *Proxy) session(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := p.registry.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: p.record()}); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	stream, err := p.registry.Session(ctx)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	if err := stream.Send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Hello{Hello: &berthv1.SessionHello{
		ProxyId: p.cfg.ID, ResumeIndex: p.dir.lastIndex()}}}); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("welcome: %w", err)
	}
	if first.GetWelcome() == nil {
		return errors.New("session: first message was not a welcome")
	}

	var sendMu sync.Mutex
	send := func(req *berthv1.SessionRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(req)
	}
	// The full set, taken with the queue dropped at the same moment: any
	// open or close after this point is queued and sent after it.
	p.link.up()
	full := &berthv1.FullSync{Seq: p.link.nextSeq()}
	for _, c := range p.conns.all() {
		full.Connections = append(full.Connections, c.record())
	}
	if err := send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_FullSync{FullSync: full}}); err != nil {
		return fmt.Errorf("full sync: %w", err)
	}
	p.metrics.cpConnected.Set(1)
	p.logger.Info("control-plane session up", "server", first.GetWelcome().ServerId, "connections", len(full.Connections))

	errc := make(chan error, 3)
	go func() { errc <- p.sessionRecv(ctx, stream) }()
	go func() { errc <- p.sessionSendEvents(ctx, send) }()
	go func() { errc <- p.sessionSendLoad(ctx, send) }()
	err = <-errc
	cancel()
	if s, ok := status.FromError(err); ok && s.Code() == codes.NotFound {
		return fmt.Errorf("control plane forgot this proxy (re-registering): %w", err)
	}
	return err
}

func (p *Proxy) sessionRecv(ctx context.Context, stream berthv1.RegistryService_SessionClient) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("control plane closed the session")
			}
			return err
		}
		switch k := msg.Kind.(type) {
		case *berthv1.SessionResponse_WriteAck:
			p.link.acked(k.WriteAck.Seq, k.WriteAck.Result)
		case *berthv1.SessionResponse_Update:
			moves := p.dir.apply(k.Update)
			p.onMoves(moves)
		}
	}
}

// sessionSendEvents sends queued connection events in batches (and the
// index this proxy has applied, as an acknowledgement).
func (p *Proxy) sessionSendEvents(ctx context.Context, send func(*berthv1.SessionRequest) error) error {
	tick := time.NewTicker(p.cfg.LoadInterval)
	defer tick.Stop()
	var acked uint64
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			p.recheckMoves()
			if idx := p.dir.lastIndex(); idx > acked {
				if err := send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Ack{Ack: &berthv1.SessionAck{Index: idx}}}); err != nil {
					return err
				}
				acked = idx
			}
			continue
		case <-p.link.wake:
		}
		// Let a burst gather briefly so it travels as one command.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(p.cfg.EventFlush):
		}
		for {
			seq, batch := p.link.take(fsm.MaxEventsPerCommand)
			if len(batch) == 0 {
				break
			}
			evs := make([]*berthv1.ConnectionEvent, len(batch))
			for i, pe := range batch {
				evs[i] = pe.ev
			}
			if err := send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Events{Events: &berthv1.ConnectionEventBatch{Seq: seq, Events: evs}}}); err != nil {
				return err
			}
		}
	}
}

func (p *Proxy) sessionSendLoad(ctx context.Context, send func(*berthv1.SessionRequest) error) error {
	tick := time.NewTicker(p.cfg.LoadInterval)
	defer tick.Stop()
	for {
		if err := send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Load{Load: p.load.sample()}}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// record is this proxy as the registry should know it.
func (p *Proxy) record() *berthv1.Proxy {
	return &berthv1.Proxy{
		Id: p.cfg.ID, Region: p.cfg.Region, Zone: p.cfg.Zone, Labels: p.cfg.Labels, CapacityWeight: p.cfg.Weight,
		Addresses: &berthv1.ProxyAddresses{Tunnel: p.tunnelAddr, Downstream: p.downstreamAddr, Peer: p.peerAddr},
	}
}

// commitOpen asks the control plane to record a new connection and waits
// (bounded) for the answer. errNotCommitted means: serve it anyway.
func (p *Proxy) commitOpen(ctx context.Context, c *berthv1.Connection, moveID string) error {
	done := p.link.enqueue(&berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{Connection: c, MoveId: moveID}}}, true)
	t := time.NewTimer(p.cfg.CommitTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errNotCommitted
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *Proxy) reportClose(id string) {
	p.link.enqueue(&berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Close{Close: &berthv1.ConnectionClose{ConnectionId: id}}}, false)
}
