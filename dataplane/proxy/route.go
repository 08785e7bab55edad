package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"

	"github.com/berthhq/berth/dataplane/ring"
	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Routing errors, each answered with its own status and X-Berth-Error.
var (
	// errNoUpstream: no connection serves the endpoint anywhere (503).
	errNoUpstream = errors.New("no upstream connection serves this endpoint")
	// errUnreachable: connections exist but none took the stream (502).
	errUnreachable = errors.New("no upstream connection could be reached")
)

// target is one place a stream can go: a local connection, or a peer
// proxy (optionally naming the connection it should use).
type target struct {
	local  *localConn
	peer   string
	connID string
}

func (t target) String() string {
	if t.local != nil {
		return "local:" + t.local.id
	}
	return "peer:" + t.peer + "/" + t.connID
}

// candidates lists where a stream for endpoint may go, best first. With a
// hash key the ring picks one connection (local or on a peer); without,
// local connections come first (least outstanding streams), then peers
// holding one, those with a ready link first.
func (p *Proxy) candidates(rt route) ([]target, error) {
	endpoint := rt.endpoint
	var out []target
	if rt.peerHop {
		if c := p.conns.get(rt.connID); c != nil && c.serves(endpoint) && c.usable() {
			out = append(out, target{local: c})
		}
		for _, c := range p.conns.leastLoaded(endpoint) {
			if c.id != rt.connID {
				out = append(out, target{local: c})
			}
		}
		if len(out) == 0 {
			return nil, errNoUpstream
		}
		return out, nil
	}
	if rt.hashKey != "" {
		return p.ringCandidates(endpoint, rt.hashKey)
	}
	for _, c := range p.conns.leastLoaded(endpoint) {
		out = append(out, target{local: c})
	}
	// Peers holding the endpoint share forwarded requests (in random
	// order, so no single holder takes them all); peers in back-off after
	// a failure come last.
	var usable, failing []target
	for _, id := range p.dir.holders(endpoint) {
		if p.peers.State(id) == berthv1.ConnectivityState_CONNECTIVITY_STATE_TRANSIENT_FAILURE {
			failing = append(failing, target{peer: id})
		} else {
			usable = append(usable, target{peer: id})
		}
	}
	rand.Shuffle(len(usable), func(i, j int) { usable[i], usable[j] = usable[j], usable[i] })
	out = append(append(out, usable...), failing...)
	if len(out) == 0 {
		return nil, errNoUpstream
	}
	return out, nil
}

// targetState is a ring target's connectivity: a local connection is READY
// while its tunnel is usable; a connection held elsewhere has the state of
// the peer link to its holder.
func (p *Proxy) targetState(id string) ring.State {
	if c := p.conns.get(id); c != nil {
		if c.usable() {
			return ring.Ready
		}
		return ring.TransientFailure
	}
	holder := p.dir.holderOf(id)
	if holder == "" || holder == p.cfg.ID {
		return ring.TransientFailure
	}
	st, err := ring.FromProto(p.peers.State(holder))
	if err != nil {
		return ring.TransientFailure
	}
	return st
}

func (p *Proxy) connectTarget(id string) {
	if holder := p.dir.holderOf(id); holder != "" && holder != p.cfg.ID {
		p.peers.Connect(holder)
	}
}

func (p *Proxy) ringCandidates(endpoint, key string) ([]target, error) {
	r := p.dir.ring(endpoint, p.conns.forEndpoint(endpoint))
	if r.Len() == 0 {
		return nil, errNoUpstream
	}
	id, err := r.Pick(ring.Hash(key), p.targetState, p.connectTarget)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUnreachable, err)
	}
	if c := p.conns.get(id); c != nil {
		return []target{{local: c}}, nil
	}
	return []target{{peer: p.dir.holderOf(id), connID: id}}, nil
}

