package scheduler

import (
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestPlan(t *testing.T) {
	def := DefaultLimits()
	young := func(cs []ConnView) []ConnView {
		for i := range cs {
			cs[i].OpenedAt = t0.Add(-time.Second)
		}
		return cs
	}
	cooling := func(cs []ConnView) []ConnView {
		for i := range cs {
			cs[i].LastMovedAt = t0.Add(-time.Minute)
		}
		return cs
	}
	moving := func(cs []ConnView) []ConnView {
		for i := range cs {
			cs[i].Moving = true
		}
		return cs
	}
	stale := px("d")
	stale.Fresh = false
	backoff := px("e")
	backoff.BackoffUntil = t0.Add(time.Second)
	hot := px("g")
	hot.CPUMillicores = 2000
	withLimit := def
	withLimit.CPULimitMillicores = 1000

	tests := []struct {
		name  string
		v     View
		l     Limits
		check func(t *testing.T, v View, moves []Move)
	}{
		{
			name:  "empty cluster",
			v:     View{Now: t0},
			l:     def,
			check: wantMoves(0),
		},
		{
			name:  "proxies without connections",
			v:     view([]ProxyView{px("a"), px("b")}),
			l:     def,
			check: wantMoves(0),
		},
		{
			name:  "balanced",
			v:     view([]ProxyView{px("a"), px("b"), px("c")}, conns("a", 10), conns("b", 10), conns("c", 10)),
			l:     def,
			check: wantMoves(0),
		},
		{
			name:  "within the band",
			v:     view([]ProxyView{px("a"), px("b")}, conns("a", 105), conns("b", 95)),
			l:     def,
			check: wantMoves(0),
		},
		{
			name:  "2 vs 1 is not chased",
			v:     view([]ProxyView{px("a"), px("b")}, conns("a", 2), conns("b", 1)),
			l:     def,
			check: wantMoves(0),
		},
		{
			name:  "2 vs 1 is not chased with no band",
			v:     view([]ProxyView{px("a"), px("b")}, conns("a", 2), conns("b", 1)),
			l:     func() Limits { l := def; l.Band = 0; return l }(),
			check: wantMoves(0),
		},
		{
			name:  "3 vs 1 is corrected with no band",
			v:     view([]ProxyView{px("a"), px("b")}, conns("a", 3), conns("b", 1)),
			l:     func() Limits { l := def; l.Band = 0; return l }(),
			check: wantMoves(1),
		},
		{
			name: "cordoned, unhealthy, stale, back-off, down and overloaded proxies are never targets",
			v: view([]ProxyView{px("a"), px("b").status(cordoned), px("c").status(unhealthy), stale, backoff,
				px("f").status(down), hot, px("h")}, conns("a", 40)),
			l: withLimit,
			check: func(t *testing.T, v View, moves []Move) {
				if len(moves) == 0 {
					t.Fatal("no moves")
				}
				for _, m := range moves {
					if m.To != "h" || m.From != "a" || m.Reason != ReasonBalance {
						t.Errorf("move %+v, want a -> h for balance", m)
					}
				}
			},
		},
		{
			name: "cordoned and unhealthy proxies are left alone",
			v: view([]ProxyView{px("a").status(cordoned), px("b").status(unhealthy), px("c")},
				conns("a", 50), conns("b", 50)),
			l:     def,
			check: wantMoves(0),
		},
		{
			name: "a proxy in back-off or stale keeps its connections",
			v:    view([]ProxyView{backoff, stale, px("c")}, conns("e", 50), conns("d", 50)),
			l:    def,
			check: func(t *testing.T, v View, moves []Move) {
				wantMoves(0)(t, v, moves)
				if got := Targets(v, def); len(got) != 1 || got["c"] != 100 {
					t.Errorf("Targets = %v, want c: 100", got)
				}
			},
		},
		{
			name: "overloaded sheds first",
			v: view([]ProxyView{px("a"), hot, px("c"), px("d")},
				conns("a", 40), conns("g", 30), conns("c", 0)),
			l: func() Limits { l := withLimit; l.MaxPerPlan = 3; return l }(),
			check: func(t *testing.T, v View, moves []Move) {
				if len(moves) != 3 {
					t.Fatalf("%d moves, want 3", len(moves))
				}
				for _, m := range moves {
					if m.From != "g" || m.Reason != ReasonOverloaded {
						t.Errorf("move %+v, want from g for overload", m)
					}
				}
			},
		},
		{
			name: "an overloaded proxy sheds to the lower edge of its share",
			v:    view([]ProxyView{px("a"), hot, px("c")}, conns("a", 30), conns("g", 30), conns("c", 30)),
			l:    func() Limits { l := withLimit; l.MaxPerPlan = 100; l.MaxInFlightPerProxy = 100; return l }(),
			check: func(t *testing.T, v View, moves []Move) {
				// share 30, floor(30 × 0.9) = 27: three moves.
				if len(moves) != 3 {
					t.Fatalf("moves %v, want 3", moves)
				}
				for _, m := range moves {
					if m.From != "g" || m.Reason != ReasonOverloaded {
						t.Errorf("move %+v", m)
					}
				}
			},
		},
		{
			name:  "young, cooling and moving connections stay",
			v:     view([]ProxyView{px("a"), px("b")}, young(conns("a", 10)), cooling(conns("a", 10)[5:]), moving(conns("a", 20)[15:])),
			l:     def,
			check: wantMoves(0),
		},
		{
			name: "only movable connections move",
			v: view([]ProxyView{px("a"), px("b")}, young(conns("a", 5)), cooling(conns("a", 10)[5:]),
				moving(conns("a", 15)[10:]), conns("a", 20)[15:]),
			l: def,
			check: func(t *testing.T, v View, moves []Move) {
				want := []string{"a-c015", "a-c016", "a-c017", "a-c018", "a-c019"}
				var got []string
				for _, m := range moves {
					got = append(got, m.ConnectionID)
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Errorf("moved %v, want %v", got, want)
				}
			},
		},
		{
			name: "per-proxy cap counts moves in flight",
			v: func() View {
				v := view([]ProxyView{px("a"), px("b"), px("c")}, conns("a", 60))
				for i := range 6 {
					v.Connections[i].Moving = true
					v.InFlight = append(v.InFlight, InFlight{ConnectionID: v.Connections[i].ID, From: "a", To: "b"})
				}
				return v
			}(),
			l: def,
			check: func(t *testing.T, v View, moves []Move) {
				// a is in 6 of its 8 moves: two more, to c, the emptier
				// (b counts the 6 arriving).
				if len(moves) != 2 || moves[0].To != "c" || moves[1].To != "c" {
					t.Fatalf("moves %v, want 2 to c", moves)
				}
			},
		},
		{
			name: "a target's cap counts moves in flight",
			v: func() View {
				v := view([]ProxyView{px("a"), px("b"), px("c"), px("d")}, conns("a", 30), conns("b", 30), conns("c", 30))
				for i := range 8 {
					v.Connections[i].Moving = true
					v.InFlight = append(v.InFlight, InFlight{ConnectionID: v.Connections[i].ID, From: "a", To: "d"})
				}
				return v
			}(),
			l:     def,
			check: wantMoves(0), // d may take no more; a may give no more; b and c are within the band
		},
		{
			name: "global cap counts moves in flight",
			v: func() View {
				v := view([]ProxyView{px("a"), px("b"), px("c"), px("d")}, conns("a", 100))
				for range 3 {
					v.InFlight = append(v.InFlight, InFlight{ConnectionID: "gone", From: "x", To: "y"})
				}
				return v
			}(),
			l:     func() Limits { l := def; l.MaxInFlight = 5; return l }(),
			check: wantMoves(2),
		},
		{
			name: "moves in flight count at their target",
			v: func() View {
				v := view([]ProxyView{px("a"), px("b")}, conns("a", 20))
				for i := range 10 {
					v.Connections[i].Moving = true
					v.InFlight = append(v.InFlight, InFlight{ConnectionID: v.Connections[i].ID, From: "a", To: "b"})
				}
				return v
			}(),
			l:     func() Limits { l := def; l.MaxInFlightPerProxy = 100; return l }(),
			check: wantMoves(0),
		},
		{
			name: "memory over the limit sheds",
			v: func() View {
				fat := px("a")
				fat.MemoryBytes = 2 << 30
				return view([]ProxyView{fat, px("b")}, conns("a", 10), conns("b", 10))
			}(),
			l: func() Limits { l := def; l.MemoryLimitBytes = 1 << 30; return l }(),
			check: func(t *testing.T, v View, moves []Move) {
				// a's share is 10 and its shed floor 9; b, the only
				// eligible proxy, has target 20.
				if len(moves) != 1 || moves[0].From != "a" || moves[0].Reason != ReasonOverloaded {
					t.Errorf("moves %+v, want one overloaded move off a", moves)
				}
			},
		},
		{
			name: "cross-region off keeps regions apart",
			v: view([]ProxyView{px("a"), px("b"), px("c").in("r2", "z1")},
				conns("a", 20), conns("c", 0)),
			l: def,
			check: func(t *testing.T, v View, moves []Move) {
				if len(moves) != 8 {
					t.Errorf("%d moves, want 8 (a's cap)", len(moves))
				}
				for _, m := range moves {
					if m.To != "b" {
						t.Errorf("move %+v leaves region r1", m)
					}
				}
			},
		},
		{
			name: "cross-region on balances across",
			v: view([]ProxyView{px("a"), px("b"), px("c").in("r2", "z1")},
				conns("a", 21)),
			l: func() Limits { l := def; l.CrossRegion = true; l.MaxInFlightPerProxy = 100; return l }(),
			check: func(t *testing.T, v View, moves []Move) {
				to := map[string]int{}
				for _, m := range moves {
					to[m.To]++
				}
				// targets 7 each, lo = floor(6.3) = 6, hi = ceil(7.7) = 8.
				if to["b"] < 6 || to["c"] < 6 || len(moves) != 13 {
					t.Errorf("moves to %v (%d), want b and c at least 6, 13 in all", to, len(moves))
				}
			},
		},
		{
			name: "spread: an endpoint on one proxy gets a second, in another zone",
			v: view([]ProxyView{px("a"), px("b"), px("c").in("r1", "z2")},
				conns("a", 4, "pay"), conns("a", 10)[4:], conns("b", 10), conns("c", 10)),
			l: def,
			check: func(t *testing.T, v View, moves []Move) {
				if len(moves) != 1 || moves[0].Reason != ReasonSpread || moves[0].To != "c" {
					t.Fatalf("moves %+v, want one spread move to c", moves)
				}
				if !strings.HasPrefix(moves[0].ConnectionID, "a-c00") {
					t.Errorf("moved %s, not a pay connection", moves[0].ConnectionID)
				}
			},
		},
		{
			name: "spread does not push a proxy out of the band",
			v: view([]ProxyView{px("a"), px("b")},
				conns("a", 4, "pay"), conns("a", 9)[4:], conns("b", 11)),
			l:     def,
			check: wantMoves(0), // target 10: a at lo 9, b at hi 11
		},
		{
			name: "balance moves prefer a receiver without the endpoint",
			v: view([]ProxyView{px("a"), px("b"), px("c").in("r1", "z2")},
				conns("a", 30, "x"), conns("b", 2, "x"), conns("c", 2, "y")),
			l: def,
			check: func(t *testing.T, v View, moves []Move) {
				// b and c are both under the band; c holds no x and is in
				// another zone, so it comes first.
				if len(moves) == 0 || moves[0].To != "c" {
					t.Errorf("moves %+v, want the first to c", moves)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			moves := Plan(tt.v, tt.l)
			checkPlan(t, tt.v, tt.l, moves)
			tt.check(t, tt.v, moves)
		})
	}
}

func wantMoves(n int) func(*testing.T, View, []Move) {
	return func(t *testing.T, _ View, moves []Move) {
		t.Helper()
		if len(moves) != n {
			t.Errorf("%d moves %+v, want %d", len(moves), moves, n)
		}
	}
}

// TestConverge runs rounds (each plan applied fully, the clock past the
// cool-down) and checks where they end and how many moves it took.
func TestConverge(t *testing.T) {
	def := DefaultLimits()
	tests := []struct {
		name      string
		v         View
		l         Limits
		wantMoves int            // exact total; the documented minimum
		wantCount map[string]int // exact final counts, if given
		maxRounds int
	}{
		{
			name:      "weights 1:2",
			v:         view([]ProxyView{px("a").weight(1), px("b").weight(2)}, conns("a", 30)),
			l:         def,
			wantMoves: 19, // a: target 10, hi 11 (excess 19); b: target 20, lo 18
			wantCount: map[string]int{"a": 11, "b": 19},
			maxRounds: 4,
		},
		{
			name:      "weight 0 counts as 1",
			v:         view([]ProxyView{px("a").weight(0), px("b").weight(1)}, conns("a", 20)),
			l:         def,
			wantMoves: 9,
			wantCount: map[string]int{"a": 11, "b": 9},
			maxRounds: 3,
		},
		{
			name:      "scale-out 2 to 3",
			v:         view([]ProxyView{px("a"), px("b"), px("c")}, conns("a", 100), conns("b", 100)),
			l:         def,
			wantMoves: 60, // target 66.7, lo 60: c gets 60 (a and b shed 26 each above hi 74, then give 4 more each)
			wantCount: map[string]int{"a": 70, "b": 70, "c": 60},
			maxRounds: 9,
		},
		{
			name:      "scale-out 3 to 4",
			v:         view([]ProxyView{px("a"), px("b"), px("c"), px("d")}, conns("a", 100), conns("b", 100), conns("c", 100)),
			l:         def,
			wantMoves: 67, // target 75, lo 67
			maxRounds: 10,
		},
		{
			name: "drain over several rounds",
			v: view([]ProxyView{px("a"), px("b"), px("c").status(draining)},
				conns("a", 20), conns("b", 20), conns("c", 20)),
			l:         func() Limits { l := def; l.MaxPerPlan = 5; return l }(),
			wantMoves: 20,
			wantCount: map[string]int{"a": 30, "b": 30},
			maxRounds: 5,
		},
		{
			name: "drain into the only eligible proxy",
			v: view([]ProxyView{px("a"), px("c").status(draining)},
				conns("a", 3, "x"), conns("c", 3, "x")),
			l:         def,
			wantMoves: 3,
			wantCount: map[string]int{"a": 6},
			maxRounds: 2,
		},
		{
			name:      "an endpoint is never left on one proxy",
			v:         view([]ProxyView{px("a"), px("b")}, conns("a", 19), []ConnView{{ID: "ax", ProxyID: "a", Endpoints: []string{"x"}}, {ID: "bx", ProxyID: "b", Endpoints: []string{"x"}}}),
			l:         def,
			wantMoves: 8, // N 21, target 10.5, hi 12, lo 9
			maxRounds: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m0 := newModel(tt.v, tt.l)
			end, moves, rounds := converge(t, tt.v, tt.l, tt.maxRounds+1)
			checkBalanced(t, tt.name, end, tt.l)
			if got := m0.minMoves(); got != tt.wantMoves {
				t.Errorf("model minimum %d, want %d", got, tt.wantMoves)
			}
			if len(moves) != tt.wantMoves {
				t.Errorf("%d moves, want %d", len(moves), tt.wantMoves)
			}
			if rounds > tt.maxRounds {
				t.Errorf("%d rounds, want at most %d", rounds, tt.maxRounds)
			}
			got := counts(end)
			for id, n := range tt.wantCount {
				if got[id] != n {
					t.Errorf("%s holds %d, want %d (all: %v)", id, got[id], n, got)
				}
			}
			if len(concentrated(end)) > len(concentrated(tt.v)) && len(tt.v.Proxies) > 2 {
				t.Errorf("endpoints concentrated: %v", concentrated(end))
			}
			for _, m := range moves {
				if m.ConnectionID == "ax" {
					t.Errorf("moved ax onto the proxy holding x's other connection")
				}
			}
		})
	}
}

func TestPlanDrainRespectsLimits(t *testing.T) {
	l := DefaultLimits()
	l.MaxPerPlan, l.MaxInFlightPerProxy = 6, 4
	v := view([]ProxyView{px("a"), px("b"), px("c"), px("d").status(draining)},
		conns("a", 10), conns("b", 10), conns("c", 10), conns("d", 30))
	for round := 0; ; round++ {
		moves := Plan(v, l)
		checkPlan(t, v, l, moves)
		if len(moves) == 0 {
			break
		}
		if round > 10 {
			t.Fatal("drain does not finish")
		}
		for _, m := range moves {
			if m.From != "d" || m.Reason != ReasonDrain {
				t.Errorf("round %d: move %+v, want a drain from d", round, m)
			}
		}
		if len(moves) > 4 {
			t.Errorf("round %d: %d moves leave d, cap 4", round, len(moves))
		}
		v = applyPlan(v, l, moves)
	}
	if got := counts(v); got["d"] != 0 || got["a"] != 20 || got["b"] != 20 || got["c"] != 20 {
		t.Errorf("counts %v", got)
	}
}

// A draining proxy's last connection serves x, whose other connection is
// on b, the only proxy under its band; c, the only other receiver, is
// full. Moving it to b would leave x on one proxy, so fill must make room
// on c first instead of waiting for the blocked drain forever.
func TestPlanDrainBlockedBySpread(t *testing.T) {
	l := DefaultLimits()
	l.Band = 0
	v := view([]ProxyView{px("b"), px("c"), px("d").status(draining)},
		conns("b", 3), []ConnView{{ID: "bx", ProxyID: "b", Endpoints: []string{"x"}}}, conns("c", 6),
		[]ConnView{{ID: "dx", ProxyID: "d", Endpoints: []string{"x"}}})
	end, moves, rounds := converge(t, v, l, 5)
	checkBalanced(t, "blocked drain", end, l)
	if got := counts(end); got["d"] != 0 || got["b"] != 5 || got["c"] != 6 {
		t.Errorf("counts %v after %d rounds, moves %+v", got, rounds, moves)
	}
	if len(concentrated(end)) != 0 {
		t.Errorf("endpoints concentrated: %v", concentrated(end))
	}
	if len(moves) != 2 {
		t.Errorf("%d moves, want 2 (one fill from c to b, then the drain to c): %+v", len(moves), moves)
	}
}

// Two moves to c were accepted, but their old connections still carry a
// long-lived stream each. c holds 2 of 12 live connections; the old ones
// must not count there a second time, or c looks as full as its band and
// the scale-out stops short.
func TestPlanAcceptedMovesDoNotCountTwice(t *testing.T) {
	l := DefaultLimits()
	old := conns("a", 6)
	old[0].Moving, old[1].Moving = true, true
	v := view([]ProxyView{px("a"), px("b"), px("c")}, old, conns("b", 5), conns("c", 2))
	v.InFlight = []InFlight{{ConnectionID: "a-c000", From: "a", To: "c", Accepted: true}, {ConnectionID: "a-c001", From: "a", To: "c", Accepted: true}}
	moves := Plan(v, l)
	checkPlan(t, v, l, moves)
	// a holds 4 live connections, b 5, c 2: N is 11, lo 3, so c lacks one.
	if len(moves) != 1 || moves[0].To != "c" || moves[0].From != "b" {
		t.Errorf("moves %+v, want one from b to c", moves)
	}
}

func TestPlanIsDeterministic(t *testing.T) {
	l := DefaultLimits()
	l.MaxPerPlan = 200
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		v, _ := randomCluster(rng, 30, 1500)
		want := Plan(v, l)
		for range 3 {
			s := shuffled(rng, v)
			if got := Plan(s, l); !slices.Equal(got, want) {
				t.Fatalf("seed %d: the order of the view changes the plan:\n%v\n%v", seed, got, want)
			}
		}
	}
}

