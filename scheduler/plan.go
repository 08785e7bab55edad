package scheduler

import (
	"slices"
	"strings"
)

// candidates is how many receivers (the neediest first) a move considers
// for each connection. More than an endpoint set's size guarantees a
// receiver that does not put all of an endpoint's connections on one
// proxy; more than that buys little spread and costs time.
const candidates = 8

// scanConns is how many movable connections of a source a move scores
// (in id order) before settling for the best so far.
const scanConns = 64

// Plan returns the moves to make now, best first, within l. It is a pure
// function of v and l: the same inputs give the same moves in the same
// order, whatever the order of v's slices. See the package doc for the
// rules.
func Plan(v View, l Limits) []Move {
	budget := min(l.MaxPerPlan, l.MaxInFlight-len(v.InFlight))
	if budget <= 0 || l.MaxInFlightPerProxy <= 0 || len(v.Connections) == 0 {
		return nil
	}
	s := build(v, l, true)
	p := &planner{
		state:   s,
		budget:  budget,
		capLeft: make([]int32, len(s.proxies)),
		done:    make([]bool, len(s.proxies)),
		moved:   make([]bool, len(s.conns)),
		sorted:  make([]bool, len(s.proxies)),
		at:      make([]map[int32]int32, len(s.proxies)),
		blocked: make([]int, len(s.groups)),
		// Zones matter only if there are two; then a move may cross them.
		multiZone: s.zones > 1,
	}
	for i := range s.proxies {
		p.capLeft[i] = int32(l.MaxInFlightPerProxy) - s.proxies[i].involved
	}
	p.shed()
	p.fill()
	p.spread()
	return p.moves
}

type planner struct {
	*state
	budget  int
	capLeft []int32 // moves each proxy may still start or receive
	done    []bool  // source found nothing to move in this pass
	moved   []bool  // connection already moved by this plan
	sorted  []bool  // proxy's connection list is in id order
	moves   []Move
	blocked []int // per group: excess shed could not move (see shed)

	// Endpoint counts, built as needed: at[p] maps endpoint -> p's
	// connections of it; zoneFlat[e*zones+z] counts e's connections in
	// zone z when that array is small, zoneAt[z] (a map like at[p]) when
	// not. Once built they are kept current by apply.
	at       []map[int32]int32
	zoneFlat []int32
	zoneAt   []map[int32]int32
	zonesOK  bool

	multiZone bool // some group has proxies in two zones or more

	cand   []int32           // scratch: receivers for the current move
	candAt []map[int32]int32 // their endpoint counts
	sides  []side            // scratch: the connection being scored
}

// shed moves excess off overloaded, draining and over-band proxies, in
// that order, each move from the source with the most excess (ties by
// id). A move goes to a proxy under its band (deficit) if one can take
// it; to a proxy merely under hi only while its group's total excess
// exceeds its total deficit, so that no move is spent twice (once out
// of a source, once more to fill a deficit).
func (p *planner) shed() {
	var sources []int32
	for i := range p.proxies {
		if p.excess(int32(i)) > 0 {
			sources = append(sources, int32(i))
		}
	}
	for p.budget > 0 {
		best, bestRank, bestEx := int32(-1), 0, 0
		for _, i := range sources {
			ex := p.excess(i)
			if ex == 0 || p.done[i] || p.capLeft[i] <= 0 {
				continue
			}
			rank := shedRank(p.proxies[i].kind)
			if best < 0 || rank < bestRank || (rank == bestRank && ex > bestEx) {
				best, bestRank, bestEx = i, rank, ex
			}
		}
		if best < 0 {
			return
		}
		g := &p.groups[p.proxies[best].group]
		room := g.excess > g.deficit
		p.receivers(best, room)
		moved := p.moveOne(best, reasonFor(p.proxies[best].kind))
		if !moved && !room && len(p.cand) > 0 {
			// Receivers under the band could take a connection, but every
			// one would leave an endpoint on a single proxy: spread wins
			// over the minimum, and the move goes to a proxy with room.
			p.receivers(best, true)
			moved = p.moveOne(best, reasonFor(p.proxies[best].kind))
		}
		if !moved {
			p.done[best] = true
			if len(p.cand) > 0 && p.hasUnmoved(best) {
				// Every receiver would leave an endpoint on one proxy:
				// until a proxy with no such conflict has room, this
				// excess cannot leave, and fill must not wait for it.
				p.blocked[p.proxies[best].group] += p.excess(best)
			}
		}
	}
}

