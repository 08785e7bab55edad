package controlplane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"github.com/berthhq/berth/scheduler"
)

// RebalanceConfig drives the planner runner on the leader.
type RebalanceConfig struct {
	// Enabled runs the planner on a tick; Rebalance calls work either way.
	Enabled bool
	// Interval between planning rounds (events such as a proxy joining or
	// draining trigger a round sooner).
	Interval time.Duration
	// MoveTimeout is how long a move may stay PENDING (the agent has not
	// reached the target) before it is aborted.
	MoveTimeout time.Duration
	// TargetBackoff keeps a proxy out of the targets after a move to it
	// was aborted.
	TargetBackoff time.Duration
	// MovesPerSecond caps how fast moves are issued.
	MovesPerSecond float64
	Limits         scheduler.Limits
}

// DefaultRebalanceConfig is the runner's default configuration.
func DefaultRebalanceConfig() RebalanceConfig {
	return RebalanceConfig{
		Enabled:        true,
		Interval:       2 * time.Second,
		MoveTimeout:    30 * time.Second,
		TargetBackoff:  30 * time.Second,
		MovesPerSecond: 20,
		Limits:         scheduler.DefaultLimits(),
	}
}

// Validate reports the first problem.
func (c RebalanceConfig) Validate() error {
	switch {
	case c.Interval <= 0:
		return errors.New("interval: must be positive")
	case c.MoveTimeout <= 0:
		return errors.New("move-timeout: must be positive")
	case c.TargetBackoff < 0:
		return errors.New("target-backoff: negative")
	case c.MovesPerSecond <= 0:
		return errors.New("moves-per-second: must be positive")
	}
	if err := c.Limits.Validate(); err != nil {
		return fmt.Errorf("limits: %w", err)
	}
	return nil
}

// RegisterFlags binds c to fs.
func (c *RebalanceConfig) RegisterFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&c.Enabled, "rebalance", c.Enabled, "run the rebalance planner on the leader")
	fs.DurationVar(&c.Interval, "rebalance-interval", c.Interval, "time between planning rounds")
	fs.DurationVar(&c.MoveTimeout, "move-timeout", c.MoveTimeout, "abort a move the agent has not completed the first half of within this")
	fs.DurationVar(&c.TargetBackoff, "move-target-backoff", c.TargetBackoff, "keep a proxy out of the targets this long after a move to it aborted")
	fs.Float64Var(&c.MovesPerSecond, "moves-per-second", c.MovesPerSecond, "how fast moves are issued at most")
	c.Limits.RegisterFlags(fs)
}

// rebalancer runs the planner on the leader. Its memory (back-offs, when
// connections last moved) is per term: a new leader starts afresh and
// learns what it needs from committed state.
type rebalancer struct {
	n       *Node
	cfg     RebalanceConfig
	trigger chan struct{}

	// The times in these maps are readings of the node's monotonic clock
	// (Clock.Monotonic): a stepped wall clock moves none of them.
	mu        sync.Mutex           // held for a whole round; guards the maps
	backoff   map[string]time.Time // target proxy -> not before
	movedAt   map[string]time.Time // connection id (the moved one's new id) -> when
	pending   map[string]time.Time // pending move -> when this leader first saw it
	finished  map[string]bool      // moves already accounted for
	primed    bool                 // the moves finished before this term are in finished
	lastRound time.Time
	imbalance float64
}

func (r *rebalancer) lastImbalance() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.imbalance
}

func newRebalancer(n *Node, cfg RebalanceConfig) *rebalancer {
	return &rebalancer{n: n, cfg: cfg, trigger: make(chan struct{}, 1),
		backoff: map[string]time.Time{}, movedAt: map[string]time.Time{}, pending: map[string]time.Time{}, finished: map[string]bool{}}
}

// kick asks for a round soon.
// kickedRoundGap is the least time between the end of a round and a round
// started by a kick.
const kickedRoundGap = 100 * time.Millisecond

func (r *rebalancer) kick() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// run plans on every tick and kick until ctx (the leadership) ends. Proxy
// events (a proxy joining, draining, turning unhealthy) kick it.
func (r *rebalancer) run(ctx context.Context) {
	go r.watchProxies(ctx)
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.trigger:
			// Every change to a proxy record kicks; under a burst of
			// registrations rounds ran back to back, an eighth of the
			// leader's CPU in the write benchmark. Kicks within the gap
			// fold into one round.
			if wait := kickedRoundGap - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}
		if _, err := r.round(ctx, false); err != nil && ctx.Err() == nil {
			r.n.logger.Warn("rebalance round failed", "err", err)
		}
		last = time.Now()
	}
}