func shuffled(rng *rand.Rand, v View) View {
	v.Proxies = slices.Clone(v.Proxies)
	v.Connections = slices.Clone(v.Connections)
	rng.Shuffle(len(v.Proxies), func(i, j int) { v.Proxies[i], v.Proxies[j] = v.Proxies[j], v.Proxies[i] })
	rng.Shuffle(len(v.Connections), func(i, j int) {
		v.Connections[i], v.Connections[j] = v.Connections[j], v.Connections[i]
	})
	return v
}

func TestTargetsAndImbalance(t *testing.T) {
	l := DefaultLimits()
	tests := []struct {
		name      string
		v         View
		targets   map[string]float64
		imbalance float64
	}{
		{"empty", View{}, map[string]float64{}, 0},
		{"weights", view([]ProxyView{px("a").weight(1), px("b").weight(2)}, conns("a", 10), conns("b", 20)),
			map[string]float64{"a": 10, "b": 20}, 0},
		{"2 vs 1 is balanced", view([]ProxyView{px("a"), px("b")}, conns("a", 2), conns("b", 1)),
			map[string]float64{"a": 1.5, "b": 1.5}, 0},
		{"a new proxy", view([]ProxyView{px("a"), px("b")}, conns("a", 20)),
			map[string]float64{"a": 10, "b": 10}, 1},
		{"draining and cordoned count but are not targets",
			view([]ProxyView{px("a"), px("b").status(draining), px("c").status(cordoned), px("d").status(down)},
				conns("a", 10), conns("b", 10), conns("c", 10), conns("d", 10)),
			map[string]float64{"a": 30}, 20.0 / 30},
		{"regions apart", view([]ProxyView{px("a"), px("b").in("r2", "z")}, conns("a", 10), conns("b", 30)),
			map[string]float64{"a": 10, "b": 30}, 0},
		{"in-flight moves count at their target",
			View{Now: t0, Proxies: []ProxyView{px("a"), px("b")}, Connections: conns("a", 10),
				InFlight: []InFlight{{"a-c000", "a", "b", false}, {"a-c001", "a", "b", false}, {"a-c002", "a", "b", false}, {"a-c003", "a", "b", false}, {"a-c004", "a", "b", false}}},
			map[string]float64{"a": 5, "b": 5}, 0},
		{"an accepted move's old connection counts nowhere",
			View{Now: t0, Proxies: []ProxyView{px("a"), px("b")}, Connections: append(conns("a", 10), conns("b", 2)...),
				InFlight: []InFlight{{"a-c000", "a", "b", true}, {"a-c001", "a", "b", true}}},
			map[string]float64{"a": 5, "b": 5}, 0.6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Targets(tt.v, l); !mapsEqual(got, tt.targets) {
				t.Errorf("Targets = %v, want %v", got, tt.targets)
			}
			if got := Imbalance(tt.v, l); got < tt.imbalance-1e-9 || got > tt.imbalance+1e-9 {
				t.Errorf("Imbalance = %v, want %v", got, tt.imbalance)
			}
		})
	}
	// Cross-region pools both regions.
	v := view([]ProxyView{px("a"), px("b").in("r2", "z")}, conns("a", 10), conns("b", 30))
	l.CrossRegion = true
	if got := Targets(v, l); !mapsEqual(got, map[string]float64{"a": 20, "b": 20}) {
		t.Errorf("cross-region Targets = %v", got)
	}
}

