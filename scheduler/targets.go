package scheduler

import "math"

// Targets returns each eligible proxy's weighted target connection count
// (what "balanced" means), for status displays. Eligible proxies are the
// possible targets: ACTIVE, fresh, out of back-off and not overloaded.
func Targets(v View, l Limits) map[string]float64 {
	s := build(v, l, false)
	out := make(map[string]float64, len(s.proxies))
	for i := range s.proxies {
		if p := &s.proxies[i]; p.kind == kindEligible {
			out[p.id] = p.target
		}
	}
	return out
}

// Imbalance is, over eligible proxies, the largest distance between a
// proxy's connection count and its target, divided by the target, for
// metrics. The distance is measured from the nearest whole number of
// connections the target allows (floor or ceil of the target), so a
// cluster that is as balanced as whole connections permit reports 0 (two
// proxies holding 2 and 1 are balanced). Values up to about the band are
// within hysteresis and draw no moves.
func Imbalance(v View, l Limits) float64 {
	s := build(v, l, false)
	worst := 0.0
	for i := range s.proxies {
		p := &s.proxies[i]
		if p.kind != kindEligible || p.target <= 0 {
			continue
		}
		c := float64(p.count)
		d := 0.0
		if lo := math.Floor(p.target + epsilon); c < lo {
			d = lo - c
		} else if hi := math.Ceil(p.target - epsilon); c > hi {
			d = c - hi
		}
		worst = max(worst, d/p.target)
	}
	return worst
}