func (r *rebalancer) watchProxies(ctx context.Context) {
	_ = r.n.watch(ctx, &berthv1.WatchRequest{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES}}, func(w *berthv1.WatchResponse) error {
		if w.GetEvents() != nil {
			r.kick()
		}
		return nil
	})
}

// round aborts overdue moves, accounts for finished ones, plans, and (not
// dryRun) commits the plan. It only ever proposes on this node as leader:
// a deposed leader's proposals fail instead of being forwarded.
func (r *rebalancer) round(ctx context.Context, dryRun bool) ([]*berthv1.Move, error) {
	r.mu.Lock() // one round at a time: the tick and Rebalance calls
	defer r.mu.Unlock()
	if !r.n.IsLeader() {
		return nil, r.n.notLeader()
	}
	now, mono := r.n.clock.Now(), r.n.clock.Monotonic()
	var (
		proxies []*berthv1.Proxy
		conns   []*berthv1.Connection
		moves   []*berthv1.Move
	)
	r.n.fsm.View(func(s *fsm.State, _ uint64) {
		proxies, _ = s.ListProxies(fsm.ProxyFilter{}, "", 0)
		conns, _ = s.ListConnections(fsm.ConnectionFilter{}, "", 0)
		moves, _ = s.ListMoves(fsm.MoveFilter{}, "", 0)
	})
	if !dryRun {
		r.expire(ctx, moves, now, mono)
	}
	view := r.view(proxies, conns, moves, now, mono)
	limits := r.cfg.Limits
	if !dryRun {
		elapsed := mono.Sub(r.lastRound)
		if r.lastRound.IsZero() || elapsed > r.cfg.Interval {
			elapsed = r.cfg.Interval
		}
		limits.MaxPerPlan = min(limits.MaxPerPlan, max(1, int(r.cfg.MovesPerSecond*elapsed.Seconds())))
		r.lastRound = mono
	}
	plan := scheduler.Plan(view, limits)
	r.imbalance = scheduler.Imbalance(view, r.cfg.Limits)
	r.n.metrics.imbalance.Set(r.imbalance)
	r.n.metrics.observeRound(scheduler.Targets(view, r.cfg.Limits), moves)
	out := make([]*berthv1.Move, 0, len(plan))
	for _, m := range plan {
		out = append(out, &berthv1.Move{
			Id: newMoveID(), ConnectionId: m.ConnectionID, FromProxyId: m.From, ToProxyId: m.To,
			Reason: m.Reason, DeadlineUnixMs: now.Add(r.cfg.MoveTimeout).UnixMilli(),
		})
	}
	if dryRun || len(out) == 0 {
		return out, nil
	}
	out, err := r.commit(ctx, out, now)
	if err != nil {
		return nil, err
	}
	for _, m := range out {
		r.n.metrics.moves.WithLabelValues("started", m.Reason).Inc()
	}
	r.n.logger.Info("rebalance: moves issued", "moves", len(out))
	return out, nil
}

// commit creates the planned moves in one entry. The FSM takes a batch
// all or nothing, so if it refuses one move as out of date (the plan was
// made from this node's committed state, but a proxy may have changed it
// since), the moves are retried one by one: a single stale move must not
// hold back every other one round after round.
func (r *rebalancer) commit(ctx context.Context, moves []*berthv1.Move, now time.Time) ([]*berthv1.Move, error) {
	create := func(ms []*berthv1.Move) error {
		cmd := &berthv1.Command{NowUnixMs: now.UnixMilli(), Kind: &berthv1.Command_CreateMoves{CreateMoves: &berthv1.CreateMovesCommand{Moves: ms}}}
		_, err := r.n.applyAsLeader(ctx, cmd)
		return err
	}
	err := create(moves)
	if err == nil {
		return moves, nil
	}
	if len(moves) == 1 || !outOfDate(err) {
		return nil, fmt.Errorf("commit %d moves: %w", len(moves), err)
	}
	r.n.logger.Warn("rebalance: plan refused as a batch; committing its moves one by one", "moves", len(moves), "err", err)
	var done []*berthv1.Move
	for _, m := range moves {
		if err := create([]*berthv1.Move{m}); err != nil {
			if !outOfDate(err) {
				return done, fmt.Errorf("commit move %s: %w", m.Id, err)
			}
			r.n.logger.Warn("rebalance: move refused", "move", m.Id, "connection", m.ConnectionId, "err", err)
			continue
		}
		done = append(done, m)
	}
	return done, nil
}

