package discovery

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// scripted answers Discover from a list of results, then repeats the last
// one. It closes exhausted when asked again after the last result, so the
// round that handled the last result is complete.
type scripted struct {
	mu        sync.Mutex
	results   []result
	lastSeen  bool
	exhausted chan struct{}
	once      sync.Once
}

type result struct {
	addrs []string
	err   error
}

func (s *scripted) Discover(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.results[0]
	switch {
	case len(s.results) > 1:
		s.results = s.results[1:]
	case s.lastSeen:
		s.once.Do(func() { close(s.exhausted) })
	default:
		s.lastSeen = true
	}
	return slices.Clone(r.addrs), r.err
}

func TestWatchReportsChangesOnly(t *testing.T) {
	errDown := errors.New("resolver down")
	tests := []struct {
		name    string
		results []result
		want    [][]string
	}{
		{
			name: "changes",
			results: []result{
				{addrs: []string{"a:1"}},
				{addrs: []string{"a:1"}},
				{err: errDown},
				{addrs: []string{"a:1"}},
				{addrs: []string{"a:1", "b:2"}},
				{addrs: []string{"a:1", "b:2"}},
				{addrs: []string{}},
				{addrs: nil},
				{addrs: []string{"b:2"}},
			},
			want: [][]string{{"a:1"}, {"a:1", "b:2"}, {}, {"b:2"}},
		},
		{
			name:    "first answer empty is reported",
			results: []result{{addrs: []string{}}, {addrs: []string{}}},
			want:    [][]string{{}},
		},
		{
			name:    "failures first",
			results: []result{{err: errDown}, {err: errDown}, {addrs: []string{"a:1"}}},
			want:    [][]string{{"a:1"}},
		},
		{
			name:    "only failures",
			results: []result{{err: errDown}},
			want:    nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &scripted{results: tt.results, exhausted: make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var got [][]string
			done := make(chan struct{})
			go func() {
				defer close(done)
				Watch(ctx, d, time.Millisecond, func(a []string) { got = append(got, a) }, testLogger(t))
			}()
			select {
			case <-d.exhausted:
			case <-time.After(5 * time.Second):
				t.Fatal("Watch did not poll through the script")
			}
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("Watch did not return after cancel")
			}
			if !slices.EqualFunc(got, tt.want, slices.Equal) {
				t.Fatalf("fn calls = %q, want %q", got, tt.want)
			}
		})
	}
}
