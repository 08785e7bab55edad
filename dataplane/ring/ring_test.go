package ring

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// targets returns n targets c0..c(n-1) in slots s0..s(n-1), weight 1.
func targets(n int) []Target {
	ts := make([]Target, n)
	for i := range ts {
		ts[i] = Target{ID: "c" + strconv.Itoa(i), Slot: "s" + strconv.Itoa(i), Weight: 1}
	}
	return ts
}

// randomKeys returns n random hash keys, the same ones for the same seed.
func randomKeys(seed uint64, n int) []uint64 {
	rng := rand.New(rand.NewPCG(seed, seed))
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = Hash(strconv.FormatUint(rng.Uint64(), 36))
	}
	return keys
}

func allReady(string) State { return Ready }

// owner is the target a key maps to when every target is READY.
func owner(t *testing.T, r *Ring, hash uint64) string {
	t.Helper()
	id, err := r.Pick(hash, allReady, nil)
	if err != nil {
		t.Fatalf("Pick(%d) with every target READY: %v", hash, err)
	}
	return id
}

// walkOrder is the distinct targets met walking the ring from hash, by a
// plainly correct reference: Pick must visit targets in this order.
func walkOrder(r *Ring, hash uint64) []string {
	start, _ := slices.BinarySearch(r.hashes, hash)
	var order []string
	seen := map[string]bool{}
	for i := range r.hashes {
		id := r.targets[r.owners[(start+i)%len(r.hashes)]].ID
		if !seen[id] {
			seen[id] = true
			order = append(order, id)
		}
	}
	return order
}

func TestHash(t *testing.T) {
	for _, key := range []string{"", "user-42", "ünïcode"} {
		if got, want := Hash(key), xxhash.Sum64String(key); got != want {
			t.Errorf("Hash(%q) = %d, want xxhash %d", key, got, want)
		}
	}
}

func TestNewEntries(t *testing.T) {
	r := New([]Target{{ID: "a", Slot: "slot-a", Weight: 2}}, Config{MinRingSize: 4, MaxRingSize: 100})
	want := make([]uint64, 4)
	for i := range want {
		want[i] = xxhash.Sum64String("slot-a_" + strconv.Itoa(i))
	}
	slices.Sort(want)
	if !slices.Equal(r.hashes, want) {
		t.Errorf("entries %v, want hash(slot_i) for i < 4: %v", r.hashes, want)
	}
	if !slices.IsSorted(r.hashes) {
		t.Error("entries not sorted")
	}
}

func TestRingSize(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []uint32
		cfg     Config
		want    int
	}{
		{"one target", []uint32{1}, Default(), 1024},
		{"one heavy target", []uint32{1000}, Default(), 1024},
		// ceil(1024/3) = 342 entries each.
		{"three equal", []uint32{1, 1, 1}, Default(), 1026},
		// Lightest share 1/6: ceil(1024/6) = 171 per unit of weight.
		{"weights 1:2:3", []uint32{1, 2, 3}, Default(), 1026},
		{"zero weight is one", []uint32{0, 2, 3}, Default(), 1026},
		// The lightest needs one entry, so 10001 in all: capped.
		{"skewed weights capped", []uint32{1, 10000}, Default(), 8192},
		// ceil(1024/1001) = 2 entries for the lightest, 2000 for the heaviest.
		{"skewed weights", []uint32{1, 1000}, Default(), 2002},
		{"more targets than max", slices.Repeat([]uint32{1}, 10000), Default(), 8192},
		{"max weights", []uint32{math.MaxUint32, math.MaxUint32, 1}, Default(), 8192},
		{"small config", []uint32{1, 1, 1}, Config{MinRingSize: 4, MaxRingSize: 8}, 6},
		{"min equals max", []uint32{1, 2}, Config{MinRingSize: 10, MaxRingSize: 10}, 10},
		{"zero config takes defaults", []uint32{1}, Config{}, 1024},
		{"min above max is lowered", []uint32{1}, Config{MinRingSize: 50, MaxRingSize: 20}, 20},
		{"no targets", nil, Default(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := targets(len(tc.weights))
			for i, w := range tc.weights {
				ts[i].Weight = w
			}
			r := New(ts, tc.cfg)
			if r.Len() != tc.want {
				t.Errorf("Len() = %d, want %d", r.Len(), tc.want)
			}
			if lo, hi := tc.cfg.bounds(); len(ts) > 0 && (r.Len() < lo || r.Len() > hi) {
				t.Errorf("Len() = %d outside [%d, %d]", r.Len(), lo, hi)
			}
		})
	}
}

func TestRingSizeBoundsRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 300 {
		ts := targets(1 + rng.IntN(50))
		for i := range ts {
			ts[i].Weight = uint32(rng.IntN(4)) << uint(rng.IntN(30))
		}
		lo := 1 + rng.IntN(2000)
		cfg := Config{MinRingSize: lo, MaxRingSize: lo + rng.IntN(4000)}
		r := New(ts, cfg)
		if r.Len() < cfg.MinRingSize || r.Len() > cfg.MaxRingSize {
			t.Fatalf("%d targets, %+v: Len() = %d", len(ts), cfg, r.Len())
		}
		// Each target gets within one entry of its share.
		counts := make([]int, len(ts))
		for _, o := range r.owners {
			counts[o]++
		}
		var total float64
		for _, tg := range r.targets {
			total += float64(tg.Weight)
		}
		for i, tg := range r.targets {
			share := float64(r.Len()) * float64(tg.Weight) / total
			if math.Abs(float64(counts[i])-share) > 1 {
				t.Fatalf("%+v: %d entries, share %.2f", tg, counts[i], share)
			}
		}
	}
}

func TestDistribution(t *testing.T) {
	ts := []Target{
		{ID: "a", Slot: "slot-a", Weight: 1},
		{ID: "b", Slot: "slot-b", Weight: 2},
		{ID: "c", Slot: "slot-c", Weight: 3},
	}
	r := New(ts, Default())
	keys := randomKeys(1, 100_000)
	got := map[string]int{}
	for _, k := range keys {
		got[owner(t, r, k)]++
	}
	for _, tg := range ts {
		share := float64(got[tg.ID]) / float64(len(keys))
		want := float64(tg.Weight) / 6
		t.Logf("%s: weight %d, share %.3f, want %.3f", tg.ID, tg.Weight, share, want)
		// A42's ring of ~1000 entries keeps shares within a few percent.
		if math.Abs(share-want)/want > 0.10 {
			t.Errorf("%s: share %.3f, want %.3f ± 10%%", tg.ID, share, want)
		}
	}
}

func TestDeterministic(t *testing.T) {
	ts := targets(20)
	for i := range ts {
		ts[i].Weight = uint32(1 + i%4)
	}
	base := New(ts, Default())
	keys := randomKeys(2, 2000)
	want := make([]string, len(keys))
	for i, k := range keys {
		want[i] = owner(t, base, k)
	}
	rng := rand.New(rand.NewPCG(9, 10))
	for n := range 10 {
		t.Run(fmt.Sprintf("shuffle %d", n), func(t *testing.T) {
			shuffled := slices.Clone(ts)
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			r := New(shuffled, Default())
			if !slices.Equal(r.Targets(), base.Targets()) || !slices.Equal(r.hashes, base.hashes) || !slices.Equal(r.owners, base.owners) {
				t.Fatal("a different ring for the same targets in another order")
			}
			for i, k := range keys {
				if got := owner(t, r, k); got != want[i] {
					t.Fatalf("key %d: %s, want %s", i, got, want[i])
				}
			}
		})
	}
}

func TestCanonicalTargets(t *testing.T) {
	r := New([]Target{
		{ID: "c2", Slot: "b", Weight: 3},
		{ID: "c1", Slot: "a"},
		{ID: "c2", Slot: "c", Weight: 5}, // same ID, later slot: dropped
		{ID: "c0", Slot: "b", Weight: 1},
	}, Default())
	want := []Target{
		{ID: "c1", Slot: "a", Weight: 1},
		{ID: "c0", Slot: "b", Weight: 1},
		{ID: "c2", Slot: "b", Weight: 3},
	}
	if got := r.Targets(); !slices.Equal(got, want) {
		t.Errorf("Targets() = %v, want %v", got, want)
	}
	r.Targets()[0].ID = "changed"
	if r.Targets()[0].ID != "c1" {
		t.Error("Targets() shares its slice with the ring")
	}
	zero := New([]Target{{ID: "x", Slot: "s"}, {ID: "y", Slot: "t", Weight: 1}}, Default())
	one := New([]Target{{ID: "x", Slot: "s", Weight: 1}, {ID: "y", Slot: "t", Weight: 1}}, Default())
	if !slices.Equal(zero.hashes, one.hashes) || !slices.Equal(zero.owners, one.owners) {
		t.Error("weight 0 does not place like weight 1")
	}
}