// outOfDate reports whether the FSM refused a command for the state it
// met (a connection or proxy gone or changed), not for its form.
func outOfDate(err error) bool {
	switch fsm.ResultCode(err) {
	case berthv1.ResultCode_RESULT_CODE_NOT_FOUND, berthv1.ResultCode_RESULT_CODE_FAILED_PRECONDITION:
		return true
	}
	return false
}

// expire aborts PENDING moves past their deadline (the agent never reached
// the target) and notes finished moves: completed ones start the moved
// connection's cool-down, aborted ones put their target in back-off.
// ACCEPTED moves are left to the source proxy, which completes them by
// closing the old connection once its streams are done.
//
// A move is overdue once it has been pending, as this leader saw it, for
// its timeout (deadline minus creation, both stamped by the leader that
// made it): the stamps' own clock is never compared with this one, so a
// stepped clock on either neither aborts moves early nor keeps them
// forever. A move inherited from an earlier leader counts from when this
// one first saw it.
func (r *rebalancer) expire(ctx context.Context, moves []*berthv1.Move, now, mono time.Time) {
	stillPending := make(map[string]bool, len(r.pending))
	for _, m := range moves {
		switch m.State {
		case berthv1.MoveState_MOVE_STATE_PENDING:
			stillPending[m.Id] = true
			first, ok := r.pending[m.Id]
			if !ok {
				first = mono
				r.pending[m.Id] = first
			}
			timeout := time.Duration(m.DeadlineUnixMs-m.CreatedUnixMs) * time.Millisecond
			if timeout <= 0 || timeout > r.cfg.MoveTimeout {
				timeout = r.cfg.MoveTimeout
			}
			if mono.Sub(first) <= timeout {
				continue
			}
			cmd := &berthv1.Command{NowUnixMs: now.UnixMilli(), Kind: &berthv1.Command_UpdateMove{UpdateMove: &berthv1.UpdateMoveCommand{
				MoveId: m.Id, State: berthv1.MoveState_MOVE_STATE_ABORTED, AbortReason: "deadline passed before the agent reached the target"}}}
			if _, err := r.n.applyAsLeader(ctx, cmd); err != nil {
				r.n.logger.Warn("aborting an overdue move failed", "move", m.Id, "err", err)
			}
		case berthv1.MoveState_MOVE_STATE_COMPLETED, berthv1.MoveState_MOVE_STATE_ABORTED:
			if r.finished[m.Id] {
				continue
			}
			r.finished[m.Id] = true
			if !r.primed {
				// Finished before this leader's term: history, not news.
				// Its cool-down is in the view (arrived); back-offs were
				// the old leader's and end with its term.
				continue
			}
			if m.State == berthv1.MoveState_MOVE_STATE_COMPLETED {
				r.movedAt[m.NewConnectionId] = mono
				r.n.metrics.moves.WithLabelValues("completed", m.Reason).Inc()
				r.n.metrics.moveDuration.Observe(now.Sub(time.UnixMilli(m.CreatedUnixMs)).Seconds())
			} else {
				r.backoff[m.ToProxyId] = mono.Add(r.cfg.TargetBackoff)
				r.n.metrics.moves.WithLabelValues("aborted", m.Reason).Inc()
			}
		}
	}
	for id := range r.pending {
		if !stillPending[id] {
			delete(r.pending, id)
		}
	}
	r.primed = true
}