// hasUnmoved reports whether src still holds a movable connection that
// this plan has not moved.
func (p *planner) hasUnmoved(src int32) bool {
	for _, c := range p.list(src) {
		if !p.moved[c] {
			return true
		}
	}
	return false
}

func shedRank(k kind) int {
	switch k {
	case kindOverloaded:
		return 0
	case kindDraining:
		return 1
	}
	return 2
}

func reasonFor(k kind) string {
	switch k {
	case kindOverloaded:
		return ReasonOverloaded
	case kindDraining:
		return ReasonDrain
	}
	return ReasonBalance
}

// fill covers the deficit that excess cannot: in a group whose deficit
// exceeds its excess (less the excess shed found blocked by spread),
// eligible proxies above their target (donors) give to proxies under the
// band, the donor furthest above target first. A donor stops at its
// target, so it never falls under its own band.
func (p *planner) fill() {
	clear(p.done)
	for p.budget > 0 {
		best, bestOver := int32(-1), 0.0
		for gi := range p.groups {
			g := &p.groups[gi]
			if g.deficit <= g.excess-p.blocked[gi] {
				continue
			}
			for _, i := range g.eligible {
				q := &p.proxies[i]
				over := float64(q.count) - q.target
				if q.incoming > 0 || over <= epsilon || p.done[i] || p.capLeft[i] <= 0 {
					continue
				}
				if best < 0 || over > bestOver+epsilon || (over > bestOver-epsilon && i < best) {
					best, bestOver = i, over
				}
			}
		}
		if best < 0 {
			return
		}
		p.receivers(best, false)
		if !p.moveOne(best, ReasonBalance) {
			p.done[best] = true
		}
	}
}

// receivers fills p.cand with up to `candidates` eligible proxies of
// src's group that can take a connection: under the band first, then
// (if room) under hi, each by count/target ascending, then id.
func (p *planner) receivers(src int32, room bool) {
	p.cand = p.cand[:0]
	g := &p.groups[p.proxies[src].group]
	for _, i := range g.eligible {
		q := &p.proxies[i]
		if i == src || p.capLeft[i] <= 0 || !(q.count < q.lo || (room && q.count < q.hi)) {
			continue
		}
		if len(p.cand) == candidates && !p.better(i, p.cand[len(p.cand)-1]) {
			continue
		}
		if len(p.cand) < candidates {
			p.cand = append(p.cand, i)
		} else {
			p.cand[len(p.cand)-1] = i
		}
		for k := len(p.cand) - 1; k > 0 && p.better(p.cand[k], p.cand[k-1]); k-- {
			p.cand[k], p.cand[k-1] = p.cand[k-1], p.cand[k]
		}
	}
}

// better orders receivers: a deficit first, then the lower fill.
func (p *planner) better(a, b int32) bool {
	qa, qb := &p.proxies[a], &p.proxies[b]
	da, db := qa.count < qa.lo, qb.count < qb.lo
	if da != db {
		return da
	}
	// count/target, compared without dividing (targets are positive here).
	fa, fb := float64(qa.count)*qb.target, float64(qb.count)*qa.target
	if fa != fb {
		return fa < fb
	}
	return a < b
}

// score ranks moving connection c from src to dst; higher is better.
type score struct {
	deficit bool // dst is under its band
	proxies int  // endpoints of c held by one more proxy, minus those held by one fewer
	zones   int  // the same for zones
	pos     int  // dst's place among the receivers (lower is better)
}

func (a score) beats(b score) bool {
	switch {
	case a.deficit != b.deficit:
		return a.deficit
	case a.proxies != b.proxies:
		return a.proxies > b.proxies
	case a.zones != b.zones:
		return a.zones > b.zones
	}
	return a.pos < b.pos
}

// moveOne moves the best (connection, receiver) pair off src, scoring
// its first scanConns movable connections (id order) against p.cand. It
// reports false if there was none.
func (p *planner) moveOne(src int32, reason string) bool {
	if len(p.cand) == 0 {
		return false
	}
	// Only a drain with a single possible target may leave an endpoint
	// on one proxy: the connections have nowhere else to go.
	g := &p.groups[p.proxies[src].group]
	allow := p.proxies[src].kind == kindDraining && len(g.eligible) == 1
	c, t, _ := p.best(src, p.sortedList(src), scanConns, allow, nil)
	if c < 0 {
		return false
	}
	p.apply(c, src, t, reason)
	return true
}

