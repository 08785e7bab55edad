package controlplane

import (
	"context"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// heartbeats is the leader's in-memory record of proxies' load samples.
// Samples never enter the Raft log; only the health transitions judged from
// them do.
//
// Every time here is a reading of this node's monotonic clock
// (Clock.Monotonic), never a wall-clock time from the log: a proxy's health
// change is timed by when this leader first saw it, not by the timestamp
// another node's clock put on it, so a wall clock stepped on any node
// neither declares live proxies down nor keeps dead ones up.
type heartbeats struct {
	mu      sync.Mutex
	seen    map[string]time.Time
	samples map[string]*berthv1.LoadSample
	changed map[string]healthChange
	since   time.Time // when this node last became leader
}

// healthChange is a proxy's current health transition (its stamp in the
// registry) and when this leader first saw it.
type healthChange struct {
	stampUnixMs int64
	seenAt      time.Time
}

func newHeartbeats() *heartbeats {
	return &heartbeats{seen: make(map[string]time.Time), samples: make(map[string]*berthv1.LoadSample), changed: make(map[string]healthChange)}
}

// startTerm forgets what an earlier term saw and starts the grace period.
func (h *heartbeats) startTerm(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.since = now
	clear(h.seen)
	clear(h.samples)
	clear(h.changed)
}

// decided records a transition this leader committed with stamp, timed
// at now, when it decided it.
func (h *heartbeats) decided(proxyID string, stamp int64, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.changed[proxyID] = healthChange{stampUnixMs: stamp, seenAt: now}
}

// observe notes, at now, each proxy whose health transition is new to this
// term and forgets proxies no longer registered. It returns when each
// proxy's current transition was first seen.
func (h *heartbeats) observe(proxies []*berthv1.Proxy, now time.Time) map[string]time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string]time.Time, len(proxies))
	for _, p := range proxies {
		c, ok := h.changed[p.Id]
		if !ok || c.stampUnixMs != p.HealthChangedUnixMs {
			c = healthChange{stampUnixMs: p.HealthChangedUnixMs, seenAt: now}
			h.changed[p.Id] = c
		}
		out[p.Id] = c.seenAt
	}
	if len(h.changed) > len(proxies) {
		for id := range h.changed {
			if _, ok := out[id]; !ok {
				delete(h.changed, id)
			}
		}
	}
	return out
}

func (h *heartbeats) record(s *berthv1.LoadSample, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen[s.ProxyId] = now
	h.samples[s.ProxyId] = s
}

func (h *heartbeats) view() (seen map[string]time.Time, since time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen = make(map[string]time.Time, len(h.seen))
	for k, v := range h.seen {
		seen[k] = v
	}
	return seen, h.since
}

func (h *heartbeats) load() []*berthv1.LoadSample {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*berthv1.LoadSample, 0, len(h.samples))
	for _, s := range h.samples {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ProxyId < out[j].ProxyId })
	return out
}

// judge decides the health transitions due at now. It is pure: proxies are
// the registry's, seen the leader's last sample time per proxy, since when
// it became leader. Nobody is judged within the grace period after since.
//
// A proxy's last sign of life is its latest sample, the leader's start, or
// (for a HEALTHY proxy) when it became healthy, e.g. registered. Silence past
// UnhealthyAfter makes it UNHEALTHY, past DownAfter DOWN; a fresh sample
// after the last transition makes an UNHEALTHY or DOWN proxy HEALTHY.
//
// changed is when this leader first saw each proxy's current transition
// (heartbeats.observe); a proxy missing from it counts from since.
func judge(proxies []*berthv1.Proxy, seen, changedAt map[string]time.Time, since, now time.Time, cfg HeartbeatConfig) []*berthv1.SetProxyHealthCommand {
	if now.Sub(since) < cfg.Grace {
		return nil
	}
	var out []*berthv1.SetProxyHealthCommand
	to := func(p *berthv1.Proxy, h berthv1.Health) {
		out = append(out, &berthv1.SetProxyHealthCommand{ProxyId: p.Id, Health: h, IfVersion: p.Version})
	}
	for _, p := range proxies {
		changed, ok := changedAt[p.Id]
		if !ok {
			changed = since
		}
		last, sampled := seen[p.Id]
		fresh := sampled && last.After(changed) && now.Sub(last) <= cfg.UnhealthyAfter
		alive := last
		if since.After(alive) {
			alive = since
		}
		switch p.Health {
		case berthv1.Health_HEALTH_HEALTHY:
			if changed.After(alive) {
				alive = changed
			}
			switch silence := now.Sub(alive); {
			case silence > cfg.DownAfter:
				to(p, berthv1.Health_HEALTH_DOWN)
			case silence > cfg.UnhealthyAfter:
				to(p, berthv1.Health_HEALTH_UNHEALTHY)
			}
		case berthv1.Health_HEALTH_UNHEALTHY:
			// It went silent UnhealthyAfter before it was marked.
			if t := changed.Add(-cfg.UnhealthyAfter); t.After(alive) {
				alive = t
			}
			switch {
			case fresh:
				to(p, berthv1.Health_HEALTH_HEALTHY)
			case now.Sub(alive) > cfg.DownAfter:
				to(p, berthv1.Health_HEALTH_DOWN)
			}
		case berthv1.Health_HEALTH_DOWN:
			if fresh {
				to(p, berthv1.Health_HEALTH_HEALTHY)
			}
		}
	}
	return out
}

