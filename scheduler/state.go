package scheduler

import (
	"math"
	"slices"
	"strings"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// kind is what the planner may do with a proxy.
type kind uint8

const (
	// kindIdle proxies are left alone: their connections count toward
	// their group's total, but they neither shed nor receive (CORDONED,
	// UNHEALTHY, unspecified status, stale, or in back-off).
	kindIdle kind = iota
	// kindEligible proxies are targets: ACTIVE, fresh, out of back-off,
	// not overloaded. They alone have weighted targets.
	kindEligible
	// kindOverloaded proxies are ACTIVE, fresh and over a load limit: they
	// shed down to their shed floor and never receive.
	kindOverloaded
	// kindDraining proxies shed every connection.
	kindDraining
	// kindDown proxies and their connections are ignored.
	kindDown
)

// epsilon absorbs float rounding in target × (1 ± band).
const epsilon = 1e-9

type proxy struct {
	id     string
	group  int32
	zone   int32
	kind   kind
	weight float64

	count    int32 // connections held, in-flight moves counted at their target
	incoming int32 // PENDING moves reaching it, counted in count
	involved int32 // in-flight moves leaving or reaching it

	// target is the weighted target of an eligible proxy and the fair
	// share (as if it were eligible) of an overloaded one.
	target float64
	// hi and lo are an eligible proxy's band edges; an overloaded proxy's
	// shed floor is lo.
	hi, lo int32
}

type group struct {
	n            int     // connections on its proxies that are not DOWN
	wElig, wOver float64 // sum of eligible and overloaded weights
	eligible     []int32 // eligible proxies, in id order
	excess       int     // E: sum of excess over shed limits (see excess)
	deficit      int     // D: sum of deficit under lo of eligible proxies
}

// state is the planner's working copy of a View: proxies in id order,
// grouped by region (or all in one group), with counts and band edges.
type state struct {
	now     int64 // View.Now, unix nanoseconds
	band    float64
	proxies []proxy
	groups  []group
	byID    map[string]int32

	// Connection-level data, only for Plan (withConns).
	conns    []ConnView
	loc      []int32 // proxy each connection counts on, -1 if ignored
	movable  []bool
	epOff    []int32 // endpoints of connection c: eps[epOff[c]:epOff[c+1]]
	eps      []int32
	epNames  []string
	epTotal  []int32 // connections of endpoint e, all groups
	epFirst  []int32 // a proxy holding e
	epSpread []bool  // e is held by more than one proxy
	// list(p) is p's movable connections, held(p) all it holds, both as
	// built (held is not updated by planned moves: check loc).
	listOff, listIdx []int32
	heldOff, heldIdx []int32
	zones            int
}

func weightOf(w uint32) float64 {
	if w == 0 {
		return 1
	}
	return float64(w)
}

// build reads v. withConns also prepares what Plan needs to choose
// connections; Targets and Imbalance only need counts.
func build(v View, l Limits, withConns bool) *state {
	s := &state{band: l.Band}
	if !v.Now.IsZero() {
		s.now = v.Now.UnixNano()
	}
	if s.band < 0 || math.IsNaN(s.band) {
		s.band = 0
	}

	// Proxies in id order; a repeated id keeps its first entry.
	order := make([]int32, len(v.Proxies))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortStableFunc(order, func(a, b int32) int { return strings.Compare(v.Proxies[a].ID, v.Proxies[b].ID) })
	s.proxies = make([]proxy, 0, len(order))
	s.byID = make(map[string]int32, len(order))
	groupOf := map[string]int32{}
	zoneOf := map[[2]string]int32{}
	for _, i := range order {
		pv := &v.Proxies[i]
		if _, dup := s.byID[pv.ID]; dup {
			continue
		}
		region := pv.Region
		if l.CrossRegion {
			region = ""
		}
		g, ok := groupOf[region]
		if !ok {
			g = int32(len(s.groups))
			groupOf[region] = g
			s.groups = append(s.groups, group{})
		}
		zk := [2]string{pv.Region, pv.Zone}
		z, ok := zoneOf[zk]
		if !ok {
			z = int32(len(zoneOf))
			zoneOf[zk] = z
		}
		s.zones = len(zoneOf)
		p := proxy{id: pv.ID, group: g, zone: z, weight: weightOf(pv.Weight), kind: classify(pv, v, l)}
		s.byID[pv.ID] = int32(len(s.proxies))
		s.proxies = append(s.proxies, p)
	}

	// In-flight moves: every one counts against both ends' caps. A
	// PENDING move's connection counts at its target; an ACCEPTED move's
	// old connection counts nowhere, since its new one is in the view.
	const replaced = -2
	var flying map[string]int32 // connection id -> target proxy, -1 or replaced
	if len(v.InFlight) > 0 {
		flying = make(map[string]int32, len(v.InFlight))
	}
	for _, m := range v.InFlight {
		from, okFrom := s.byID[m.From]
		to, okTo := s.byID[m.To]
		if okFrom {
			s.proxies[from].involved++
		}
		if okTo && to != from {
			s.proxies[to].involved++
		}
		if _, seen := flying[m.ConnectionID]; seen {
			continue
		}
		target := int32(-1) // target gone: the connection stays put
		switch {
		case !okTo || s.proxies[to].kind == kindDown:
		case m.Accepted:
			target = replaced
		default:
			target = to
		}
		flying[m.ConnectionID] = target
	}

	if withConns {
		s.conns = v.Connections
		s.loc = make([]int32, len(v.Connections))
		s.movable = make([]bool, len(v.Connections))
	}
	minAge, cool := l.MinAge.Nanoseconds(), l.CoolDown.Nanoseconds()
	lastID, last := "", int32(-1)
	for i := range v.Connections {
		c := &v.Connections[i]
		p := int32(-1)
		if c.ProxyID == lastID && last >= 0 {
			p = last
		} else if q, ok := s.byID[c.ProxyID]; ok {
			p, lastID, last = q, c.ProxyID, q
		}
		if p >= 0 && s.proxies[p].kind == kindDown {
			p = -1
		}
		move := p >= 0 && !c.Moving
		if p >= 0 && flying != nil {
			if to, ok := flying[c.ID]; ok {
				move = false
				switch {
				case to == replaced:
					p = -1 // its new connection counts instead
				case to >= 0 && to != p:
					p = to
					s.proxies[to].incoming++
				}
			}
		}
		if p >= 0 {
			s.proxies[p].count++
			s.groups[s.proxies[p].group].n++
		}
		if withConns {
			s.loc[i] = p
			if move && !c.OpenedAt.IsZero() && s.now-c.OpenedAt.UnixNano() < minAge {
				move = false
			}
			if move && !c.LastMovedAt.IsZero() && s.now-c.LastMovedAt.UnixNano() < cool {
				move = false
			}
			s.movable[i] = move
		}
	}

	// Weighted targets and band edges.
	for i := range s.proxies {
		p := &s.proxies[i]
		g := &s.groups[p.group]
		switch p.kind {
		case kindEligible:
			g.wElig += p.weight
			g.eligible = append(g.eligible, int32(i))
		case kindOverloaded:
			g.wOver += p.weight
		}
	}
	for i := range s.proxies {
		p := &s.proxies[i]
		g := &s.groups[p.group]
		n := float64(g.n)
		switch p.kind {
		case kindEligible:
			p.target = n * p.weight / g.wElig
			p.hi = int32(math.Ceil(p.target*(1+s.band) - epsilon))
			p.lo = max(0, int32(math.Floor(p.target*(1-s.band)+epsilon)))
		case kindOverloaded:
			p.target = n * p.weight / (g.wElig + g.wOver)
			p.lo = max(0, int32(math.Floor(p.target*(1-s.band)+epsilon)))
		}
	}
	for i := range s.proxies {
		g := &s.groups[s.proxies[i].group]
		g.excess += s.excess(int32(i))
		g.deficit += s.deficit(int32(i))
	}
	if withConns {
		s.indexConns()
	}
	return s
}

// classify decides what the planner may do with a proxy.
func classify(pv *ProxyView, v View, l Limits) kind {
	switch pv.Status {
	case berthv1.ProxyStatus_PROXY_STATUS_DOWN:
		return kindDown
	case berthv1.ProxyStatus_PROXY_STATUS_DRAINING:
		return kindDraining
	case berthv1.ProxyStatus_PROXY_STATUS_ACTIVE:
	default:
		return kindIdle
	}
	if !pv.Fresh {
		return kindIdle
	}
	if (l.CPULimitMillicores > 0 && pv.CPUMillicores > l.CPULimitMillicores) ||
		(l.MemoryLimitBytes > 0 && pv.MemoryBytes > l.MemoryLimitBytes) {
		return kindOverloaded
	}
	if v.Now.Before(pv.BackoffUntil) {
		return kindIdle
	}
	return kindEligible
}

// excess is how many connections p must shed: all of a draining proxy's,
// an overloaded one's above its shed floor, an eligible one's above hi.
// An eligible proxy with PENDING moves arriving is not judged until they
// are accepted: they count in it, but the agent may yet fail to arrive.
func (s *state) excess(i int32) int {
	p := &s.proxies[i]
	switch p.kind {
	case kindDraining:
		return int(p.count)
	case kindOverloaded:
		return max(0, int(p.count-p.lo))
	case kindEligible:
		if p.incoming > 0 {
			return 0
		}
		return max(0, int(p.count-p.hi))
	}
	return 0
}

// deficit is how many connections an eligible proxy lacks to reach lo.
func (s *state) deficit(i int32) int {
	p := &s.proxies[i]
	if p.kind != kindEligible {
		return 0
	}
	return max(0, int(p.lo-p.count))
}

// indexConns interns endpoints and lists each proxy's movable connections.
func (s *state) indexConns() {
	n := len(s.conns)
	s.epOff = make([]int32, n+1)
	total := 0
	for i := range s.conns {
		total += len(s.conns[i].Endpoints)
	}
	s.eps = make([]int32, 0, total)
	intern := make(map[string]int32, min(total/4, 1<<14))
	for i := range s.conns {
		p := s.loc[i]
		start := int32(len(s.eps))
		if p >= 0 {
		next:
			for _, name := range s.conns[i].Endpoints {
				e, ok := intern[name]
				if !ok {
					e = int32(len(s.epNames))
					intern[name] = e
					s.epNames = append(s.epNames, name)
					s.epTotal = append(s.epTotal, 0)
					s.epFirst = append(s.epFirst, p)
					s.epSpread = append(s.epSpread, false)
				}
				for _, seen := range s.eps[start:] {
					if seen == e {
						continue next
					}
				}
				s.eps = append(s.eps, e)
				s.epTotal[e]++
				if s.epFirst[e] != p {
					s.epSpread[e] = true
				}
			}
		}
		s.epOff[i+1] = int32(len(s.eps))
	}

	s.listOff, s.listIdx = s.bucket(func(c int) bool { return s.movable[c] })
	s.heldOff, s.heldIdx = s.bucket(func(c int) bool { return s.loc[c] >= 0 })
}

// bucket lists the connections keep accepts by the proxy they count on
// (a counting sort): proxy p's are idx[off[p]:off[p+1]].
func (s *state) bucket(keep func(c int) bool) (off, idx []int32) {
	off = make([]int32, len(s.proxies)+1)
	for c, p := range s.loc {
		if keep(c) {
			off[p+1]++
		}
	}
	for i := range s.proxies {
		off[i+1] += off[i]
	}
	idx = make([]int32, off[len(s.proxies)])
	next := slices.Clone(off[:len(s.proxies)])
	for c, p := range s.loc {
		if keep(c) {
			idx[next[p]] = int32(c)
			next[p]++
		}
	}
	return off, idx
}

func (s *state) endpoints(c int32) []int32 { return s.eps[s.epOff[c]:s.epOff[c+1]] }

func (s *state) list(p int32) []int32 { return s.listIdx[s.listOff[p]:s.listOff[p+1]] }

func (s *state) held(p int32) []int32 { return s.heldIdx[s.heldOff[p]:s.heldOff[p+1]] }
