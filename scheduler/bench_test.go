package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// benchCluster is 1,000 proxies in one region and three zones holding
// 100,000 connections at random (so some proxies are out of the band),
// with one new empty proxy and one draining proxy, endpoints of 1-2 per
// connection over 20,000 names.
func benchCluster() View {
	rng := rand.New(rand.NewPCG(1, 2))
	const nProxies, nConns = 1000, 100000
	v := View{Now: t0}
	for i := range nProxies {
		p := ProxyView{ID: fmt.Sprintf("proxy-%04d", i), Region: "eu", Zone: fmt.Sprintf("eu-%d", i%3),
			Weight: 1, Status: active, Fresh: true, CPUMillicores: 300}
		if i == 0 {
			p.Status = draining
		}
		v.Proxies = append(v.Proxies, p)
	}
	for i := range nConns {
		p := 1 + rng.IntN(nProxies-2) // proxy-0999 is new and empty
		if i < 100 {
			p = 0
		}
		c := ConnView{ID: fmt.Sprintf("conn-%06d", i), ProxyID: v.Proxies[p].ID, OpenedAt: t0.Add(-time.Hour)}
		for range 1 + rng.IntN(2) {
			c.Endpoints = append(c.Endpoints, fmt.Sprintf("endpoint-%05d", rng.IntN(20000)))
		}
		v.Connections = append(v.Connections, c)
	}
	return v
}

func BenchmarkPlan(b *testing.B) {
	v := benchCluster()
	l := DefaultLimits()
	b.ReportAllocs()
	var moves []Move
	for b.Loop() {
		moves = Plan(v, l)
	}
	b.ReportMetric(float64(len(moves)), "moves")
}

func BenchmarkTargets(b *testing.B) {
	v := benchCluster()
	l := DefaultLimits()
	b.ReportAllocs()
	for b.Loop() {
		Targets(v, l)
	}
}

func BenchmarkImbalance(b *testing.B) {
	v := benchCluster()
	l := DefaultLimits()
	b.ReportAllocs()
	for b.Loop() {
		Imbalance(v, l)
	}
}

// TestPlanFast checks the budget the brief sets (100 ms on 1,000 proxies
// and 100,000 connections) with a wide margin for shared CI machines and
// the race detector; the benchmark gives the real number.
func TestPlanFast(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 100,000 connection view")
	}
	v := benchCluster()
	l := DefaultLimits()
	start := time.Now()
	moves := Plan(v, l)
	took := time.Since(start)
	checkPlan(t, v, l, moves)
	if len(moves) != l.MaxPerPlan {
		t.Errorf("%d moves, want %d", len(moves), l.MaxPerPlan)
	}
	t.Logf("Plan: %v, %d moves", took, len(moves))
	if limit := time.Second * raceSlowdown; took > limit {
		t.Errorf("Plan took %v, want under %v", took, limit)
	}
}