// sortedList is src's movable connections in id order (sorted once).
func (p *planner) sortedList(src int32) []int32 {
	list := p.list(src)
	if !p.sorted[src] {
		slices.SortFunc(list, func(a, b int32) int { return strings.Compare(p.conns[a].ID, p.conns[b].ID) })
		p.sorted[src] = true
	}
	return list
}

// side is one endpoint of the connection being scored, with the
// source's counts of it.
type side struct{ e, proxy, zone int32 }

// scoreFrom prepares scoring moves of c off src: it fills p.sides.
func (p *planner) scoreFrom(c, src int32) {
	p.sides = p.sides[:0]
	as, zs := p.endpointsAt(src), p.proxies[src].zone
	for _, e := range p.endpoints(c) {
		sd := side{e: e, proxy: as[e]}
		if p.multiZone {
			sd.zone = p.zoneCount(e, zs)
		}
		p.sides = append(p.sides, sd)
	}
}

// scoreTo counts how moving the connection prepared by scoreFrom from
// src to dst changes the spread of its endpoints, and whether it would
// leave all of an endpoint's (two or more) connections on dst.
func (p *planner) scoreTo(src, dst int32, ad map[int32]int32) (sc score, concentrates bool) {
	zs, zd := p.proxies[src].zone, p.proxies[dst].zone
	for _, sd := range p.sides {
		cd := ad[sd.e]
		switch {
		case sd.proxy == 1 && cd > 0:
			sc.proxies--
			if cd == p.epTotal[sd.e]-1 {
				concentrates = true
			}
		case sd.proxy >= 2 && cd == 0:
			sc.proxies++
		}
		if zs != zd {
			zcd := p.zoneCount(sd.e, zd)
			switch {
			case sd.zone == 1 && zcd > 0:
				sc.zones--
			case sd.zone >= 2 && zcd == 0:
				sc.zones++
			}
		}
	}
	q := &p.proxies[dst]
	sc.deficit = q.count < q.lo
	return sc, concentrates
}

// best returns the best (connection, receiver) pair among conns (those
// not moved yet; after limit scored, only until one is found) and
// p.cand, or -1. allow lets a move leave an endpoint on one proxy.
func (p *planner) best(src int32, conns []int32, limit int, allow bool, skip func(c int32) bool) (int32, int32, score) {
	p.candAt = p.candAt[:0]
	for _, t := range p.cand {
		p.candAt = append(p.candAt, p.endpointsAt(t))
	}
	bestC, bestT, scanned := int32(-1), int32(-1), 0
	var best score
	for _, c := range conns {
		if p.moved[c] || (skip != nil && skip(c)) {
			continue
		}
		if scanned >= limit && bestC >= 0 {
			break
		}
		scanned++
		p.scoreFrom(c, src)
		for pos, t := range p.cand {
			sc, concentrates := p.scoreTo(src, t, p.candAt[pos])
			if concentrates && !allow {
				continue
			}
			sc.pos = pos
			if bestC < 0 || sc.beats(best) {
				bestC, bestT, best = c, t, sc
			}
		}
	}
	return bestC, bestT, best
}

// endpointsAt returns proxy i's connections per endpoint.
func (p *planner) endpointsAt(i int32) map[int32]int32 {
	if m := p.at[i]; m != nil {
		return m
	}
	m := make(map[int32]int32, p.heldOff[i+1]-p.heldOff[i])
	for _, c := range p.held(i) {
		if p.loc[c] == i { // not moved away by this plan
			for _, e := range p.endpoints(c) {
				m[e]++
			}
		}
	}
	p.at[i] = m
	return m
}

// maxZoneFlat bounds the endpoint × zone array (4 MiB); past it zone
// counts are maps built per zone as needed.
const maxZoneFlat = 1 << 20

// zoneCount is endpoint e's connections in zone z.
func (p *planner) zoneCount(e, z int32) int32 {
	p.ensureZones()
	if p.zoneFlat != nil {
		return p.zoneFlat[int(e)*p.zones+int(z)]
	}
	return p.zoneAtOf(z)[e]
}

func (p *planner) ensureZones() {
	if p.zonesOK {
		return
	}
	p.zonesOK = true
	if len(p.epNames)*p.zones > maxZoneFlat {
		p.zoneAt = make([]map[int32]int32, p.zones)
		return
	}
	p.zoneFlat = make([]int32, len(p.epNames)*p.zones)
	for c, at := range p.loc {
		if at >= 0 {
			z := int(p.proxies[at].zone)
			for _, e := range p.endpoints(int32(c)) {
				p.zoneFlat[int(e)*p.zones+z]++
			}
		}
	}
}

