package ring

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

const (
	I  = Idle
	C  = Connecting
	R  = Ready
	TF = TransientFailure
)

func TestStateString(t *testing.T) {
	for _, tc := range []struct {
		s    State
		want string
	}{
		{Idle, "IDLE"},
		{Connecting, "CONNECTING"},
		{Ready, "READY"},
		{TransientFailure, "TRANSIENT_FAILURE"},
		{State(7), "State(7)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("State(%d).String() = %q, want %q", int(tc.s), got, tc.want)
		}
	}
}

func TestStateProto(t *testing.T) {
	for _, s := range []State{Idle, Connecting, Ready, TransientFailure} {
		t.Run(s.String(), func(t *testing.T) {
			p := s.ToProto()
			if p == berthv1.ConnectivityState_CONNECTIVITY_STATE_UNSPECIFIED {
				t.Fatalf("ToProto() = UNSPECIFIED")
			}
			if p.String() != "CONNECTIVITY_STATE_"+s.String() {
				t.Errorf("ToProto() = %v", p)
			}
			got, err := FromProto(p)
			if err != nil || got != s {
				t.Errorf("FromProto(%v) = %v, %v; want %v", p, got, err, s)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		if p := State(9).ToProto(); p != berthv1.ConnectivityState_CONNECTIVITY_STATE_UNSPECIFIED {
			t.Errorf("State(9).ToProto() = %v, want UNSPECIFIED", p)
		}
		for _, p := range []berthv1.ConnectivityState{
			berthv1.ConnectivityState_CONNECTIVITY_STATE_UNSPECIFIED,
			berthv1.ConnectivityState(42),
		} {
			s, err := FromProto(p)
			if !errors.Is(err, ErrUnknownState) || s != TransientFailure {
				t.Errorf("FromProto(%v) = %v, %v; want TRANSIENT_FAILURE, ErrUnknownState", p, s, err)
			}
		}
	})
}

func TestAggregate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		states []State
		want   State
	}{
		// Rule 6 with nothing to aggregate: no target can serve.
		{"no targets", nil, TF},
		{"one ready", []State{R}, R},
		{"one connecting", []State{C}, C},
		{"one idle", []State{I}, I},
		// Not "two or more", not "among several": falls through to rule 6.
		{"one transient failure alone", []State{TF}, TF},

		// Rule 1 beats everything.
		{"ready among failures", []State{TF, TF, TF, R}, R},
		{"ready among all kinds", []State{I, C, TF, TF, R}, R},

		// Rule 2 beats CONNECTING and IDLE.
		{"two failures", []State{TF, TF}, TF},
		{"two failures and connecting", []State{TF, C, TF}, TF},
		{"two failures and idle", []State{I, TF, TF, I}, TF},

		// Rule 3.
		{"connecting and idle", []State{I, C, I}, C},
		{"connecting and one failure", []State{C, TF}, C},

		// Rule 4: one bad target among several does not fail the endpoint.
		{"one failure and idle", []State{TF, I}, C},
		{"one failure among idles", []State{I, I, TF, I}, C},

		// Rule 5.
		{"all idle", []State{I, I, I}, I},

		// Values outside the enum count as failures.
		{"unknown counts as failure", []State{State(9), State(-1), I}, TF},
		{"one unknown among several", []State{State(9), I}, C},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Aggregate(tc.states); got != tc.want {
				t.Errorf("Aggregate(%v) = %v, want %v", tc.states, got, tc.want)
			}
		})
	}
}

func randomStates(rng *rand.Rand) []State {
	states := make([]State, rng.IntN(7))
	for i := range states {
		states[i] = State(rng.IntN(4))
	}
	return states
}

func TestAggregateProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		states := randomStates(rng)
		got := Aggregate(states)

		if (got == Ready) != slices.Contains(states, Ready) {
			t.Fatalf("Aggregate(%v) = %v: READY iff some target is READY", states, got)
		}
		shuffled := slices.Clone(states)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if again := Aggregate(shuffled); again != got {
			t.Fatalf("Aggregate(%v) = %v but Aggregate(%v) = %v: order matters", states, got, shuffled, again)
		}
		if up := Aggregate(append(slices.Clone(states), Ready)); up != Ready {
			t.Fatalf("adding a READY target to %v gives %v", states, up)
		}
		if !slices.Contains(states, TransientFailure) && !slices.Contains(states, Ready) {
			want := TransientFailure
			switch {
			case slices.Contains(states, Connecting):
				want = Connecting
			case slices.Contains(states, Idle):
				want = Idle
			}
			if got != want {
				t.Fatalf("Aggregate(%v) = %v, want %v", states, got, want)
			}
		}
	}
}

func TestToConnect(t *testing.T) {
	for _, tc := range []struct {
		name   string
		states []State
		want   int // -1: ok is false
	}{
		// Fires: aggregate CONNECTING or TF, nothing CONNECTING, an IDLE left.
		{"two failures and idles", []State{TF, I, TF, I}, 1},
		{"one failure among idles", []State{I, TF, I}, 0},
		{"first idle in the order given", []State{TF, TF, TF, I, I}, 3},

		// Does not fire.
		{"no targets", nil, -1},
		{"ready", []State{TF, TF, R, I}, -1},
		{"all idle: a request will connect one", []State{I, I}, -1},
		{"already connecting", []State{TF, TF, C, I}, -1},
		{"connecting and one failure", []State{C, TF, I}, -1},
		{"failed with nothing left to try", []State{TF, TF, TF}, -1},
		{"one failure alone", []State{TF}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := ToConnect(tc.states)
			if !ok {
				got = -1
			}
			if got != tc.want {
				t.Errorf("ToConnect(%v) = %d, %v; want %d", tc.states, got, ok, tc.want)
			}
		})
	}
}

func TestToConnectProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 10000 {
		states := randomStates(rng)
		agg := Aggregate(states)
		want := (agg == Connecting || agg == TransientFailure) &&
			!slices.Contains(states, Connecting) && slices.Contains(states, Idle)
		i, ok := ToConnect(states)
		if ok != want {
			t.Fatalf("ToConnect(%v) ok = %v, want %v (aggregate %v)", states, ok, want, agg)
		}
		if ok && i != slices.Index(states, Idle) {
			t.Fatalf("ToConnect(%v) = %d, want the first IDLE", states, i)
		}
		// After connecting what it names, it waits for that attempt.
		if ok {
			after := slices.Clone(states)
			after[i] = Connecting
			if j, again := ToConnect(after); again {
				t.Fatalf("ToConnect(%v) = %d while a target is CONNECTING", after, j)
			}
		}
	}
}

// stuck is the state the ToConnect rule exists to prevent: the endpoint
// reports TRANSIENT_FAILURE, nothing is being tried, and an IDLE target that
// could be tried is left alone.
func stuck(states []State) bool {
	return Aggregate(states) == TransientFailure &&
		!slices.Contains(states, Connecting) && slices.Contains(states, Idle)
}

// TestRecoverFromStuck replays grpc-go's two ring_hash "stuck in
// TRANSIENT_FAILURE" cases, and two longer ones, as the proxy would run
// them: after every state change it computes Aggregate and ToConnect and
// dials the target ToConnect names (IDLE -> CONNECTING); each dial then ends
// with the next outcome.
func TestRecoverFromStuck(t *testing.T) {
	for _, tc := range []struct {
		name     string
		start    []State
		change   func([]State) []State
		outcomes []State // how each dial ends, in order
		tried    []int   // indexes ToConnect names, after the change
		aggs     []State // aggregate after the change and after each step
		final    State
	}{
		{
			name:     "ready target goes idle",
			start:    []State{TF, TF, R, I},
			change:   func(s []State) []State { s[2] = Idle; return s },
			outcomes: []State{R},
			tried:    []int{2},
			aggs:     []State{TF, TF, R},
			final:    R,
		},
		{
			name:     "connecting target removed",
			start:    []State{TF, TF, C, I},
			change:   func(s []State) []State { return slices.Delete(s, 2, 3) },
			outcomes: []State{R},
			tried:    []int{2},
			aggs:     []State{TF, TF, R},
			final:    R,
		},
		{
			name:     "dials fail until one works",
			start:    []State{TF, TF, R, I, I},
			change:   func(s []State) []State { s[2] = TransientFailure; return s },
			outcomes: []State{TF, R},
			tried:    []int{3, 4},
			aggs:     []State{TF, TF, TF, TF, R},
			final:    R,
		},
		{
			name:     "one failure among idles",
			start:    []State{R, I, I},
			change:   func(s []State) []State { s[0] = TransientFailure; return s },
			outcomes: []State{TF, R},
			tried:    []int{1, 2},
			aggs:     []State{C, C, TF, TF, R},
			final:    R,
		},
		{
			// Ending in TF is right when every target has been tried.
			name:     "every dial fails",
			start:    []State{TF, C, I},
			change:   func(s []State) []State { s[1] = TransientFailure; return s },
			outcomes: []State{TF},
			tried:    []int{2},
			aggs:     []State{TF, TF, TF},
			final:    TF,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			states := tc.change(slices.Clone(tc.start))
			aggs := []State{Aggregate(states)}
			outcomes := tc.outcomes
			var tried []int
			for {
				i, ok := ToConnect(states)
				if !ok {
					break
				}
				if states[i] != Idle {
					t.Fatalf("ToConnect(%v) = %d, not IDLE", states, i)
				}
				if len(outcomes) == 0 {
					t.Fatalf("ToConnect(%v) = %d after the last expected dial", states, i)
				}
				tried = append(tried, i)
				states[i] = Connecting
				aggs = append(aggs, Aggregate(states))
				states[i], outcomes = outcomes[0], outcomes[1:]
				aggs = append(aggs, Aggregate(states))
			}
			if stuck(states) {
				t.Fatalf("stuck in TRANSIENT_FAILURE with an untried IDLE target: %v", states)
			}
			if !slices.Equal(tried, tc.tried) {
				t.Errorf("dialled %v, want %v", tried, tc.tried)
			}
			if !slices.Equal(aggs, tc.aggs) {
				t.Errorf("aggregates %v, want %v", aggs, tc.aggs)
			}
			if got := Aggregate(states); got != tc.final {
				t.Errorf("final aggregate %v (%v), want %v", got, states, tc.final)
			}
			if len(outcomes) != 0 {
				t.Errorf("%d dials expected but not asked for", len(outcomes))
			}
		})
	}
}

// TestNeverStuck checks from random states that running ToConnect to a fixed
// point (every dial failing, the worst case) never leaves the endpoint stuck.
func TestNeverStuck(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 10000 {
		start := randomStates(rng)
		states := slices.Clone(start)
		// A CONNECTING attempt that fails is also a state change.
		for i, s := range states {
			if s == Connecting {
				states[i] = TransientFailure
			}
		}
		for steps := 0; ; steps++ {
			i, ok := ToConnect(states)
			if !ok {
				break
			}
			if steps > len(states) {
				t.Fatalf("from %v: more dials than targets", start)
			}
			states[i] = TransientFailure
		}
		if stuck(states) {
			t.Fatalf("from %v: stuck at %v", start, states)
		}
	}
}
