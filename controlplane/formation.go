package controlplane

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/berthhq/berth/controlplane/discovery"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// runFormation polls discovery and turns what it finds into a cluster:
// join an existing one, bootstrap a new one once BootstrapExpect fresh
// nodes see each other, or (already a member) make sure the registry knows
// this node's addresses. Failures are retried next round.
func (n *Node) runFormation(d discovery.Discoverer) {
	if c, ok := d.(io.Closer); ok {
		defer c.Close()
	}
	log := n.logger.With("subsystem", "formation")
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.Discovery.PollInterval+5*time.Second)
		if err := n.formationRound(ctx, d, log); err != nil {
			log.Warn("formation round failed; retrying", "err", err)
		}
		cancel()
		t.Reset(n.cfg.Discovery.PollInterval)
	}
}

func (n *Node) formationRound(ctx context.Context, d discovery.Discoverer, log *slog.Logger) error {
	addrs, err := d.Discover(ctx)
	if err != nil {
		return err
	}
	peers := n.probe(ctx, addrs)
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	if len(f.Configuration().Servers) > 0 {
		return n.ensureRegistered(ctx, peers)
	}

	// Not a member yet: prefer joining a cluster that exists.
	var lastErr error
	for _, p := range peers {
		if !p.HasState || p.LeaderId == "" {
			continue
		}
		c, err := n.peers.cluster(p.GrpcAddress)
		if err != nil {
			lastErr = err
			continue
		}
		if _, err := c.Join(ctx, &berthv1.JoinRequest{Server: n.selfServer()}); err != nil {
			lastErr = err
			continue
		}
		log.Info("joined cluster", "via", p.Id, "leader", p.LeaderId)
		return nil
	}
	if lastErr != nil {
		return lastErr
	}
	if n.cfg.BootstrapExpect == 0 || n.stores.hadState {
		return nil
	}
	servers := []raft.Server{n.selfRaftServer()}
	for _, p := range peers {
		if p.HasState {
			log.Debug("not bootstrapping: a discovered node already has Raft state", "peer", p.Id)
			return nil
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.Id), Address: raft.ServerAddress(p.RaftAddress)})
	}
	if len(servers) < n.cfg.BootstrapExpect {
		log.Debug("waiting for peers before bootstrapping", "seen", len(servers), "expect", n.cfg.BootstrapExpect)
		return nil
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
	// Every fresh node computes the same configuration, so they may all
	// bootstrap it: Raft treats identical bootstraps as one cluster.
	if err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && err != raft.ErrCantBootstrap {
		return err
	}
	log.Info("bootstrapped cluster", "servers", len(servers))
	return nil
}

// probe asks every discovered address for its node info, in parallel, and
// returns the ones that answered, except this node.
func (n *Node) probe(ctx context.Context, addrs []string) []*berthv1.NodeInfoResponse {
	var (
		mu  sync.Mutex
		out []*berthv1.NodeInfoResponse
		wg  sync.WaitGroup
	)
	for _, addr := range addrs {
		if addr == n.cfg.grpcAdvertise() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := n.peers.cluster(addr)
			if err != nil {
				return
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			info, err := c.NodeInfo(cctx, &berthv1.NodeInfoRequest{})
			if err != nil || info.Id == n.cfg.ID {
				return
			}
			mu.Lock()
			out = append(out, info)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// ensureRegistered keeps the registry's server metadata complete: the leader
// records what it learns of members from discovery; a follower whose own
// entry is missing or stale asks the leader to record it.
func (n *Node) ensureRegistered(ctx context.Context, peers []*berthv1.NodeInfoResponse) error {
	meta := make(map[string]*berthv1.Server)
	n.fsm.View(func(s *fsm.State, _ uint64) {
		for _, srv := range s.Servers() {
			meta[srv.Id] = srv
		}
	})
	if !n.IsLeader() {
		self := n.selfServer()
		if have := meta[self.Id]; have != nil && have.GrpcAddress == self.GrpcAddress && have.RaftAddress == self.RaftAddress {
			return nil
		}
		return n.addServer(ctx, self, false)
	}
	members := make(map[string]bool)
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			members[string(s.ID)] = true
		}
	}
	for _, p := range peers {
		have := meta[p.Id]
		if !members[p.Id] || (have != nil && have.GrpcAddress == p.GrpcAddress && have.RaftAddress == p.RaftAddress) {
			continue
		}
		if err := n.upsertServer(ctx, &berthv1.Server{Id: p.Id, RaftAddress: p.RaftAddress, GrpcAddress: p.GrpcAddress}); err != nil {
			return err
		}
	}
	return nil
}

// deadToRemove picks at most one voter to remove: one dead for at least
// after, provided the voters still alive form a quorum of the configuration
// without it and that configuration keeps at least minVoters. It is pure.
func deadToRemove(voters []string, deadSince map[string]time.Time, now time.Time, after time.Duration, minVoters int) string {
	if after <= 0 || len(voters)-1 < minVoters {
		return ""
	}
	alive := 0
	var candidates []string
	for _, v := range voters {
		since, dead := deadSince[v]
		switch {
		case !dead:
			alive++
		case now.Sub(since) >= after:
			candidates = append(candidates, v)
		}
	}
	if len(candidates) == 0 || alive < (len(voters)-1)/2+1 {
		return ""
	}
	sort.Strings(candidates)
	return candidates[0]
}

// reaper tracks, on the leader, how long each voter has been unreachable
// and removes dead ones while quorum stays safe.
type reaper struct {
	deadSince map[string]time.Time
}

func (n *Node) reapDead(ctx context.Context, r *reaper) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	meta := make(map[string]string)
	n.fsm.View(func(s *fsm.State, _ uint64) {
		for _, srv := range s.Servers() {
			meta[srv.Id] = srv.GrpcAddress
		}
	})
	var voters, addrs []string
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		id := string(s.ID)
		voters = append(voters, id)
		if id != n.cfg.ID && meta[id] != "" {
			addrs = append(addrs, meta[id])
		}
	}
	alive := map[string]bool{n.cfg.ID: true}
	for _, info := range n.probe(ctx, addrs) {
		alive[info.Id] = true
	}
	now := n.clock.Now()
	for _, id := range voters {
		if alive[id] {
			delete(r.deadSince, id)
		} else if _, ok := r.deadSince[id]; !ok {
			r.deadSince[id] = now
		}
	}
	if id := deadToRemove(voters, r.deadSince, now, n.cfg.RemoveDeadAfter, n.cfg.MinVoters); id != "" {
		n.logger.Warn("removing dead server", "id", id, "dead_since", r.deadSince[id])
		if err := n.removeServer(ctx, id); err != nil {
			n.logger.Warn("removing dead server failed", "id", id, "err", err)
			return
		}
		delete(r.deadSince, id)
	}
}