// openStream opens a stream for endpoint on the first candidate that takes
// it. Nothing has been sent to the upstream when a candidate fails, so
// trying the next is safe for any request.
func (p *Proxy) openStream(ctx context.Context, hdr *berthv1.StreamHeader, rt route) (net.Conn, target, error) {
	cands, err := p.candidates(rt)
	if errors.Is(err, errNoUpstream) && p.awaitDirectory(ctx) {
		cands, err = p.candidates(rt)
	}
	if err != nil {
		return nil, target{}, err
	}
	var last error
	for _, t := range cands {
		st, err := p.openOn(ctx, t, hdr)
		if err == nil {
			return st, t, nil
		}
		last = err
		p.metrics.streamFailures.WithLabelValues(kindOf(t)).Inc()
		p.logger.Debug("stream refused; trying the next", "target", t, "err", err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, target{}, fmt.Errorf("%w: %w", errUnreachable, last)
}

func kindOf(t target) string {
	if t.local != nil {
		return "local"
	}
	return "peer"
}

func (p *Proxy) openOn(ctx context.Context, t target, hdr *berthv1.StreamHeader) (net.Conn, error) {
	if t.local != nil {
		sess := t.local.sess.Load()
		if sess == nil || !t.local.usable() {
			return nil, errors.New("connection is draining or closed")
		}
		if t.local.streams.Add(1) > int64(p.cfg.MaxStreamsPerTunnel) {
			t.local.streams.Add(-1)
			p.metrics.tunnelRefusals.WithLabelValues("streams").Inc()
			return nil, errStreamLimit
		}
		st, err := sess.OpenStream(ctx, hdr)
		if err != nil {
			t.local.streams.Add(-1)
			return nil, err
		}
		p.metrics.streams.WithLabelValues("local").Inc()
		return p.load.wrap(st, func() { t.local.streams.Add(-1) }), nil
	}
	fwd := &berthv1.StreamHeader{Endpoint: hdr.Endpoint, Kind: hdr.Kind, Hops: hdr.Hops + 1, ClientAddress: hdr.ClientAddress, ConnectionId: t.connID}
	st, err := p.peers.OpenStream(ctx, t.peer, fwd)
	if err != nil {
		return nil, err
	}
	p.metrics.streams.WithLabelValues("peer").Inc()
	return p.load.wrap(st, nil), nil
}

// servePeerStream serves a stream a peer forwarded, on local connections
// only (at most one hop). HTTP streams go to the peer HTTP server, which
// routes each request on them (keep-alive streams carry many); TCP streams
// are spliced to a stream on a local connection.
func (p *Proxy) servePeerStream(in *tunnel.Incoming, from string) {
	hdr := in.Header
	rt := route{endpoint: hdr.Endpoint, peerHop: true, connID: hdr.ConnectionId}
	if hdr.Kind == berthv1.StreamKind_STREAM_KIND_HTTP {
		if _, err := p.candidates(rt); err != nil {
			in.Reject(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE, "proxy %s holds no usable connection for %q", p.cfg.ID, hdr.Endpoint))
			return
		}
		down, err := in.Accept()
		if err != nil {
			return
		}
		p.metrics.peerStreamsServed.Inc()
		p.peerHTTP.serve(down, rt)
		return
	}
	up, t, err := p.openStream(p.ctx, &berthv1.StreamHeader{Endpoint: hdr.Endpoint, Kind: hdr.Kind, Hops: hdr.Hops, ClientAddress: hdr.ClientAddress}, rt)
	if err != nil {
		in.Reject(tunnel.Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE, "proxy %s: %v", p.cfg.ID, err))
		return
	}
	done := p.begin(t)
	defer done()
	down, err := in.Accept()
	if err != nil {
		_ = up.Close()
		return
	}
	p.metrics.peerStreamsServed.Inc()
	pipe(down, up)
}

// statusFor maps a routing error to the downstream answer.
func statusFor(err error) (int, string) {
	switch {
	case errors.Is(err, errInvalidEndpoint):
		return http.StatusBadRequest, "invalid-endpoint"
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, errNoUpstream):
		return http.StatusServiceUnavailable, "no-upstream"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, errUpstreamHeaderTimeout):
		return http.StatusGatewayTimeout, "upstream-timeout"
	case errors.Is(err, errUnreachable):
		return http.StatusBadGateway, "upstream-unreachable"
	}
	return http.StatusBadGateway, "upstream-error"
}
