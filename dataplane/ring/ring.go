package ring

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"sync"

	"github.com/cespare/xxhash/v2"
)

var (
	// ErrNoReadyTarget is returned by Pick when it has looked at every
	// target on the ring and none was READY.
	ErrNoReadyTarget = errors.New("no ready target")
	// ErrNoTargets is returned by Pick on a ring without targets. It wraps
	// ErrNoReadyTarget, so callers that only care whether a target was found
	// check for that.
	ErrNoTargets = fmt.Errorf("no targets: %w", ErrNoReadyTarget)
	// ErrUnknownState is returned by FromProto for UNSPECIFIED and values
	// this version does not know.
	ErrUnknownState = errors.New("unknown connectivity state")
)

// Target is one connection of an endpoint, as the ring sees it.
type Target struct {
	// ID is the connection ID; Pick returns it and passes it to the state
	// and connect callbacks. IDs are unique within a ring.
	ID string
	// Slot places the target on the ring. It survives moves, so a moved
	// connection (new ID, same slot) keeps its positions.
	Slot string
	// Weight is the target's share of the ring relative to the others. 0
	// counts as 1.
	Weight uint32
}

// Ring is an immutable ring hash over an endpoint's targets, safe for
// concurrent use. Build a new one with New when the targets change.
type Ring struct {
	targets []Target // canonical order: by slot, then ID; weights normalized
	hashes  []uint64 // entry positions, ascending
	owners  []uint32 // owners[i] is the index in targets of entry i
	// onRing counts the targets with at least one entry: with a small
	// MaxRingSize and skewed weights, light targets can get none.
	onRing int
}

// Hash is the ring position of a request's hash key (the configured header
// or cookie value).
func Hash(key string) uint64 { return xxhash.Sum64String(key) }

// New builds the ring for targets. Targets are first sorted by slot and then
// ID, and a repeated ID keeps only its first target in that order, so the
// ring depends only on the set of targets, never on their order. Entry i of
// a target is at Hash(slot + "_" + i); entries are split between targets in
// proportion to weight, and the ring has between cfg.MinRingSize and
// cfg.MaxRingSize entries (A42's sizing: enough that the lightest target
// gets about MinRingSize times its share). cfg is normally validated; New
// uses defaults for zero fields and clamps the rest rather than failing.
func New(targets []Target, cfg Config) *Ring {
	lo, hi := cfg.bounds()
	ts := canonical(targets)
	r := &Ring{targets: ts}
	if len(ts) == 0 {
		return r
	}

	var total, lightest uint64 = 0, math.MaxUint64
	for _, t := range ts {
		total += uint64(t.Weight)
		lightest = min(lightest, uint64(t.Weight))
	}
	// A42: scale = ceil(minShare * MinRingSize) / minShare, capped at
	// MaxRingSize, in integers so that the total is exact and the same on
	// every platform.
	perLightest := mulDivCeil(lightest, uint64(lo), total)
	size := int(min(mulDivCeil(perLightest, total, lightest), uint64(hi)))

	type entry struct {
		hash  uint64
		owner uint32
	}
	entries := make([]entry, 0, size)
	buf := make([]byte, 0, 64)
	var done, prefix uint64
	for i, t := range ts {
		// Cumulative rounding: target i ends at ceil(size * prefix / total),
		// so the counts add up to size exactly and each is within one of
		// its share.
		prefix += uint64(t.Weight)
		end := mulDivCeil(uint64(size), prefix, total)
		if end > done {
			r.onRing++
		}
		buf = append(append(buf[:0], t.Slot...), '_')
		n := len(buf)
		for k := uint64(0); done < end; k++ {
			buf = strconv.AppendUint(buf[:n], k, 10)
			entries = append(entries, entry{hash: xxhash.Sum64(buf), owner: uint32(i)})
			done++
		}
	}
	slices.SortFunc(entries, func(a, b entry) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.owner, b.owner)
	})
	r.hashes = make([]uint64, len(entries))
	r.owners = make([]uint32, len(entries))
	for i, e := range entries {
		r.hashes[i], r.owners[i] = e.hash, e.owner
	}
	return r
}