// TestSlotPlacement: a moved connection comes back with a new ID in the same
// slot and must own exactly the keys it owned before.
func TestSlotPlacement(t *testing.T) {
	before := targets(10)
	after := slices.Clone(before)
	after[3].ID = "c3-moved"
	r1, r2 := New(before, Default()), New(after, Default())
	if !slices.Equal(r1.hashes, r2.hashes) {
		t.Fatal("entries changed when only an ID changed")
	}
	moved := 0
	for _, k := range randomKeys(3, 20000) {
		got, was := owner(t, r2, k), owner(t, r1, k)
		switch {
		case was == "c3":
			moved++
			if got != "c3-moved" {
				t.Fatalf("key owned by c3 now goes to %s, want c3-moved", got)
			}
		case got != was:
			t.Fatalf("key owned by %s now goes to %s", was, got)
		}
	}
	if moved == 0 {
		t.Fatal("no key mapped to c3")
	}
}

// TestAddTarget: adding an (n+1)th target takes about 1/(n+1) of the keys.
// A42 keeps the ring size bounded, so existing targets also lose entries
// (ceil(1024/n) each becomes ceil(1024/(n+1))) and the keys on those move
// between old targets too: in all about 2/(n+1) move, not more.
func TestAddTarget(t *testing.T) {
	for _, n := range []int{5, 10, 50} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			ts := targets(n + 1)
			r1, r2 := New(ts[:n], Default()), New(ts, Default())
			newID := ts[n].ID
			keys := randomKeys(4, 50000)
			var moved, toNew int
			for _, k := range keys {
				was, got := owner(t, r1, k), owner(t, r2, k)
				if got != was {
					moved++
				}
				if got == newID {
					toNew++
				}
			}
			share := 1 / float64(n+1)
			fMoved, fNew := float64(moved)/float64(len(keys)), float64(toNew)/float64(len(keys))
			t.Logf("n=%d: moved %.3f, to the new target %.3f, 1/(n+1) = %.3f", n, fMoved, fNew, share)
			if math.Abs(fNew-share) > share*0.25 {
				t.Errorf("new target got %.3f of keys, want about %.3f", fNew, share)
			}
			if fMoved > 2*share*1.25 {
				t.Errorf("%.3f of keys moved, want at most about %.3f", fMoved, 2*share)
			}
		})
	}
}

// pickCase gives the states of the targets in walk order from the key.
type pickCase struct {
	name     string
	states   []State // by position in walk order
	want     int     // position picked, -1 for ErrNoReadyTarget
	connects []int   // positions asked to connect, in order
	visits   int     // targets whose state is asked, each once
}

func TestPick(t *testing.T) {
	r := New(targets(5), Default())
	for _, tc := range []pickCase{
		{"first ready", []State{R, R, R, R, R}, 0, nil, 1},
		{"skips transient failure", []State{TF, TF, R, TF, R}, 2, nil, 3},
		{"passes connecting", []State{C, R, I, I, I}, 1, nil, 2},
		{"connects idle passed over", []State{I, TF, I, R, I}, 3, []int{0, 2}, 4},
		{"ready after every other", []State{TF, C, TF, I, R}, 4, []int{3}, 5},
		{"none ready", []State{I, TF, C, I, TF}, -1, []int{0, 3}, 5},
		{"all idle", []State{I, I, I, I, I}, -1, []int{0, 1, 2, 3, 4}, 5},
		{"all transient failure", []State{TF, TF, TF, TF, TF}, -1, nil, 5},
		{"unknown state is skipped", []State{State(9), R, R, R, R}, 1, nil, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Many keys, so walks start all round the ring, wrapping too.
			keys := append(randomKeys(5, 200), 0, r.hashes[0], r.hashes[r.Len()-1], r.hashes[r.Len()-1]+1, math.MaxUint64)
			for _, k := range keys {
				checkPick(t, r, k, tc)
			}
		})
	}
}

