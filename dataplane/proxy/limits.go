package proxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// errStreamLimit: the tunnel already carries its maximum of streams; the
// request goes to another connection.
var errStreamLimit = errors.New("tunnel stream limit reached")

// sourceLimiter is a token bucket per source address for new tunnels. Its
// table is bounded: buckets full again are forgotten.
type sourceLimiter struct {
	rate  float64
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

const maxTrackedSources = 65536

func newSourceLimiter(rate float64, burst int) *sourceLimiter {
	return &sourceLimiter{rate: rate, burst: float64(burst), now: time.Now, buckets: map[string]*bucket{}}
}

// allow takes a token for the address's host, if it has one.
func (l *sourceLimiter) allow(addr net.Addr) bool {
	host := addr.String()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[host]
	if b == nil {
		if len(l.buckets) >= maxTrackedSources {
			l.forgetFull(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[host] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *sourceLimiter) forgetFull(now time.Time) {
	for h, b := range l.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.buckets, h)
		}
	}
}

// tokenTunnels counts this proxy's tunnels per agent token id.
type tokenTunnels struct {
	mu sync.Mutex
	n  map[string]int
}

// acquire counts one more tunnel for id unless it already holds max.
func (t *tokenTunnels) acquire(id string, max int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == nil {
		t.n = map[string]int{}
	}
	if t.n[id] >= max {
		return false
	}
	t.n[id]++
	return true
}

func (t *tokenTunnels) release(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n[id]--; t.n[id] <= 0 {
		delete(t.n, id)
	}
}