// canonical returns a sorted copy of targets without repeated IDs, weights
// 0 replaced by 1.
func canonical(targets []Target) []Target {
	ts := slices.Clone(targets)
	for i := range ts {
		ts[i].Weight = max(ts[i].Weight, 1)
	}
	slices.SortFunc(ts, func(a, b Target) int {
		if c := cmp.Compare(a.Slot, b.Slot); c != 0 {
			return c
		}
		if c := cmp.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return cmp.Compare(a.Weight, b.Weight)
	})
	seen := make(map[string]struct{}, len(ts))
	return slices.DeleteFunc(ts, func(t Target) bool {
		if _, dup := seen[t.ID]; dup {
			return true
		}
		seen[t.ID] = struct{}{}
		return false
	})
}

// mulDivCeil is ceil(a*b/d) without overflow in the product, saturating at
// math.MaxUint64. d must not be 0.
func mulDivCeil(a, b, d uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi >= d {
		return math.MaxUint64
	}
	q, rem := bits.Div64(hi, lo, d)
	if rem != 0 && q < math.MaxUint64 {
		q++
	}
	return q
}

// Len is the number of entries on the ring.
func (r *Ring) Len() int { return len(r.hashes) }

// Targets returns a copy of the ring's targets in canonical order (by slot,
// then ID; repeated IDs dropped, weight 0 reported as 1). Pass states to
// Aggregate and ToConnect in this order.
func (r *Ring) Targets() []Target { return slices.Clone(r.targets) }

// stackWords sizes the visited set Pick keeps on its stack: rings of up to
// 64*stackWords targets pick without touching the pool.
const stackWords = 32

var visitedPool = sync.Pool{New: func() any { return new([]uint64) }}

// Pick returns the ID of the target for a request whose key hashes to hash.
// It walks the ring clockwise from the first entry at or after hash
// (wrapping), asking state about each distinct target once, in the order
// met:
//
//   - READY: Pick returns it;
//   - IDLE: Pick calls connect with its ID, so that it is ready for the
//     next request with this key, and goes on;
//   - CONNECTING: passed;
//   - TRANSIENT_FAILURE (and any other value): skipped.
//
// When no target is READY it returns ErrNoReadyTarget, having asked every
// IDLE target to connect (ErrNoTargets on an empty ring). state must not be
// nil; connect may be. Both run synchronously on the caller's goroutine, so
// connect should start a connection, not wait for it. Pick does not
// allocate: past 2048 targets it borrows its visited set from a pool.
func (r *Ring) Pick(hash uint64, state func(id string) State, connect func(id string)) (string, error) {
	n := len(r.hashes)
	if n == 0 {
		return "", ErrNoTargets
	}
	start, _ := slices.BinarySearch(r.hashes, hash)
	if start == n {
		start = 0
	}
	// Most picks end at the first target: skip the visited set for them.
	t := r.owners[start]
	if r.visit(t, state, connect) {
		return r.targets[t].ID, nil
	}
	if r.onRing == 1 {
		return "", ErrNoReadyTarget
	}

	var stack [stackWords]uint64
	var visited []uint64
	if words := (len(r.targets) + 63) / 64; words <= stackWords {
		visited = stack[:words]
	} else {
		p := visitedPool.Get().(*[]uint64)
		if cap(*p) < words {
			*p = make([]uint64, words)
		}
		visited = (*p)[:words]
		clear(visited)
		defer visitedPool.Put(p)
	}
	visited[t/64] |= 1 << (t % 64)
	seen := 1
	for i := 1; i < n && seen < r.onRing; i++ {
		j := start + i
		if j >= n {
			j -= n
		}
		t := r.owners[j]
		w, bit := t/64, uint64(1)<<(t%64)
		if visited[w]&bit != 0 {
			continue
		}
		visited[w] |= bit
		seen++
		if r.visit(t, state, connect) {
			return r.targets[t].ID, nil
		}
	}
	return "", ErrNoReadyTarget
}

// visit reports whether target t is READY, asking it to connect if IDLE.
func (r *Ring) visit(t uint32, state func(string) State, connect func(string)) bool {
	id := r.targets[t].ID
	switch state(id) {
	case Ready:
		return true
	case Idle:
		if connect != nil {
			connect(id)
		}
	}
	return false
}