func checkPick(t *testing.T, r *Ring, hash uint64, tc pickCase) {
	t.Helper()
	order := walkOrder(r, hash)
	pos := make(map[string]int, len(order))
	for i, id := range order {
		pos[id] = i
	}
	asked := map[string]int{}
	var connects []int
	id, err := r.Pick(hash,
		func(id string) State { asked[id]++; return tc.states[pos[id]] },
		func(id string) { connects = append(connects, pos[id]) },
	)
	if tc.want < 0 {
		if !errors.Is(err, ErrNoReadyTarget) || id != "" {
			t.Fatalf("hash %d: Pick = %q, %v; want ErrNoReadyTarget", hash, id, err)
		}
	} else if err != nil || id != order[tc.want] {
		t.Fatalf("hash %d: Pick = %q, %v; want %q (walk %v)", hash, id, err, order[tc.want], order)
	}
	if !slices.Equal(connects, tc.connects) {
		t.Fatalf("hash %d: connect at %v, want %v", hash, connects, tc.connects)
	}
	if len(asked) != tc.visits {
		t.Fatalf("hash %d: asked %d targets, want %d", hash, len(asked), tc.visits)
	}
	for id, n := range asked {
		if n != 1 {
			t.Fatalf("hash %d: asked %s %d times", hash, id, n)
		}
		if pos[id] >= tc.visits {
			t.Fatalf("hash %d: asked %s, beyond the walk", hash, id)
		}
	}
}

func TestPickWrapsAround(t *testing.T) {
	r := New(targets(3), Default())
	first := r.targets[r.owners[0]].ID
	last := r.hashes[r.Len()-1]
	if last == math.MaxUint64 {
		t.Skip("an entry at the very top of the ring")
	}
	for _, h := range []uint64{last + 1, math.MaxUint64} {
		if got := owner(t, r, h); got != first {
			t.Errorf("Pick(%d) = %s, want the first entry's %s", h, got, first)
		}
	}
	if got := owner(t, r, r.hashes[1]); got != r.targets[r.owners[1]].ID {
		t.Errorf("a key equal to an entry's hash goes to %s, not that entry", got)
	}
}

func TestPickOneTarget(t *testing.T) {
	r := New(targets(1), Default())
	for _, tc := range []struct {
		state    State
		want     string
		connects int
	}{
		{Ready, "c0", 0},
		{Idle, "", 1},
		{Connecting, "", 0},
		{TransientFailure, "", 0},
	} {
		t.Run(tc.state.String(), func(t *testing.T) {
			var asked, connects int
			id, err := r.Pick(Hash("k"), func(string) State { asked++; return tc.state }, func(string) { connects++ })
			if id != tc.want || (tc.want == "") != errors.Is(err, ErrNoReadyTarget) {
				t.Errorf("Pick = %q, %v; want %q", id, err, tc.want)
			}
			if asked != 1 || connects != tc.connects {
				t.Errorf("asked %d times, connect %d times; want 1, %d", asked, connects, tc.connects)
			}
		})
	}
}

func TestPickEmpty(t *testing.T) {
	for _, r := range []*Ring{New(nil, Default()), {}} {
		id, err := r.Pick(1, func(string) State { t.Fatal("state asked on an empty ring"); return Ready }, nil)
		if id != "" || !errors.Is(err, ErrNoTargets) || !errors.Is(err, ErrNoReadyTarget) {
			t.Errorf("Pick on an empty ring = %q, %v; want ErrNoTargets (an ErrNoReadyTarget)", id, err)
		}
		if r.Len() != 0 || len(r.Targets()) != 0 {
			t.Errorf("Len() = %d, Targets() = %v", r.Len(), r.Targets())
		}
	}
}

// TestPickLargeRing covers rings past the visited set kept on the stack, and
// targets that got no entry at all.
func TestPickLargeRing(t *testing.T) {
	const n = 3000
	r := New(targets(n), Config{MinRingSize: 1024, MaxRingSize: 2500})
	if r.Len() != 2500 || r.onRing >= n {
		t.Fatalf("Len() = %d with %d of %d targets on the ring; want 2500 and some off", r.Len(), r.onRing, n)
	}
	for _, k := range randomKeys(6, 5) {
		asked := map[string]int{}
		id, err := r.Pick(k, func(id string) State { asked[id]++; return TransientFailure }, nil)
		if !errors.Is(err, ErrNoReadyTarget) {
			t.Fatalf("Pick = %q, %v; want ErrNoReadyTarget", id, err)
		}
		if len(asked) != r.onRing {
			t.Fatalf("asked %d targets, want all %d on the ring", len(asked), r.onRing)
		}
		for id, c := range asked {
			if c != 1 {
				t.Fatalf("asked %s %d times", id, c)
			}
		}
		order := walkOrder(r, k)
		ready := order[len(order)-1]
		got, err := r.Pick(k, func(id string) State {
			if id == ready {
				return Ready
			}
			return TransientFailure
		}, nil)
		if err != nil || got != ready {
			t.Fatalf("Pick = %q, %v; want the last target in the walk, %s", got, err, ready)
		}
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	r := New(targets(1000), Default())
	keys := randomKeys(7, 64)
	for _, tc := range []struct {
		name  string
		state func(string) State
	}{
		{"ready", allReady},
		{"all failed", func(string) State { return TransientFailure }},
		{"idle", func(string) State { return Idle }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			connect := func(string) {}
			i := 0
			allocs := testing.AllocsPerRun(100, func() {
				_, _ = r.Pick(keys[i%len(keys)], tc.state, connect)
				i++
			})
			if allocs != 0 {
				t.Errorf("Pick allocates %.1f times", allocs)
			}
		})
	}
}

