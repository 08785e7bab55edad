package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// randomCluster builds a skewed cluster: regions and zones, weights 0-4,
// mostly ACTIVE proxies with some cordoned, draining, unhealthy, down,
// stale, in back-off or overloaded (CPU over 1000 millicores); some
// proxies empty; endpoints of skewed sizes, some stuck on one proxy;
// some connections young, cooling down, or moving with a move in
// flight. stable lists the connections that are neither young, cooling
// nor moving.
func randomCluster(rng *rand.Rand, nProxies, nConns int) (View, int) {
	v := View{Now: t0}
	regions := 1 + rng.IntN(3)
	zones := 1 + rng.IntN(3)
	pop := make([]float64, nProxies)
	sum := 0.0
	for i := range nProxies {
		p := ProxyView{
			ID:            fmt.Sprintf("p%04d", i),
			Region:        fmt.Sprintf("r%d", rng.IntN(regions)),
			Zone:          fmt.Sprintf("z%d", rng.IntN(zones)),
			Weight:        uint32(rng.IntN(5)),
			Status:        active,
			Fresh:         true,
			CPUMillicores: uint32(rng.IntN(1000)),
		}
		switch r := rng.IntN(100); {
		case r < 5:
			p.Status = cordoned
		case r < 10:
			p.Status = draining
		case r < 13:
			p.Status = unhealthy
		case r < 16:
			p.Status = down
		case r < 20:
			p.Fresh = false
		case r < 23:
			p.BackoffUntil = t0.Add(1000 * time.Hour)
		case r < 28:
			p.CPUMillicores = 1500
		}
		v.Proxies = append(v.Proxies, p)
		if rng.IntN(10) > 0 {
			pop[i] = rng.Float64() * 2
		}
		sum += pop[i]
	}
	cum := make([]float64, nProxies)
	acc := 0.0
	for i, x := range pop {
		acc += x / sum
		cum[i] = acc
	}
	pick := func() int {
		u := rng.Float64()
		lo, hi := 0, nProxies-1
		for lo < hi {
			mid := (lo + hi) / 2
			if cum[mid] < u {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		return lo
	}
	nEps := max(1, nConns/4)
	moving := 0
	for i := range nConns {
		p := pick()
		c := ConnView{ID: fmt.Sprintf("c%06d", i), ProxyID: v.Proxies[p].ID, OpenedAt: t0.Add(-time.Hour)}
		if rng.IntN(10) == 0 {
			c.Endpoints = []string{fmt.Sprintf("stuck-%s-%d", c.ProxyID, rng.IntN(2))}
		} else {
			for range 1 + rng.IntN(3) {
				u := rng.Float64()
				// A connection lists each endpoint once, as the FSM requires.
				if e := fmt.Sprintf("e%d", int(float64(nEps)*u*u)); !slices.Contains(c.Endpoints, e) {
					c.Endpoints = append(c.Endpoints, e)
				}
			}
		}
		switch rng.IntN(20) {
		case 0:
			c.OpenedAt = t0.Add(-time.Second)
		case 1:
			c.LastMovedAt = t0.Add(-time.Minute)
		case 2:
			c.LastMovedAt = t0.Add(-time.Hour)
		case 3:
			c.Moving = true
			moving++
			to := v.Proxies[rng.IntN(nProxies)].ID
			v.InFlight = append(v.InFlight, InFlight{ConnectionID: c.ID, From: c.ProxyID, To: to, Accepted: rng.IntN(2) == 0})
		}
		v.Connections = append(v.Connections, c)
	}
	return v, moving
}

func randomLimits(rng *rand.Rand) Limits {
	l := DefaultLimits()
	l.Band = []float64{0, 0.05, 0.1, 0.2, 0.3}[rng.IntN(5)]
	l.MaxPerPlan = 1 + rng.IntN(100)
	l.MaxInFlight = 1 + rng.IntN(200)
	l.MaxInFlightPerProxy = 1 + rng.IntN(20)
	l.CrossRegion = rng.IntN(3) == 0
	l.CPULimitMillicores = 1000
	return l
}

// TestPropertyLimits checks single plans on random views with moves in
// flight: every target eligible, every limit kept, plans deterministic.
func TestPropertyLimits(t *testing.T) {
	n := 300
	if testing.Short() || raceSlowdown > 1 {
		n = 60
	}
	for seed := range uint64(n) {
		rng := rand.New(rand.NewPCG(seed, 1))
		v, _ := randomCluster(rng, 2+rng.IntN(40), rng.IntN(3000))
		l := randomLimits(rng)
		moves := Plan(v, l)
		checkPlan(t, v, l, moves)
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
	}
}

type convergeStats struct {
	runs        int
	minimum     int // sum of max(E, D) over runs' first views
	done        int // how much of it the runs removed (the rest cannot be: see checkBalanced)
	moves       int // balance moves (all but spread)
	overDone    int // runs with more balance moves than they removed
	worstRatio  float64
	spreadMoves int
	rounds      int
	roundBound  int
	roundsLow   int // sum of the lower bound max(ceil(M/budget), ceil(worst proxy/cap))
	worstExtra  int // most rounds past that lower bound in one run
	// spread: the brief's measure (min over endpoints of distinct
	// proxies, capped), and endpoints with 2+ connections on one proxy.
	spreadBefore, spreadAfter int
	stuckBefore, stuckAfter   int
}

// allowance is the moves over the minimum a run may make: 10%, the
// brief's bound. They happen only when spread forbids every proxy under
// the band (see shed).
func allowance(minimum int) int { return minimum / 10 }

// TestPropertyConverge simulates rounds on random clusters: each plan is
// applied fully and the clock moves past the cool-down. It checks that
// the rounds reach a fixed point within the band in a bounded number of
// rounds, that the balance moves are exactly the documented minimum
// (max(E, D) per group, over the band's edges), and that no endpoint's
// spread gets worse.
func TestPropertyConverge(t *testing.T) {
	type size struct{ proxies, conns, runs int }
	sizes := []size{{3, 30, 300}, {10, 300, 200}, {50, 3000, 30}, {200, 20000, 4}, {1000, 100000, 2}}
	switch {
	case testing.Short():
		sizes = []size{{3, 30, 50}, {10, 300, 50}, {50, 3000, 5}}
	case raceSlowdown > 1:
		// The race detector has nothing to find in a single goroutine
		// and is ten times slower: fewer runs.
		// The biggest views are left to the plain run and TestPlanFast.
		sizes = []size{{3, 30, 100}, {10, 300, 50}, {50, 3000, 5}, {200, 20000, 1}}
	}
	for _, sz := range sizes {
		t.Run(fmt.Sprintf("%dx%d", sz.proxies, sz.conns), func(t *testing.T) {
			var st convergeStats
			for seed := range uint64(sz.runs) {
				rng := rand.New(rand.NewPCG(seed, uint64(sz.proxies)))
				v, _ := randomCluster(rng, sz.proxies, sz.conns)
				for i := range v.Connections {
					v.Connections[i].Moving = false
				}
				v.InFlight = nil
				l := randomLimits(rng)
				if sz.conns >= 20000 {
					// Big clusters: limits scaled to the cluster.
					l.MaxPerPlan, l.MaxInFlight, l.MaxInFlightPerProxy = 2000, 4000, 64
				}
				convergeOnce(t, fmt.Sprintf("seed %d", seed), v, l, &st)
				if t.Failed() {
					return
				}
			}
			t.Logf("%d runs: max(E, D) %d, of which %d removable; %d balance moves (%d runs over the removable part, worst %.3f×), "+
				"%d spread moves; %d rounds (lower bound %d, allowed %d, worst run %d past its lower bound); brief's spread measure summed %d -> %d; endpoints on one proxy %d -> %d",
				st.runs, st.minimum, st.done, st.moves, st.overDone, st.worstRatio, st.spreadMoves, st.rounds, st.roundsLow, st.roundBound, st.worstExtra,
				st.spreadBefore, st.spreadAfter, st.stuckBefore, st.stuckAfter)
		})
	}
}

func convergeOnce(t *testing.T, name string, v View, l Limits, st *convergeStats) {
	t.Helper()
	m0 := newModel(v, l)
	minimum := m0.minMoves()
	// A bound on rounds: the lower bound set by the budget per round and
	// by the busiest proxy's work at its per-proxy cap, plus a few rounds
	// for young and cooling connections and the fill pass, and the rounds
	// the spread moves take.
	perRound := min(l.MaxPerPlan, l.MaxInFlight)
	worstProxy := 0
	for _, id := range m0.ids {
		p := m0.proxies[id]
		work := 0
		switch {
		case p.pv.Status == draining:
			work = p.count
		case p.overloaded:
			work = max(0, p.count-p.lo)
		case p.eligible:
			work = max(p.count-p.hi, p.lo-p.count, 0)
		}
		worstProxy = max(worstProxy, work)
	}
	low := max(ceilDiv(minimum, perRound), ceilDiv(worstProxy, l.MaxInFlightPerProxy))
	spreadBefore := spreadOf(v, l)
	stuckBefore := concentrated(v)
	// Spread moves (at most one per concentrated endpoint) share the
	// budget of each round with balance moves.
	bound := low + 8 + ceilDiv(len(stuckBefore), perRound)
	end, moves, rounds := converge(t, v, l, bound+50)
	if rounds > bound {
		t.Errorf("%s: %d rounds, bound %d", name, rounds, bound)
	}
	checkBalanced(t, name, end, l)
	balance, spread := 0, 0
	for _, m := range moves {
		if m.Reason == ReasonSpread {
			spread++
		} else {
			balance++
		}
	}
	// Accounting: every balance move lowers max(E, D) by one (a spread
	// move into a proxy under the band lowers it too), save those forced
	// to a proxy with mere room because every proxy under the band would
	// have left an endpoint on one proxy.
	left := newModel(end, l).minMoves()
	if done := minimum - left; done > balance+spread || balance > done+allowance(minimum) {
		t.Errorf("%s: %d balance and %d spread moves, but max(E, D) went from %d to %d", name, balance, spread, minimum, left)
	}
	if balance > minimum+allowance(minimum) {
		t.Errorf("%s: %d balance moves > minimum %d + allowance", name, balance, minimum)
	}
	if balance > minimum-left {
		st.overDone++
	}
	if spread > len(stuckBefore) {
		t.Errorf("%s: %d spread moves for %d concentrated endpoints", name, spread, len(stuckBefore))
	}
	spreadAfter := spreadOf(end, l)
	if spreadAfter < spreadBefore {
		t.Errorf("%s: spread fell from %d to %d", name, spreadBefore, spreadAfter)
	}
	stuckAfter := concentrated(end)
	for e := range stuckAfter {
		if !stuckBefore[e] {
			if !drainedIntoOne(v, l, e) {
				t.Errorf("%s: endpoint %s ended on one proxy", name, e)
			}
			delete(stuckAfter, e) // the cluster allows no better
		}
	}
	if len(stuckAfter) > len(stuckBefore) {
		t.Errorf("%s: %d endpoints on one proxy, %d before", name, len(stuckAfter), len(stuckBefore))
	}
	st.runs++
	st.moves += balance
	st.minimum += minimum
	st.done += minimum - left
	st.spreadMoves += spread
	st.rounds += rounds
	st.roundBound += bound
	st.roundsLow += low
	st.worstExtra = max(st.worstExtra, rounds-low)
	if done := minimum - left; done > 0 {
		st.worstRatio = max(st.worstRatio, float64(balance)/float64(done))
	}
	st.spreadBefore += spreadBefore
	st.spreadAfter += spreadAfter
	st.stuckBefore += len(stuckBefore)
	st.stuckAfter += len(stuckAfter)
}

// drainedIntoOne: endpoint e had a connection on a draining proxy whose
// group has a single eligible proxy, the one exception to spread.
func drainedIntoOne(v View, l Limits, e string) bool {
	m := newModel(v, l)
	eligible := map[string]int{}
	for _, p := range m.proxies {
		if p.eligible {
			eligible[p.group]++
		}
	}
	for _, c := range v.Connections {
		p := m.proxies[c.ProxyID]
		if p == nil || p.pv.Status != draining || eligible[p.group] != 1 {
			continue
		}
		for _, x := range c.Endpoints {
			if x == e {
				return true
			}
		}
	}
	return false
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
