package controlplane

import (
	"testing"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestJudge(t *testing.T) {
	cfg := HeartbeatConfig{UnhealthyAfter: 5 * time.Second, DownAfter: 30 * time.Second, Grace: 10 * time.Second, Interval: time.Second}
	t0 := time.UnixMilli(1_000_000_000)
	proxy := func(h berthv1.Health, changed time.Time) *berthv1.Proxy {
		return &berthv1.Proxy{Id: "p1", Health: h, HealthChangedUnixMs: changed.UnixMilli(), Version: 7}
	}
	tests := []struct {
		name  string
		proxy *berthv1.Proxy
		seen  *time.Time
		since time.Time
		now   time.Time
		want  berthv1.Health // UNSPECIFIED: no transition
	}{
		{"within grace nobody is judged", proxy(berthv1.Health_HEALTH_HEALTHY, t0), nil, t0, t0.Add(9 * time.Second), 0},
		{"fresh sample keeps healthy", proxy(berthv1.Health_HEALTH_HEALTHY, t0), ptr(t0.Add(58 * time.Second)), t0, t0.Add(60 * time.Second), 0},
		{"silent past unhealthy-after", proxy(berthv1.Health_HEALTH_HEALTHY, t0), ptr(t0.Add(50 * time.Second)), t0, t0.Add(56 * time.Second), berthv1.Health_HEALTH_UNHEALTHY},
		{"silence counts from leader start when never seen", proxy(berthv1.Health_HEALTH_HEALTHY, t0.Add(-time.Hour)), nil, t0, t0.Add(11 * time.Second), berthv1.Health_HEALTH_UNHEALTHY},
		{"registered recently is not judged silent", proxy(berthv1.Health_HEALTH_HEALTHY, t0.Add(58*time.Second)), nil, t0, t0.Add(60 * time.Second), 0},
		{"healthy silent past down-after goes straight down", proxy(berthv1.Health_HEALTH_HEALTHY, t0), ptr(t0), t0, t0.Add(31 * time.Second), berthv1.Health_HEALTH_DOWN},
		{"unhealthy and still silent stays until down-after", proxy(berthv1.Health_HEALTH_UNHEALTHY, t0.Add(20*time.Second)), ptr(t0.Add(15 * time.Second)), t0, t0.Add(40 * time.Second), 0},
		{"unhealthy silent past down-after", proxy(berthv1.Health_HEALTH_UNHEALTHY, t0.Add(20*time.Second)), ptr(t0.Add(15 * time.Second)), t0, t0.Add(46 * time.Second), berthv1.Health_HEALTH_DOWN},
		{"unhealthy with a fresh sample recovers", proxy(berthv1.Health_HEALTH_UNHEALTHY, t0.Add(20*time.Second)), ptr(t0.Add(21 * time.Second)), t0, t0.Add(22 * time.Second), berthv1.Health_HEALTH_HEALTHY},
		{"down with a fresh sample recovers", proxy(berthv1.Health_HEALTH_DOWN, t0.Add(20*time.Second)), ptr(t0.Add(50 * time.Second)), t0, t0.Add(51 * time.Second), berthv1.Health_HEALTH_HEALTHY},
		{"down with an old sample stays down", proxy(berthv1.Health_HEALTH_DOWN, t0.Add(20*time.Second)), ptr(t0.Add(19 * time.Second)), t0, t0.Add(51 * time.Second), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[string]time.Time{}
			if tt.seen != nil {
				seen["p1"] = *tt.seen
			}
			changed := map[string]time.Time{"p1": time.UnixMilli(tt.proxy.HealthChangedUnixMs)}
			got := judge([]*berthv1.Proxy{tt.proxy}, seen, changed, tt.since, tt.now, cfg)
			if tt.want == 0 {
				if len(got) != 0 {
					t.Fatalf("want no transition, got %v", got)
				}
				return
			}
			if len(got) != 1 || got[0].Health != tt.want || got[0].IfVersion != 7 || got[0].ProxyId != "p1" {
				t.Fatalf("want %v (if_version 7), got %v", tt.want, got)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// observe times a proxy's health change by when this leader first saw it,
// whatever stamp the change carries, and forgets it with a new term.
func TestObserveTimesChangesBySight(t *testing.T) {
	h := newHeartbeats()
	t0 := time.Unix(1000, 0)
	h.startTerm(t0)
	p := &berthv1.Proxy{Id: "p1", HealthChangedUnixMs: t0.Add(time.Hour).UnixMilli()} // a clock an hour ahead stamped it
	if got := h.observe([]*berthv1.Proxy{p}, t0.Add(time.Second))["p1"]; !got.Equal(t0.Add(time.Second)) {
		t.Fatalf("first sight at %v, want t0+1s", got)
	}
	if got := h.observe([]*berthv1.Proxy{p}, t0.Add(5*time.Second))["p1"]; !got.Equal(t0.Add(time.Second)) {
		t.Fatalf("the same change re-timed to %v", got)
	}
	p.HealthChangedUnixMs = 1 // a clock far behind stamped the next change
	if got := h.observe([]*berthv1.Proxy{p}, t0.Add(9*time.Second))["p1"]; !got.Equal(t0.Add(9 * time.Second)) {
		t.Fatalf("a new change timed %v, want t0+9s", got)
	}
	if got := h.observe(nil, t0.Add(10*time.Second)); len(got) != 0 || len(h.changed) != 0 {
		t.Fatalf("an unregistered proxy is remembered: %v", h.changed)
	}
	h.observe([]*berthv1.Proxy{p}, t0.Add(11*time.Second))
	h.startTerm(t0.Add(12 * time.Second))
	if len(h.changed) != 0 {
		t.Fatal("a new term keeps the old term's sightings")
	}
}

func TestDeadToRemove(t *testing.T) {
	now := time.Unix(10_000, 0)
	long := now.Add(-time.Hour)
	short := now.Add(-time.Second)
	tests := []struct {
		name      string
		voters    []string
		dead      map[string]time.Time
		minVoters int
		want      string
	}{
		{"nobody dead", []string{"a", "b", "c"}, nil, 0, ""},
		{"dead long enough, quorum safe", []string{"a", "b", "c"}, map[string]time.Time{"c": long}, 0, "c"},
		{"dead too briefly", []string{"a", "b", "c"}, map[string]time.Time{"c": short}, 0, ""},
		{"min voters holds the line", []string{"a", "b", "c"}, map[string]time.Time{"c": long}, 3, ""},
		{"two of three dead: no quorum to remove with", []string{"a", "b", "c"}, map[string]time.Time{"b": long, "c": long}, 0, ""},
		{"two of five dead: remove one at a time", []string{"a", "b", "c", "d", "e"}, map[string]time.Time{"e": long, "d": long}, 3, "d"},
		{"three of five dead: unsafe", []string{"a", "b", "c", "d", "e"}, map[string]time.Time{"c": long, "d": long, "e": long}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := deadToRemove(tt.voters, tt.dead, now, time.Minute, tt.minVoters); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