// judgeHeartbeats commits the transitions judge finds due. Each carries the
// proxy's version, so a registration racing with it wins.
func (n *Node) judgeHeartbeats(ctx context.Context) {
	var proxies []*berthv1.Proxy
	n.fsm.View(func(s *fsm.State, _ uint64) { proxies, _ = s.ListProxies(fsm.ProxyFilter{}, "", 0) })
	now := n.clock.Monotonic()
	changed := n.beats.observe(proxies, now)
	seen, since := n.beats.view()
	for _, c := range judge(proxies, seen, changed, since, now, n.cfg.Heartbeat) {
		n.logger.Info("proxy health changed", "proxy", c.ProxyId, "health", c.Health)
		// Stamped here, so the change is timed from this decision rather
		// than from the next time observe sees it.
		stamp := n.clock.Now().UnixMilli()
		cmd := &berthv1.Command{NowUnixMs: stamp, Kind: &berthv1.Command_SetProxyHealth{SetProxyHealth: c}}
		if _, err := n.Apply(ctx, cmd); err != nil {
			n.logger.Warn("committing proxy health failed", "proxy", c.ProxyId, "err", err)
			continue
		}
		n.beats.decided(c.ProxyId, stamp, now)
	}
}

// loadRelay takes load samples from proxy sessions: the leader records them
// at once; a follower batches them to the leader twice a second.
type loadRelay struct {
	n       *Node
	mu      sync.Mutex
	pending map[string]*berthv1.LoadSample
}

func newLoadRelay(n *Node) *loadRelay {
	return &loadRelay{n: n, pending: make(map[string]*berthv1.LoadSample)}
}

func (r *loadRelay) submit(s *berthv1.LoadSample) {
	if r.n.IsLeader() {
		r.n.beats.record(s, r.n.clock.Monotonic())
		return
	}
	r.mu.Lock()
	r.pending[s.ProxyId] = proto.Clone(s).(*berthv1.LoadSample)
	r.mu.Unlock()
}

func (r *loadRelay) run() {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.n.ctx.Done():
			return
		case <-tick.C:
			r.flush()
		}
	}
}

func (r *loadRelay) flush() {
	r.mu.Lock()
	if len(r.pending) == 0 {
		r.mu.Unlock()
		return
	}
	batch := make([]*berthv1.LoadSample, 0, len(r.pending))
	for _, s := range r.pending {
		batch = append(batch, s)
	}
	clear(r.pending)
	r.mu.Unlock()

	if r.n.IsLeader() {
		now := r.n.clock.Monotonic()
		for _, s := range batch {
			r.n.beats.record(s, now)
		}
		return
	}
	_, addr := r.n.leader()
	if addr == "" {
		return // samples are perishable; the next ones will do
	}
	c, err := r.n.peers.cluster(addr)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.n.ctx, time.Second)
	defer cancel()
	if _, err := c.ReportLoad(ctx, &berthv1.ReportLoadRequest{Samples: batch}); err != nil {
		r.n.logger.Debug("relaying load samples failed", "err", err)
	}
}