// view is what the planner sees: the registry plus the leader's memory of
// heartbeats, back-offs and recent moves.
//
// The view's clock is the wall clock (now), since connections' and moves'
// stamps come from the log; this leader's own monotonic times (mono) are
// carried into it as offsets from now.
func (r *rebalancer) view(proxies []*berthv1.Proxy, conns []*berthv1.Connection, moves []*berthv1.Move, now, mono time.Time) scheduler.View {
	seen, _ := r.n.beats.view()
	samples := map[string]*berthv1.LoadSample{}
	for _, s := range r.n.beats.load() {
		samples[s.ProxyId] = s
	}
	v := scheduler.View{Now: now}
	for _, p := range proxies {
		last, ok := seen[p.Id]
		pv := scheduler.ProxyView{
			ID: p.Id, Region: p.Region, Zone: p.Zone, Weight: p.CapacityWeight, Status: p.Status,
			Fresh: ok && mono.Sub(last) <= r.n.cfg.Heartbeat.UnhealthyAfter,
		}
		if until, ok := r.backoff[p.Id]; ok {
			pv.BackoffUntil = now.Add(until.Sub(mono))
		}
		if s := samples[p.Id]; s != nil {
			pv.CPUMillicores, pv.MemoryBytes = s.CpuMillicores, s.MemoryBytes
		}
		v.Proxies = append(v.Proxies, pv)
	}
	// A connection that arrived by a move cools down from when that move
	// started; committed moves tell a new leader as much as the old one
	// remembered.
	arrived := map[string]time.Time{}
	for _, m := range moves {
		if m.NewConnectionId != "" && m.State != berthv1.MoveState_MOVE_STATE_ABORTED {
			arrived[m.NewConnectionId] = time.UnixMilli(m.CreatedUnixMs)
		}
	}
	for _, c := range conns {
		var last time.Time
		if t, ok := r.movedAt[c.Id]; ok {
			last = now.Add(-mono.Sub(t))
		}
		if t, ok := arrived[c.Id]; ok && t.After(last) {
			last = t
		}
		v.Connections = append(v.Connections, scheduler.ConnView{
			ID: c.Id, ProxyID: c.ProxyId, Endpoints: c.Endpoints,
			Moving:      c.State == berthv1.ConnectionState_CONNECTION_STATE_MOVING,
			OpenedAt:    time.UnixMilli(c.OpenedUnixMs),
			LastMovedAt: last,
		})
	}
	for _, m := range moves {
		if m.State == berthv1.MoveState_MOVE_STATE_PENDING || m.State == berthv1.MoveState_MOVE_STATE_ACCEPTED {
			v.InFlight = append(v.InFlight, scheduler.InFlight{ConnectionID: m.ConnectionId, From: m.FromProxyId, To: m.ToProxyId,
				Accepted: m.State == berthv1.MoveState_MOVE_STATE_ACCEPTED})
		}
	}
	return v
}

func newMoveID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "mv-" + hex.EncodeToString(b[:])
}

// applyAsLeader proposes cmd on this node only if it leads, and never
// forwards: a scheduler that lost leadership must not get its decisions
// committed by the new leader.
func (n *Node) applyAsLeader(ctx context.Context, cmd *berthv1.Command) (*berthv1.CommandResult, error) {
	if !n.IsLeader() {
		return nil, n.notLeader()
	}
	if err := fsm.ValidateCommand(cmd); err != nil {
		return nil, err
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, err
	}
	res, err := n.applyLocal(ctx, cmd, data)
	if err != nil {
		return nil, err
	}
	return res, fsm.ResultError(res)
}

// targets is each schedulable proxy's weighted target, for status. It
// reads committed state only (health, not the leader's heartbeat memory),
// so every node answers the same.
func (n *Node) targets(proxies []*berthv1.Proxy) map[string]float64 {
	var conns []*berthv1.Connection
	n.fsm.View(func(s *fsm.State, _ uint64) { conns, _ = s.ListConnections(fsm.ConnectionFilter{}, "", 0) })
	v := scheduler.View{Now: n.clock.Now()}
	for _, p := range proxies {
		v.Proxies = append(v.Proxies, scheduler.ProxyView{ID: p.Id, Region: p.Region, Zone: p.Zone, Weight: p.CapacityWeight,
			Status: p.Status, Fresh: p.Health == berthv1.Health_HEALTH_HEALTHY})
	}
	for _, c := range conns {
		v.Connections = append(v.Connections, scheduler.ConnView{ID: c.Id, ProxyID: c.ProxyId, Endpoints: c.Endpoints})
	}
	return scheduler.Targets(v, n.cfg.Rebalance.Limits)
}

// rebalanceNow plans (and unless dryRun, commits) on the leader; a
// follower forwards the call.
func (n *Node) rebalanceNow(ctx context.Context, dryRun bool) (*berthv1.RebalanceResponse, error) {
	fwd, err := n.forwardAdmin()
	if err != nil {
		return nil, err
	}
	if fwd != nil {
		return fwd.Rebalance(ctx, &berthv1.RebalanceRequest{DryRun: dryRun})
	}
	r := n.reb.Load()
	if r == nil {
		return nil, n.notLeader() // leadership is starting or ending
	}
	moves, err := r.round(ctx, dryRun)
	if err != nil {
		return nil, err
	}
	return &berthv1.RebalanceResponse{Moves: moves, Imbalance: r.lastImbalance(), ServedBy: n.cfg.ID}, nil
}
