package fsm

import (
	"iter"
	"slices"
	"sort"
)

// sortedSet is an ordered set of strings stored as a list of sorted chunks
// (the layout of Python's sortedcontainers): insert and remove cost a binary
// search plus a copy within one chunk of fewer than chunkSplit keys, and
// listing from a cursor costs O(log n + page). It backs every ordered index,
// so paged reads never sort and never walk the keys before their cursor.
//
// The zero value is an empty set; a nil *sortedSet reads as empty.
type sortedSet struct {
	chunks [][]string // non-empty, each sorted, all of chunk i < all of chunk i+1
	n      int
}

const (
	chunkSplit = 512 // a chunk reaching this length is halved
	chunkMerge = 64  // a chunk below this length joins a neighbour when they fit
)

func (s *sortedSet) len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// chunkFor returns the index of the chunk that holds k, or would hold it.
func (s *sortedSet) chunkFor(k string) int {
	i := sort.Search(len(s.chunks), func(i int) bool {
		c := s.chunks[i]
		return c[len(c)-1] >= k
	})
	if i == len(s.chunks) {
		i--
	}
	return i
}

func (s *sortedSet) has(k string) bool {
	if s.len() == 0 {
		return false
	}
	_, found := slices.BinarySearch(s.chunks[s.chunkFor(k)], k)
	return found
}

func (s *sortedSet) insert(k string) bool {
	if len(s.chunks) == 0 {
		s.chunks = append(s.chunks, []string{k})
		s.n = 1
		return true
	}
	var i, j int
	if last := s.chunks[len(s.chunks)-1]; k > last[len(last)-1] {
		// Appending, the common case: restore and increasing IDs.
		i, j = len(s.chunks)-1, len(last)
	} else {
		i = s.chunkFor(k)
		var found bool
		if j, found = slices.BinarySearch(s.chunks[i], k); found {
			return false
		}
	}
	c := slices.Insert(s.chunks[i], j, k)
	s.n++
	if len(c) < chunkSplit {
		s.chunks[i] = c
		return true
	}
	half := len(c) / 2
	right := make([]string, len(c)-half, chunkSplit)
	copy(right, c[half:])
	clear(c[half:])
	s.chunks[i] = c[:half]
	s.chunks = slices.Insert(s.chunks, i+1, right)
	return true
}

func (s *sortedSet) remove(k string) bool {
	if s.len() == 0 {
		return false
	}
	i := s.chunkFor(k)
	c := s.chunks[i]
	j, found := slices.BinarySearch(c, k)
	if !found {
		return false
	}
	c = slices.Delete(c, j, j+1)
	s.n--
	s.chunks[i] = c
	switch {
	case len(c) == 0:
		s.chunks = slices.Delete(s.chunks, i, i+1)
	case len(c) >= chunkMerge:
	case i+1 < len(s.chunks) && len(c)+len(s.chunks[i+1]) <= chunkSplit/2:
		s.chunks[i] = append(c, s.chunks[i+1]...)
		s.chunks = slices.Delete(s.chunks, i+1, i+2)
	case i > 0 && len(c)+len(s.chunks[i-1]) <= chunkSplit/2:
		s.chunks[i-1] = append(s.chunks[i-1], c...)
		s.chunks = slices.Delete(s.chunks, i, i+1)
	}
	return true
}

// first returns the smallest key.
func (s *sortedSet) first() (string, bool) {
	if s.len() == 0 {
		return "", false
	}
	return s.chunks[0][0], true
}

// after yields, in order, every key greater than cursor.
func (s *sortedSet) after(cursor string) iter.Seq[string] {
	return func(yield func(string) bool) {
		if s.len() == 0 {
			return
		}
		i := sort.Search(len(s.chunks), func(i int) bool {
			c := s.chunks[i]
			return c[len(c)-1] > cursor
		})
		if i == len(s.chunks) {
			return
		}
		j := sort.Search(len(s.chunks[i]), func(j int) bool { return s.chunks[i][j] > cursor })
		for ; i < len(s.chunks); i, j = i+1, 0 {
			for _, k := range s.chunks[i][j:] {
				if !yield(k) {
					return
				}
			}
		}
	}
}

// keys returns a copy of every key, in order: the way to iterate while
// mutating the set.
func (s *sortedSet) keys() []string {
	out := make([]string, 0, s.len())
	if s == nil {
		return out
	}
	for _, c := range s.chunks {
		out = append(out, c...)
	}
	return out
}

// setIndex is a family of sorted sets by key (connections by proxy, ...).
// Empty sets are dropped so deleted proxies and endpoints leave nothing.
type setIndex map[string]*sortedSet

func (x setIndex) add(key, member string) bool {
	s := x[key]
	if s == nil {
		s = &sortedSet{}
		x[key] = s
	}
	return s.insert(member)
}

func (x setIndex) del(key, member string) bool {
	s := x[key]
	if s == nil {
		return false
	}
	ok := s.remove(member)
	if s.len() == 0 {
		delete(x, key)
	}
	return ok
}
