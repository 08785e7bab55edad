package scheduler

import (
	"fmt"
	"math"
	"sort"
	"testing"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

const (
	active    = berthv1.ProxyStatus_PROXY_STATUS_ACTIVE
	cordoned  = berthv1.ProxyStatus_PROXY_STATUS_CORDONED
	draining  = berthv1.ProxyStatus_PROXY_STATUS_DRAINING
	unhealthy = berthv1.ProxyStatus_PROXY_STATUS_UNHEALTHY
	down      = berthv1.ProxyStatus_PROXY_STATUS_DOWN
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// px is an ACTIVE, fresh proxy in region r1, zone z1, weight 1.
func px(id string) ProxyView {
	return ProxyView{ID: id, Region: "r1", Zone: "z1", Weight: 1, Status: active, Fresh: true}
}

func (p ProxyView) in(region, zone string) ProxyView { p.Region, p.Zone = region, zone; return p }
func (p ProxyView) weight(w uint32) ProxyView        { p.Weight = w; return p }
func (p ProxyView) status(s berthv1.ProxyStatus) ProxyView {
	p.Status = s
	return p
}

// conns returns n old, never-moved connections on proxy, ids
// "<proxy>-c<i>", each serving its own endpoint unless eps is given.
func conns(proxy string, n int, eps ...string) []ConnView {
	out := make([]ConnView, n)
	for i := range out {
		id := fmt.Sprintf("%s-c%03d", proxy, i)
		e := eps
		if len(e) == 0 {
			e = []string{"ep-" + id}
		}
		out[i] = ConnView{ID: id, ProxyID: proxy, Endpoints: e, OpenedAt: t0.Add(-time.Hour)}
	}
	return out
}

func view(ps []ProxyView, cs ...[]ConnView) View {
	v := View{Now: t0, Proxies: ps}
	for _, c := range cs {
		v.Connections = append(v.Connections, c...)
	}
	return v
}

// counts returns connections per proxy id.
func counts(v View) map[string]int {
	out := map[string]int{}
	for _, c := range v.Connections {
		out[c.ProxyID]++
	}
	return out
}

// applyPlan carries out moves fully and advances the clock past the
// cool-down, as if every move completed before the next round.
func applyPlan(v View, l Limits, moves []Move) View {
	to := make(map[string]string, len(moves))
	for _, m := range moves {
		to[m.ConnectionID] = m.To
	}
	cs := append([]ConnView(nil), v.Connections...)
	for i := range cs {
		if dst, ok := to[cs[i].ID]; ok {
			cs[i].ProxyID = dst
			cs[i].LastMovedAt = v.Now
		}
	}
	v.Connections = cs
	v.InFlight = nil
	v.Now = v.Now.Add(l.CoolDown + time.Second)
	return v
}

// converge plans and applies until a plan is empty or maxRounds pass. It
// checks every plan's invariants on the way.
func converge(t *testing.T, v View, l Limits, maxRounds int) (View, []Move, int) {
	t.Helper()
	var all []Move
	for round := 0; round < maxRounds; round++ {
		moves := Plan(v, l)
		checkPlan(t, v, l, moves)
		if len(moves) == 0 {
			return v, all, round
		}
		all = append(all, moves...)
		v = applyPlan(v, l, moves)
	}
	t.Fatalf("no fixed point after %d rounds", maxRounds)
	return v, all, maxRounds
}

// --- An independent model of the documented rules, for checking. ---

type modelProxy struct {
	pv                   ProxyView
	group                string
	eligible, overloaded bool
	count                int
	incoming             int
	target               float64
	hi, lo               int // lo is the shed floor for an overloaded proxy
}

type model struct {
	proxies map[string]*modelProxy
	ids     []string
	e, d    map[string]int // per group
}

func isOverloaded(p ProxyView, l Limits) bool {
	return p.Status == active && p.Fresh &&
		((l.CPULimitMillicores > 0 && p.CPUMillicores > l.CPULimitMillicores) ||
			(l.MemoryLimitBytes > 0 && p.MemoryBytes > l.MemoryLimitBytes))
}

func isTarget(p ProxyView, v View, l Limits) bool {
	return p.Status == active && p.Fresh && !v.Now.Before(p.BackoffUntil) && !isOverloaded(p, l)
}

func newModel(v View, l Limits) *model {
	m := &model{proxies: map[string]*modelProxy{}, e: map[string]int{}, d: map[string]int{}}
	for _, p := range v.Proxies {
		if _, dup := m.proxies[p.ID]; dup {
			continue
		}
		g := p.Region
		if l.CrossRegion {
			g = ""
		}
		m.proxies[p.ID] = &modelProxy{pv: p, group: g, eligible: isTarget(p, v, l), overloaded: isOverloaded(p, l)}
		m.ids = append(m.ids, p.ID)
	}
	sort.Strings(m.ids)
	flying := map[string]InFlight{}
	for _, f := range v.InFlight {
		if _, ok := flying[f.ConnectionID]; !ok {
			flying[f.ConnectionID] = f
		}
	}
	n := map[string]int{}
	for _, c := range v.Connections {
		p := m.proxies[c.ProxyID]
		if p == nil || p.pv.Status == down {
			continue
		}
		if f, ok := flying[c.ID]; ok {
			if q := m.proxies[f.To]; q != nil && q.pv.Status != down {
				if f.Accepted {
					continue // the new connection at f.To counts instead
				}
				if f.To != c.ProxyID {
					p = q
					p.incoming++
				}
			}
		}
		p.count++
		n[p.group]++
	}
	welig, wover := map[string]float64{}, map[string]float64{}
	w := func(p ProxyView) float64 {
		if p.Weight == 0 {
			return 1
		}
		return float64(p.Weight)
	}
	for _, p := range m.proxies {
		if p.eligible {
			welig[p.group] += w(p.pv)
		} else if p.overloaded {
			wover[p.group] += w(p.pv)
		}
	}
	b := l.Band
	for _, id := range m.ids {
		p := m.proxies[id]
		N := float64(n[p.group])
		switch {
		case p.eligible:
			p.target = N * w(p.pv) / welig[p.group]
			p.hi = int(math.Ceil(p.target*(1+b) - 1e-9))
			p.lo = int(math.Floor(p.target*(1-b) + 1e-9))
			if p.incoming == 0 {
				m.e[p.group] += max(0, p.count-p.hi)
			}
			m.d[p.group] += max(0, p.lo-p.count)
		case p.overloaded:
			p.target = N * w(p.pv) / (welig[p.group] + wover[p.group])
			p.lo = int(math.Floor(p.target*(1-b) + 1e-9))
			m.e[p.group] += max(0, p.count-p.lo)
		case p.pv.Status == draining:
			m.e[p.group] += p.count
		}
	}
	return m
}

// minMoves is the documented minimum: the sum over groups of max(E, D).
func (m *model) minMoves() int {
	total := 0
	for g, e := range m.e {
		total += max(e, m.d[g])
	}
	for g, d := range m.d {
		if _, ok := m.e[g]; !ok {
			total += d
		}
	}
	return total
}

// checkPlan checks every rule a single plan must keep.
func checkPlan(t *testing.T, v View, l Limits, moves []Move) {
	t.Helper()
	proxies := map[string]ProxyView{}
	for _, p := range v.Proxies {
		if _, dup := proxies[p.ID]; !dup {
			proxies[p.ID] = p
		}
	}
	connByID := make(map[string]ConnView, len(moves))
	for _, m := range moves {
		connByID[m.ConnectionID] = ConnView{}
	}
	for _, c := range v.Connections {
		if _, ok := connByID[c.ID]; ok {
			connByID[c.ID] = c
		}
	}
	flying := map[string]bool{}
	involved := map[string]int{}
	for _, f := range v.InFlight {
		flying[f.ConnectionID] = true
		involved[f.From]++
		if f.To != f.From {
			involved[f.To]++
		}
	}
	if len(moves) > l.MaxPerPlan {
		t.Errorf("%d moves > MaxPerPlan %d", len(moves), l.MaxPerPlan)
	}
	if len(moves)+len(v.InFlight) > l.MaxInFlight && len(moves) > 0 {
		t.Errorf("%d moves + %d in flight > MaxInFlight %d", len(moves), len(v.InFlight), l.MaxInFlight)
	}
	seen := map[string]bool{}
	for _, m := range moves {
		c := connByID[m.ConnectionID]
		switch {
		case c.ID == "":
			t.Errorf("move %+v: unknown connection", m)
			continue
		case seen[m.ConnectionID]:
			t.Errorf("move %+v: connection moved twice in one plan", m)
		case c.ProxyID != m.From:
			t.Errorf("move %+v: connection is on %q", m, c.ProxyID)
		case m.From == m.To:
			t.Errorf("move %+v: to the proxy it is on", m)
		case c.Moving || flying[c.ID]:
			t.Errorf("move %+v: connection already moving", m)
		case !c.OpenedAt.IsZero() && v.Now.Sub(c.OpenedAt) < l.MinAge:
			t.Errorf("move %+v: connection younger than MinAge", m)
		case !c.LastMovedAt.IsZero() && v.Now.Sub(c.LastMovedAt) < l.CoolDown:
			t.Errorf("move %+v: connection in cool-down", m)
		}
		seen[m.ConnectionID] = true
		to, from := proxies[m.To], proxies[m.From]
		if !isTarget(to, v, l) {
			t.Errorf("move %+v: target not eligible (%v fresh=%v backoff=%v)", m, to.Status, to.Fresh, to.BackoffUntil)
		}
		if !l.CrossRegion && to.Region != from.Region {
			t.Errorf("move %+v: crosses regions %q -> %q", m, from.Region, to.Region)
		}
		switch m.Reason {
		case ReasonDrain:
			if from.Status != draining {
				t.Errorf("move %+v: drain from a %v proxy", m, from.Status)
			}
		case ReasonOverloaded:
			if !isOverloaded(from, l) {
				t.Errorf("move %+v: source not overloaded", m)
			}
		case ReasonBalance, ReasonSpread:
			if !isTarget(from, v, l) {
				t.Errorf("move %+v: %s from a proxy that is not eligible", m, m.Reason)
			}
		default:
			t.Errorf("move %+v: unknown reason", m)
		}
		involved[m.From]++
		involved[m.To]++
	}
	for id, n := range involved {
		if n > l.MaxInFlightPerProxy && countMovesAt(moves, id) > 0 {
			t.Errorf("proxy %s: %d moves in flight > %d", id, n, l.MaxInFlightPerProxy)
		}
	}
}

func countMovesAt(moves []Move, id string) int {
	n := 0
	for _, m := range moves {
		if m.From == id || m.To == id {
			n++
		}
	}
	return n
}

// checkBalanced checks a fixed point: drained, overloaded shed, every
// eligible proxy at or under hi, and at or over lo unless no eligible
// proxy of its group is above its target (nothing left to give). A
// proxy out of line is accepted only if every move that would help it
// would leave an endpoint's connections all on one proxy.
func checkBalanced(t *testing.T, name string, v View, l Limits) {
	t.Helper()
	m := newModel(v, l)
	byProxy := map[string][]ConnView{}
	at := map[string]map[string]int{}
	total := map[string]int{}
	for _, c := range v.Connections {
		if p := m.proxies[c.ProxyID]; p == nil || p.pv.Status == down {
			continue
		}
		if !c.Moving && (c.OpenedAt.IsZero() || v.Now.Sub(c.OpenedAt) >= l.MinAge) &&
			(c.LastMovedAt.IsZero() || v.Now.Sub(c.LastMovedAt) >= l.CoolDown) {
			byProxy[c.ProxyID] = append(byProxy[c.ProxyID], c)
		}
		for _, e := range c.Endpoints {
			if at[e] == nil {
				at[e] = map[string]int{}
			}
			at[e][c.ProxyID]++
			total[e]++
		}
	}
	eligible := map[string][]*modelProxy{}
	for _, id := range m.ids {
		if p := m.proxies[id]; p.eligible {
			eligible[p.group] = append(eligible[p.group], p)
		}
	}
	concentrates := func(c ConnView, from, to string) bool {
		for _, e := range c.Endpoints {
			if at[e][from] == 1 && at[e][to] == total[e]-1 && total[e] >= 2 {
				return true
			}
		}
		return false
	}
	// canGive: some connection of src may legally go to some receiver.
	canGive := func(src *modelProxy, ok func(r *modelProxy) bool) bool {
		single := src.pv.Status == draining && len(eligible[src.group]) == 1
		for _, c := range byProxy[src.pv.ID] {
			for _, r := range eligible[src.group] {
				if r != src && ok(r) && (single || !concentrates(c, src.pv.ID, r.pv.ID)) {
					return true
				}
			}
		}
		return false
	}
	room := func(r *modelProxy) bool { return r.count < r.hi }
	for _, id := range m.ids {
		p := m.proxies[id]
		switch {
		case p.pv.Status == draining && p.count > 0 && canGive(p, room):
			t.Errorf("%s: draining %s still holds %d", name, id, p.count)
		case p.overloaded && p.count > p.lo && canGive(p, room):
			t.Errorf("%s: overloaded %s holds %d > shed floor %d", name, id, p.count, p.lo)
		case p.eligible && p.count > p.hi && canGive(p, room):
			t.Errorf("%s: %s holds %d > hi %d (target %.2f)", name, id, p.count, p.hi, p.target)
		case p.eligible && p.count < p.lo:
			for _, d := range eligible[p.group] {
				if float64(d.count) > d.target+1e-9 && canGive(d, func(r *modelProxy) bool { return r == p }) {
					t.Errorf("%s: %s holds %d < lo %d (target %.2f) while %s holds %d > its target %.2f",
						name, id, p.count, p.lo, p.target, d.pv.ID, d.count, d.target)
					break
				}
			}
		}
	}
}

// spreadOf is the property tests' spread measure: the minimum over
// endpoints of the proxies holding it, capped at its connection count
// and at the number of possible targets (eligible proxies): a drain into
// a single target may leave an endpoint on one proxy, which is all the
// cluster allows.
func spreadOf(v View, l Limits) int {
	targets := 0
	status := map[string]berthv1.ProxyStatus{}
	for _, p := range v.Proxies {
		status[p.ID] = p.Status
		if isTarget(p, v, l) {
			targets++
		}
	}
	at := map[string]map[string]bool{}
	total := map[string]int{}
	for _, c := range v.Connections {
		if s, ok := status[c.ProxyID]; !ok || s == down {
			continue
		}
		for _, e := range c.Endpoints {
			if at[e] == nil {
				at[e] = map[string]bool{}
			}
			at[e][c.ProxyID] = true
			total[e]++
		}
	}
	if len(at) == 0 {
		return 0
	}
	worst := math.MaxInt
	for e, ps := range at {
		worst = min(worst, len(ps), total[e], targets)
	}
	return worst
}

// concentrated lists endpoints with two or more connections all on one
// proxy (DOWN proxies' connections do not count).
func concentrated(v View) map[string]bool {
	first := map[string]string{}
	multi, total := map[string]bool{}, map[string]int{}
	live := map[string]bool{}
	for _, p := range v.Proxies {
		live[p.ID] = p.Status != down
	}
	for _, c := range v.Connections {
		if !live[c.ProxyID] {
			continue
		}
		for _, e := range c.Endpoints {
			total[e]++
			if f, ok := first[e]; !ok {
				first[e] = c.ProxyID
			} else if f != c.ProxyID {
				multi[e] = true
			}
		}
	}
	out := map[string]bool{}
	for e, n := range total {
		if n >= 2 && !multi[e] {
			out[e] = true
		}
	}
	return out
}