// FuzzPick builds rings from arbitrary slots, IDs, weights and sizes, and
// checks that Pick returns a READY target or ErrNoReadyTarget, asking each
// target at most once.
func FuzzPick(f *testing.F) {
	f.Add([]byte("a\x01b\x02c\x03"), uint16(16), uint16(64), uint64(42), uint64(1))
	f.Add([]byte("\x00\x00\x00"), uint16(0), uint16(0), uint64(0), uint64(0))
	f.Add([]byte("x\xffy\x00x\x05"), uint16(1000), uint16(3), uint64(math.MaxUint64), uint64(7))
	f.Fuzz(func(t *testing.T, spec []byte, minSize, maxSize uint16, hash, seed uint64) {
		// spec is (name byte..., weight byte) pairs split at weights: a
		// target's slot is its name, its ID the name with a counter, so
		// IDs and slots can both repeat.
		var ts []Target
		var name []byte
		for _, b := range spec {
			if b < 8 || b > 0xf0 {
				w := uint32(b)
				if b > 0xf0 {
					w = uint32(b) << 20
				}
				ts = append(ts, Target{ID: string(name) + "#" + strconv.Itoa(len(ts)%3), Slot: string(name), Weight: w})
				name = name[:0]
				continue
			}
			name = append(name, b)
		}
		r := New(ts, Config{MinRingSize: int(minSize % 4096), MaxRingSize: int(maxSize % 4096)})
		if len(ts) > 0 && (r.Len() < 1 || r.Len() > MaxRingSizeLimit) {
			t.Fatalf("Len() = %d", r.Len())
		}
		ids := map[string]bool{}
		for _, tg := range r.Targets() {
			if ids[tg.ID] {
				t.Fatalf("ID %q twice in Targets()", tg.ID)
			}
			ids[tg.ID] = true
		}
		stateOf := func(id string) State { return State((xxhash.Sum64String(id) ^ seed) % 4) }
		asked := map[string]int{}
		id, err := r.Pick(hash, func(id string) State {
			if !ids[id] {
				t.Fatalf("state asked about unknown %q", id)
			}
			asked[id]++
			return stateOf(id)
		}, func(string) {})
		for id, n := range asked {
			if n > 1 {
				t.Fatalf("asked %q %d times", id, n)
			}
		}
		switch {
		case err == nil:
			if !ids[id] || stateOf(id) != Ready {
				t.Fatalf("Pick = %q, not a READY target", id)
			}
		case errors.Is(err, ErrNoReadyTarget):
			if id != "" || len(asked) != r.onRing {
				t.Fatalf("Pick = %q, %v after asking %d of %d targets", id, err, len(asked), r.onRing)
			}
		default:
			t.Fatalf("Pick: unexpected error %v", err)
		}
	})
}

// BenchmarkPick picks on an endpoint of 1000 connections: the first target
// READY (the common case), and a walk past failed targets to one READY.
func BenchmarkPick(b *testing.B) {
	r := New(targets(1000), Default())
	keys := randomKeys(8, 1024)
	failed := make(map[string]bool)
	for i := range 1000 {
		if i%10 != 0 {
			failed["c"+strconv.Itoa(i)] = true
		}
	}
	connect := func(string) {}
	for _, bc := range []struct {
		name  string
		state func(string) State
	}{
		{"ready", allReady},
		{"90pct-failed", func(id string) State {
			if failed[id] {
				return TransientFailure
			}
			return Ready
		}},
		{"all-failed", func(string) State { return TransientFailure }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				_, _ = r.Pick(keys[i&1023], bc.state, connect)
				i++
			}
		})
	}
}

func BenchmarkNew(b *testing.B) {
	ts := targets(1000)
	b.ReportAllocs()
	for b.Loop() {
		New(ts, Default())
	}
}