func (p *planner) zoneAtOf(z int32) map[int32]int32 {
	if m := p.zoneAt[z]; m != nil {
		return m
	}
	m := map[int32]int32{}
	for i := range p.proxies {
		if p.proxies[i].zone != z {
			continue
		}
		for _, c := range p.held(int32(i)) {
			if p.loc[c] == int32(i) {
				for _, e := range p.endpoints(c) {
					m[e]++
				}
			}
		}
	}
	p.zoneAt[z] = m
	return m
}

// apply records the move of c from src to dst and updates every count
// the next choice depends on.
func (p *planner) apply(c, src, dst int32, reason string) {
	gs, gd := &p.groups[p.proxies[src].group], &p.groups[p.proxies[dst].group]
	gs.excess -= p.excess(src)
	gs.deficit -= p.deficit(src)
	gd.excess -= p.excess(dst)
	gd.deficit -= p.deficit(dst)
	p.proxies[src].count--
	p.proxies[dst].count++
	gs.excess += p.excess(src)
	gs.deficit += p.deficit(src)
	gd.excess += p.excess(dst)
	gd.deficit += p.deficit(dst)

	// Build the maps before the move so that they see it exactly once.
	as, ad := p.endpointsAt(src), p.endpointsAt(dst)
	zs, zd := p.proxies[src].zone, p.proxies[dst].zone
	var mzs, mzd map[int32]int32
	if zs != zd {
		p.ensureZones()
		if p.zoneFlat == nil {
			mzs, mzd = p.zoneAtOf(zs), p.zoneAtOf(zd)
		}
	}
	for _, e := range p.endpoints(c) {
		if as[e]--; as[e] == 0 {
			delete(as, e)
		}
		ad[e]++
		switch {
		case zs == zd:
		case p.zoneFlat != nil:
			p.zoneFlat[int(e)*p.zones+int(zs)]--
			p.zoneFlat[int(e)*p.zones+int(zd)]++
		default:
			mzs[e]--
			mzd[e]++
		}
	}
	p.loc[c] = dst
	p.moved[c] = true
	p.capLeft[src]--
	p.capLeft[dst]--
	p.budget--
	p.moves = append(p.moves, Move{ConnectionID: p.conns[c].ID, From: p.proxies[src].id, To: p.proxies[dst].id, Reason: reason})
}

// spread gives each endpoint that has two or more connections, all on
// one eligible proxy, a second proxy, when another eligible proxy of the
// group has room: the source stays at or above lo and the receiver at or
// below hi, so balance stays within the band. One move per endpoint, in
// endpoint name order, within what is left of the budget.
func (p *planner) spread() {
	if p.budget <= 0 {
		return
	}
	var stuck []int32
	for e, spread := range p.epSpread {
		if spread || p.epTotal[e] < 2 {
			continue
		}
		if q := &p.proxies[p.epFirst[e]]; q.kind == kindEligible && len(p.groups[q.group].eligible) > 1 {
			stuck = append(stuck, int32(e))
		}
	}
	if len(stuck) == 0 {
		return
	}
	slices.SortFunc(stuck, func(a, b int32) int { return strings.Compare(p.epNames[a], p.epNames[b]) })
	// Bound the work on endpoints that find no receiver.
	tries := 4*p.budget + 16
	for _, e := range stuck {
		if p.budget <= 0 || tries <= 0 {
			return
		}
		src := p.epFirst[e]
		q := &p.proxies[src]
		if p.capLeft[src] <= 0 || q.count-1 < q.lo || q.incoming > 0 {
			continue
		}
		if p.endpointsAt(src)[e] != p.epTotal[e] {
			continue // an earlier move spread it
		}
		tries--
		p.receivers(src, true) // all under hi: they stay within the band
		p.moveEndpoint(e, src)
	}
}

// moveEndpoint moves one connection of e off src to the best receiver.
func (p *planner) moveEndpoint(e, src int32) {
	if len(p.cand) == 0 {
		return
	}
	list := p.sortedList(src)
	c, t, best := p.best(src, list, len(list), false, func(c int32) bool {
		return !slices.Contains(p.endpoints(c), e)
	})
	if c >= 0 && best.proxies > 0 {
		p.apply(c, src, t, ReasonSpread)
	}
}