func mapsEqual(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		if y, ok := b[k]; !ok || x-y > 1e-9 || y-x > 1e-9 {
			return false
		}
	}
	return true
}

func TestLimits(t *testing.T) {
	if err := DefaultLimits().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	bad := []struct {
		name string
		mod  func(*Limits)
	}{
		{"band negative", func(l *Limits) { l.Band = -0.1 }},
		{"band 1", func(l *Limits) { l.Band = 1 }},
		{"no moves in flight", func(l *Limits) { l.MaxInFlight = 0 }},
		{"no moves per proxy", func(l *Limits) { l.MaxInFlightPerProxy = 0 }},
		{"no moves per plan", func(l *Limits) { l.MaxPerPlan = 0 }},
		{"negative cool-down", func(l *Limits) { l.CoolDown = -1 }},
		{"negative min age", func(l *Limits) { l.MinAge = -1 }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			l := DefaultLimits()
			tt.mod(&l)
			if err := l.Validate(); !errors.Is(err, ErrInvalidLimits) {
				t.Errorf("Validate() = %v, want ErrInvalidLimits", err)
			}
		})
	}
	t.Run("flags", func(t *testing.T) {
		l := DefaultLimits()
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		fs.SetOutput(io.Discard)
		l.RegisterFlags(fs)
		err := fs.Parse([]string{"--rebalance-band=0.2", "--max-moves-in-flight=10", "--max-moves-in-flight-per-proxy=3",
			"--max-moves-per-plan=4", "--move-cool-down=1m", "--move-min-age=5s", "--rebalance-cross-region",
			"--shed-cpu-millicores=1500", "--shed-memory-bytes=1000000"})
		if err != nil {
			t.Fatal(err)
		}
		want := Limits{Band: 0.2, MaxInFlight: 10, MaxInFlightPerProxy: 3, MaxPerPlan: 4, CoolDown: time.Minute,
			MinAge: 5 * time.Second, CrossRegion: true, CPULimitMillicores: 1500, MemoryLimitBytes: 1000000}
		if l != want {
			t.Errorf("parsed %+v, want %+v", l, want)
		}
		if err := fs.Parse([]string{"--shed-cpu-millicores=5000000000"}); err == nil {
			t.Error("a CPU limit over 32 bits parsed")
		}
	})
	t.Run("zero limits plan nothing", func(t *testing.T) {
		v := view([]ProxyView{px("a"), px("b")}, conns("a", 10))
		if got := Plan(v, Limits{}); len(got) != 0 {
			t.Errorf("Plan with zero limits = %v", got)
		}
	})
}
