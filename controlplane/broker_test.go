package controlplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// testFSM stands in for the FSM: it applies events to a map under its write
// lock and publishes them, and subscribes under its read lock, as the
// broker's contract requires.
type testFSM struct {
	broker *Broker

	mu      sync.RWMutex
	applied uint64
	state   map[string]*berthv1.Event
	log     []*berthv1.Event // every event applied, in order
}

func newTestFSM(t testing.TB, cfg BrokerConfig) *testFSM {
	t.Helper()
	return &testFSM{broker: NewBroker(cfg, testLogger(t)), state: map[string]*berthv1.Event{}}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// apply applies one command made of evs (possibly none) at the next index.
func (f *testFSM) apply(evs ...*berthv1.Event) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied++
	for _, ev := range evs {
		ev.Index = f.applied
		if ev.Op == berthv1.EventOp_EVENT_OP_DELETE {
			delete(f.state, objKey(ev))
		} else {
			f.state[objKey(ev)] = ev
		}
	}
	f.log = append(f.log, evs...)
	f.broker.Publish(f.applied, evs)
	return f.applied
}

// restore simulates restoring a snapshot taken at index.
func (f *testFSM) restore(index uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = index
	f.broker.Reset(index)
}

// matchReq reports whether ev belongs to the subscription req asks for.
func matchReq(req *berthv1.WatchRequest, ev *berthv1.Event) bool {
	sels, err := watchSelectors(req)
	return err == nil && matchSelectors(sels, ev)
}

func (f *testFSM) subscribe(req *berthv1.WatchRequest) (*Subscription, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.broker.Subscribe(req, f.applied, func() []*berthv1.Event {
		var out []*berthv1.Event
		for _, ev := range f.state {
			if matchReq(req, ev) {
				out = append(out, ev)
			}
		}
		slices.SortFunc(out, func(a, b *berthv1.Event) int { return cmp.Compare(objKey(a), objKey(b)) })
		return out
	})
}

func (f *testFSM) mustSubscribe(t testing.TB, req *berthv1.WatchRequest) *Subscription {
	t.Helper()
	s, err := f.subscribe(req)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// matching returns the keys of the state matching req, sorted.
func (f *testFSM) matching(req *berthv1.WatchRequest) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var keys []string
	for k, ev := range f.state {
		if matchReq(req, ev) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func objKey(ev *berthv1.Event) string {
	switch o := ev.Object.(type) {
	case *berthv1.Event_Proxy:
		return "proxy/" + o.Proxy.Id
	case *berthv1.Event_Connection:
		return "connection/" + o.Connection.Id
	case *berthv1.Event_Move:
		return "move/" + o.Move.Id
	case *berthv1.Event_Endpoint:
		return "endpoint/" + o.Endpoint.Name
	case *berthv1.Event_Server:
		return "server/" + o.Server.Id
	}
	return "?"
}

func proxyEv(id, region string) *berthv1.Event {
	return &berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Region: region,
		Object: &berthv1.Event_Proxy{Proxy: &berthv1.Proxy{Id: id, Region: region}}}
}

func connEv(id, proxy, region string, endpoints ...string) *berthv1.Event {
	return &berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Region: region,
		Object: &berthv1.Event_Connection{Connection: &berthv1.Connection{Id: id, ProxyId: proxy, Endpoints: endpoints}}}
}

func moveEv(id, conn, from, to, region string) *berthv1.Event {
	return &berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT, Region: region,
		Object: &berthv1.Event_Move{Move: &berthv1.Move{Id: id, ConnectionId: conn, FromProxyId: from, ToProxyId: to}}}
}

func endpointEv(name string, proxies ...string) *berthv1.Event {
	return &berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT,
		Object: &berthv1.Event_Endpoint{Endpoint: &berthv1.Endpoint{Name: name, ProxyIds: proxies}}}
}

func serverEv(id string) *berthv1.Event {
	return &berthv1.Event{Op: berthv1.EventOp_EVENT_OP_UPSERT,
		Object: &berthv1.Event_Server{Server: &berthv1.Server{Id: id}}}
}

func deleted(ev *berthv1.Event) *berthv1.Event {
	ev.Op = berthv1.EventOp_EVENT_OP_DELETE
	return ev
}

func watch(start uint64, filter *berthv1.EventFilter, topics ...berthv1.Topic) *berthv1.WatchRequest {
	return &berthv1.WatchRequest{Topics: topics, Filter: filter, StartIndex: start}
}

// next returns s's next update, failing the test if none comes in time.
func next(t testing.TB, s *Subscription) *berthv1.WatchResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return resp
}

// nextEvents returns the indexes of the next WatchEvents message.
func nextEvents(t testing.TB, s *Subscription) []uint64 {
	t.Helper()
	resp := next(t, s)
	if resp.GetEvents() == nil {
		t.Fatalf("Next = %v, want events", resp)
	}
	return indexes(resp.GetEvents().GetEvents())
}

// readSnapshot reads a whole snapshot and returns its events.
func readSnapshot(t testing.TB, s *Subscription, wantIndex uint64) []*berthv1.Event {
	t.Helper()
	var evs []*berthv1.Event
	for {
		snap := next(t, s).GetSnapshot()
		if snap == nil {
			t.Fatalf("want a snapshot message")
		}
		if snap.Index != wantIndex {
			t.Fatalf("snapshot index = %d, want %d", snap.Index, wantIndex)
		}
		evs = append(evs, snap.Events...)
		if snap.Done {
			return evs
		}
	}
}

func indexes(evs []*berthv1.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Index
	}
	return out
}

func keys(evs []*berthv1.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = objKey(ev)
	}
	return out
}

func span(from, to uint64) []uint64 {
	var out []uint64
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// checkLeaks fails the test if goroutines started during it outlive it.
// Register it first so that it runs after the other cleanups.
func checkLeaks(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		eventually(t, 5*time.Second, func() bool { return runtime.NumGoroutine() <= before })
	})
}

func eventually(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		<-tick.C
	}
}

// waitParkedInNext waits until n goroutines are blocked in
// Subscription.Next, so that the test exercises waking them up.
func waitParkedInNext(t testing.TB, n int) {
	t.Helper()
	buf := make([]byte, 1<<20)
	eventually(t, 5*time.Second, func() bool {
		size := runtime.Stack(buf, true)
		parked := 0
		for g := range strings.SplitSeq(string(buf[:size]), "\n\n") {
			if strings.Contains(g, "[select") && strings.Contains(g, "(*Subscription).Next") {
				parked++
			}
		}
		return parked >= n
	})
}

func TestBrokerConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  BrokerConfig
		ok   bool
	}{
		{"zero means defaults", BrokerConfig{}, true},
		{"defaults", DefaultBrokerConfig(), true},
		{"small buffer, default subscriber buffer", BrokerConfig{BufferEvents: 10}, true},
		{"equal", BrokerConfig{BufferEvents: 10, SubscriberBuffer: 10}, true},
		{"negative buffer", BrokerConfig{BufferEvents: -1}, false},
		{"huge buffer", BrokerConfig{BufferEvents: 1 << 30}, false},
		{"negative subscriber buffer", BrokerConfig{SubscriberBuffer: -1}, false},
		{"subscriber buffer above buffer", BrokerConfig{BufferEvents: 10, SubscriberBuffer: 11}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestSubscribeValidation(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	p1 := &berthv1.EventFilter{ProxyId: "p1"}
	tests := []struct {
		name string
		req  *berthv1.WatchRequest
		ok   bool
	}{
		{"nil", nil, false},
		{"no topics", &berthv1.WatchRequest{}, false},
		{"unspecified", watch(0, nil, berthv1.Topic_TOPIC_UNSPECIFIED), false},
		{"unknown", watch(0, nil, berthv1.Topic(99)), false},
		{"assignments without proxy", watch(0, nil, berthv1.Topic_TOPIC_ASSIGNMENTS), false},
		{"assignments with region only", watch(0, &berthv1.EventFilter{Region: "eu"}, berthv1.Topic_TOPIC_ASSIGNMENTS), false},
		{"one bad among good", watch(0, nil, berthv1.Topic_TOPIC_PROXIES, berthv1.Topic(42)), false},
		{"selector without topics", &berthv1.WatchRequest{Selectors: []*berthv1.WatchSelector{{}}}, false},
		{"bad selector", &berthv1.WatchRequest{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES},
			Selectors: []*berthv1.WatchSelector{{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_ASSIGNMENTS}}}}, false},
		{"filter without topics", &berthv1.WatchRequest{Filter: p1,
			Selectors: []*berthv1.WatchSelector{{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES}}}}, false},
		{"proxies", watch(0, nil, berthv1.Topic_TOPIC_PROXIES), true},
		{"every topic", watch(7, p1, berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_CONNECTIONS,
			berthv1.Topic_TOPIC_MOVES, berthv1.Topic_TOPIC_ENDPOINTS, berthv1.Topic_TOPIC_ASSIGNMENTS,
			berthv1.Topic_TOPIC_SERVERS), true},
		{"selectors only", &berthv1.WatchRequest{Selectors: []*berthv1.WatchSelector{
			{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_ASSIGNMENTS}, Filter: p1},
			{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES}}}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := f.subscribe(tt.req)
			if tt.ok {
				if err != nil {
					t.Fatalf("Subscribe: %v", err)
				}
				s.Close()
				return
			}
			if !errors.Is(err, ErrInvalidSubscription) {
				t.Fatalf("Subscribe error = %v, want ErrInvalidSubscription", err)
			}
		})
	}
	if got := f.broker.Stats().Subscribers; got != 0 {
		t.Fatalf("Subscribers = %d after closing all, want 0", got)
	}
}

func TestSnapshotThenEvents(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	for i := range 2500 {
		f.apply(proxyEv(fmt.Sprintf("p%04d", i), "eu"), connEv(fmt.Sprintf("c%04d", i), "p", "eu"))
	}
	s := f.mustSubscribe(t, watch(0, nil, berthv1.Topic_TOPIC_PROXIES))
	if got := s.LastIndex(); got != 0 {
		t.Fatalf("LastIndex before the snapshot = %d, want 0", got)
	}

	// 2500 proxies come as 1000 + 1000 + 500, Done only on the last.
	for i, want := range []int{1000, 1000, 500} {
		snap := next(t, s).GetSnapshot()
		if snap == nil || len(snap.Events) != want || snap.Index != 2500 || snap.Done != (i == 2) {
			t.Fatalf("chunk %d: got %d events at %d done=%v, want %d at 2500 done=%v",
				i, len(snap.GetEvents()), snap.GetIndex(), snap.GetDone(), want, i == 2)
		}
		for _, ev := range snap.Events {
			if ev.GetProxy() == nil {
				t.Fatalf("snapshot holds %s", objKey(ev))
			}
		}
	}
	if got := s.LastIndex(); got != 2500 {
		t.Fatalf("LastIndex after the snapshot = %d, want 2500", got)
	}

	// Everything queued comes in one message, proxies only.
	for i := range 5 {
		f.apply(connEv("x", "p", "eu"))
		f.apply(proxyEv(fmt.Sprintf("new%d", i), "eu"))
	}
	if got, want := nextEvents(t, s), []uint64{2502, 2504, 2506, 2508, 2510}; !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if got := s.LastIndex(); got != 2510 {
		t.Fatalf("LastIndex = %d, want 2510", got)
	}
}

func TestEmptySnapshot(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	f.apply(connEv("c1", "p1", "eu"))
	s := f.mustSubscribe(t, watch(0, nil, berthv1.Topic_TOPIC_PROXIES))
	if evs := readSnapshot(t, s, 1); len(evs) != 0 {
		t.Fatalf("snapshot = %v, want empty", keys(evs))
	}
}

func TestFilters(t *testing.T) {
	checkLeaks(t)
	events := func() []*berthv1.Event {
		return []*berthv1.Event{
			1: proxyEv("p1", "eu"),
			2: proxyEv("p2", "us"),
			3: connEv("c1", "p1", "eu", "e1"),
			4: connEv("c2", "p2", "us", "e2"),
			5: moveEv("m1", "c1", "p1", "p2", "eu"),
			6: endpointEv("e1", "p1"),
			7: serverEv("s1"),
			8: connEv("c3", "p2", "us", "e1", "e2"),
			9: deleted(connEv("c1", "p1", "eu", "e1")),
		}[1:]
	}
	sel := func(filter *berthv1.EventFilter, topics ...berthv1.Topic) *berthv1.WatchSelector {
		return &berthv1.WatchSelector{Topics: topics, Filter: filter}
	}
	tests := []struct {
		name     string
		req      *berthv1.WatchRequest
		live     []uint64 // indexes delivered to a subscriber from the start
		snapshot []string // state matching once everything is applied
	}{
		{"proxies", watch(0, nil, berthv1.Topic_TOPIC_PROXIES),
			[]uint64{1, 2}, []string{"proxy/p1", "proxy/p2"}},
		{"connections", watch(0, nil, berthv1.Topic_TOPIC_CONNECTIONS),
			[]uint64{3, 4, 8, 9}, []string{"connection/c2", "connection/c3"}},
		{"moves", watch(0, nil, berthv1.Topic_TOPIC_MOVES), []uint64{5}, []string{"move/m1"}},
		{"endpoints", watch(0, nil, berthv1.Topic_TOPIC_ENDPOINTS), []uint64{6}, []string{"endpoint/e1"}},
		{"servers", watch(0, nil, berthv1.Topic_TOPIC_SERVERS), []uint64{7}, []string{"server/s1"}},
		{"assignments p1", watch(0, &berthv1.EventFilter{ProxyId: "p1"}, berthv1.Topic_TOPIC_ASSIGNMENTS),
			[]uint64{3, 5, 9}, []string{"move/m1"}},
		{"assignments p2", watch(0, &berthv1.EventFilter{ProxyId: "p2"}, berthv1.Topic_TOPIC_ASSIGNMENTS),
			[]uint64{4, 5, 8}, []string{"connection/c2", "connection/c3", "move/m1"}},
		{"region eu", watch(0, &berthv1.EventFilter{Region: "eu"}, berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_CONNECTIONS),
			[]uint64{1, 3, 9}, []string{"proxy/p1"}},
		{"servers ignore region", watch(0, &berthv1.EventFilter{Region: "eu"}, berthv1.Topic_TOPIC_SERVERS),
			[]uint64{7}, []string{"server/s1"}},
		{"connections of endpoint e1", watch(0, &berthv1.EventFilter{Endpoint: "e1"}, berthv1.Topic_TOPIC_CONNECTIONS),
			[]uint64{3, 8, 9}, []string{"connection/c3"}},
		{"endpoints served by p1", watch(0, &berthv1.EventFilter{ProxyId: "p1"}, berthv1.Topic_TOPIC_ENDPOINTS),
			[]uint64{6}, []string{"endpoint/e1"}},
		{"selectors: own assignments and every proxy", &berthv1.WatchRequest{Selectors: []*berthv1.WatchSelector{
			sel(&berthv1.EventFilter{ProxyId: "p1"}, berthv1.Topic_TOPIC_ASSIGNMENTS),
			sel(nil, berthv1.Topic_TOPIC_PROXIES),
		}}, []uint64{1, 2, 3, 5, 9}, []string{"move/m1", "proxy/p1", "proxy/p2"}},
		{"top level and selector", &berthv1.WatchRequest{
			Topics:    []berthv1.Topic{berthv1.Topic_TOPIC_SERVERS},
			Selectors: []*berthv1.WatchSelector{sel(&berthv1.EventFilter{Endpoint: "e2"}, berthv1.Topic_TOPIC_CONNECTIONS)},
		}, []uint64{4, 7, 8}, []string{"connection/c2", "connection/c3", "server/s1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newTestFSM(t, BrokerConfig{})
			live := f.mustSubscribe(t, tt.req)
			if evs := readSnapshot(t, live, 0); len(evs) != 0 {
				t.Fatalf("initial snapshot = %v, want empty", keys(evs))
			}
			for _, ev := range events() {
				f.apply(ev)
			}
			if got := nextEvents(t, live); !slices.Equal(got, tt.live) {
				t.Fatalf("live events = %v, want %v", got, tt.live)
			}

			later := f.mustSubscribe(t, tt.req)
			if got := keys(readSnapshot(t, later, 9)); !slices.Equal(got, tt.snapshot) {
				t.Fatalf("snapshot = %v, want %v", got, tt.snapshot)
			}
		})
	}
}

func TestResumeFromBuffer(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{BufferEvents: 1024})
	// Two events per index, some indexes with none and some not matching.
	for i := range 100 {
		switch i % 10 {
		case 3:
			f.apply()
		case 7:
			f.apply(serverEv("s"))
		default:
			f.apply(proxyEv(fmt.Sprintf("a%d", i), "eu"), proxyEv(fmt.Sprintf("b%d", i), "eu"))
		}
	}
	var want []uint64
	for _, ev := range f.log {
		if ev.Index > 60 && ev.GetProxy() != nil {
			want = append(want, ev.Index)
		}
	}

	s := f.mustSubscribe(t, watch(60, nil, berthv1.Topic_TOPIC_PROXIES))
	if got := nextEvents(t, s); !slices.Equal(got, want) {
		t.Fatalf("gap = %v, want %v", got, want)
	}
	if got := s.LastIndex(); got != 100 {
		t.Fatalf("LastIndex = %d, want 100", got)
	}

	// Resuming at the applied index: no gap, only what comes next.
	s = f.mustSubscribe(t, watch(100, nil, berthv1.Topic_TOPIC_PROXIES))
	if got := s.LastIndex(); got != 100 {
		t.Fatalf("LastIndex = %d, want 100", got)
	}
	f.apply(proxyEv("c", "eu"))
	if got := nextEvents(t, s); !slices.Equal(got, []uint64{101}) {
		t.Fatalf("events = %v, want [101]", got)
	}
}

func TestResumeFromEvictedIndex(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{BufferEvents: 16})
	for i := range 100 {
		f.apply(proxyEv(fmt.Sprintf("p%d", i%10), "eu"))
	}
	// The ring holds 85..100: 84 was the last evicted.
	st := f.broker.Stats()
	if st.BufStart != 84 || st.Buffered != 16 || st.LastIndex != 100 {
		t.Fatalf("Stats = %+v, want BufStart 84, Buffered 16, LastIndex 100", st)
	}

	s := f.mustSubscribe(t, watch(84, nil, berthv1.Topic_TOPIC_PROXIES))
	if got := nextEvents(t, s); !slices.Equal(got, span(85, 100)) {
		t.Fatalf("gap = %v, want 85..100", got)
	}

	for _, start := range []uint64{83, 1, 0} {
		req := watch(start, nil, berthv1.Topic_TOPIC_PROXIES)
		want := f.matching(req)
		s := f.mustSubscribe(t, req)
		if got := keys(readSnapshot(t, s, f.applied)); !slices.Equal(got, want) {
			t.Fatalf("start %d: snapshot %v, want %v", start, got, want)
		}
		f.apply(proxyEv("late", "eu"))
		if got := nextEvents(t, s); !slices.Equal(got, []uint64{f.applied}) {
			t.Fatalf("start %d: events after snapshot = %v, want [%d]", start, got, f.applied)
		}
		if got := s.LastIndex(); got != f.applied {
			t.Fatalf("start %d: LastIndex = %d, want %d", start, got, f.applied)
		}
	}
}

// A subscriber coming from a node further ahead gets neither a snapshot nor
// the events it has already seen.
func TestResumeAheadOfNode(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	for i := range 100 {
		f.apply(proxyEv(fmt.Sprintf("p%d", i), "eu"))
	}
	s := f.mustSubscribe(t, watch(150, nil, berthv1.Topic_TOPIC_PROXIES))
	for i := range 60 {
		f.apply(proxyEv(fmt.Sprintf("q%d", i), "eu"))
	}
	if got := nextEvents(t, s); !slices.Equal(got, span(151, 160)) {
		t.Fatalf("events = %v, want 151..160", got)
	}
}

// One index with more events than fit in a message is split, and LastIndex
// does not claim the index until all of it has been delivered.
func TestSplitIndex(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	s := f.mustSubscribe(t, watch(0, nil, berthv1.Topic_TOPIC_CONNECTIONS))
	readSnapshot(t, s, 0)
	evs := make([]*berthv1.Event, 2500)
	for i := range evs {
		evs[i] = connEv(fmt.Sprintf("c%d", i), "p", "eu")
	}
	f.apply(evs...)
	for i, want := range []struct {
		n    int
		last uint64
	}{{1000, 0}, {1000, 0}, {500, 1}} {
		if got := nextEvents(t, s); len(got) != want.n {
			t.Fatalf("message %d: %d events, want %d", i, len(got), want.n)
		}
		if got := s.LastIndex(); got != want.last {
			t.Fatalf("message %d: LastIndex = %d, want %d", i, got, want.last)
		}
	}
}

// Subscribing while events are published concurrently: each subscriber's
// snapshot plus its events must rebuild exactly the matching state, with
// every matching event after the snapshot delivered once, in order.
func TestSubscribeWhilePublishing(t *testing.T) {
	checkLeaks(t)
	// No subscriber may be reset here: this test is about the snapshot
	// and the first event agreeing.
	f := newTestFSM(t, BrokerConfig{SubscriberBuffer: 65536})
	const commands = 5000
	reqs := []*berthv1.WatchRequest{
		watch(0, nil, berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_CONNECTIONS),
		watch(0, &berthv1.EventFilter{Region: "eu"}, berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_CONNECTIONS),
		watch(0, &berthv1.EventFilter{ProxyId: "p1"}, berthv1.Topic_TOPIC_ASSIGNMENTS),
		watch(0, &berthv1.EventFilter{Endpoint: "e1"}, berthv1.Topic_TOPIC_CONNECTIONS),
	}
	type result struct {
		snapIndex uint64
		state     map[string]*berthv1.Event
		events    []uint64
		err       error
	}
	results := make([]result, len(reqs)*3)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var subs []*Subscription
	var subsMu sync.Mutex
	var wg sync.WaitGroup
	publishing := make(chan struct{})
	for i := range results {
		req := reqs[i%len(reqs)]
		wg.Go(func() {
			if i >= len(reqs) {
				<-publishing // the rest subscribe mid-stream
			}
			r := &results[i]
			s, err := f.subscribe(req)
			if err != nil {
				r.err = err
				return
			}
			defer s.Close()
			subsMu.Lock()
			subs = append(subs, s)
			subsMu.Unlock()
			r.state = map[string]*berthv1.Event{}
			for {
				resp, err := s.Next(ctx)
				if err != nil {
					if !errors.Is(err, context.Canceled) {
						r.err = err
					}
					return
				}
				switch k := resp.Kind.(type) {
				case *berthv1.WatchResponse_Snapshot:
					r.snapIndex = k.Snapshot.Index
					for _, ev := range k.Snapshot.Events {
						r.state[objKey(ev)] = ev
					}
				case *berthv1.WatchResponse_Events:
					for _, ev := range k.Events.Events {
						r.events = append(r.events, ev.Index)
						if ev.Op == berthv1.EventOp_EVENT_OP_DELETE {
							delete(r.state, objKey(ev))
						} else {
							r.state[objKey(ev)] = ev
						}
					}
				default:
					r.err = fmt.Errorf("unexpected %v", resp)
					return
				}
			}
		})
	}
	regions := []string{"eu", "us"}
	for i := range commands {
		if i == commands/3 {
			close(publishing)
		}
		// A connection keeps its proxy and endpoints: filters do not
		// signal objects that leave them.
		k := i % 50
		p := fmt.Sprintf("p%d", k%3)
		region := regions[k%3%2]
		c := connEv(fmt.Sprintf("c%d", k), p, region, fmt.Sprintf("e%d", k%4))
		switch i % 5 {
		case 0:
			f.apply(proxyEv(p, region))
		case 4:
			f.apply(deleted(c))
		default:
			f.apply(c)
		}
	}
	// Wait until everyone has subscribed and read up to the end.
	eventually(t, 30*time.Second, func() bool {
		subsMu.Lock()
		defer subsMu.Unlock()
		if len(subs) != len(results) {
			return false
		}
		for _, s := range subs {
			if s.LastIndex() != commands {
				return false
			}
		}
		return true
	})
	cancel()
	wg.Wait()

	for i, r := range results {
		req := reqs[i%len(reqs)]
		if r.err != nil {
			t.Fatalf("subscriber %d: %v", i, r.err)
		}
		var want []uint64
		for _, ev := range f.log {
			if ev.Index > r.snapIndex && matchReq(req, ev) {
				want = append(want, ev.Index)
			}
		}
		if !slices.Equal(r.events, want) {
			t.Fatalf("subscriber %d (snapshot at %d): events differ from the log:\n got %v\nwant %v", i, r.snapIndex, r.events, want)
		}
		got := slices.Sorted(func(yield func(string) bool) {
			for k := range r.state {
				if !yield(k) {
					return
				}
			}
		})
		if want := f.matching(req); !slices.Equal(got, want) {
			t.Fatalf("subscriber %d: rebuilt state %v, want %v", i, got, want)
		}
	}
}

// A subscriber that never reads does not slow publishing and is reset; a
// live one sees every event, resuming with the gap when it falls behind.
func TestStalledSubscriber(t *testing.T) {
	checkLeaks(t)
	total := uint64(100_000)
	if testing.Short() {
		total = 20_000
	}
	f := newTestFSM(t, BrokerConfig{BufferEvents: 1 << 17, SubscriberBuffer: 1024})
	req := watch(0, nil, berthv1.Topic_TOPIC_PROXIES)
	stalled := f.mustSubscribe(t, req)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var (
		seen     []uint64
		liveErr  error
		liveLast atomic.Uint64
		liveDone atomic.Bool
		resumes  int
		wg       sync.WaitGroup
	)
	// Past index 0, so that a reset before the first event resumes rather
	// than asking for a snapshot (start index 0).
	f.apply(proxyEv("first", "eu"))
	live := f.mustSubscribe(t, req)
	readSnapshot(t, live, 1)
	wg.Go(func() {
		defer liveDone.Store(true)
		s := live
		defer func() { s.Close() }()
		for {
			resp, err := s.Next(ctx)
			switch {
			case errors.Is(err, ErrSubscriptionReset):
				s.Close()
				resumes++
				resumed, err := f.subscribe(watch(s.LastIndex(), nil, berthv1.Topic_TOPIC_PROXIES))
				if err != nil {
					liveErr = err
					return
				}
				s = resumed
				continue
			case errors.Is(err, context.Canceled):
				return
			case err != nil:
				liveErr = err
				return
			}
			switch {
			case resp.GetReset_() != nil:
			case resp.GetSnapshot() != nil:
				liveErr = fmt.Errorf("snapshot after resuming at %d, want the gap", s.LastIndex())
				return
			default:
				seen = append(seen, indexes(resp.GetEvents().GetEvents())...)
			}
			liveLast.Store(s.LastIndex())
		}
	})

	for i := range total {
		f.apply(proxyEv(fmt.Sprintf("p%d", i%100), "eu"))
	}
	eventually(t, 60*time.Second, func() bool { return liveLast.Load() == total+1 || liveDone.Load() })
	cancel()
	wg.Wait()
	if liveErr != nil {
		t.Fatalf("live subscriber: %v", liveErr)
	}
	if !slices.Equal(seen, span(2, total+1)) {
		t.Fatalf("live subscriber saw %d events, want 2..%d in order", len(seen), total+1)
	}
	t.Logf("live subscriber resumed %d times", resumes)

	if resp := next(t, stalled); resp.GetReset_() == nil {
		t.Fatalf("stalled subscriber got %v, want a reset", resp)
	}
	if _, err := stalled.Next(t.Context()); !errors.Is(err, ErrSubscriptionReset) {
		t.Fatalf("Next after reset = %v, want ErrSubscriptionReset", err)
	}
	if got := stalled.LastIndex(); got != 0 {
		t.Fatalf("stalled LastIndex = %d, want 0", got)
	}
	if st := f.broker.Stats(); st.Resets < 1 || st.LastIndex != total+1 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestBrokerReset(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	for i := range 2500 {
		f.apply(proxyEv(fmt.Sprintf("p%d", i), "eu"))
	}
	req := watch(0, nil, berthv1.Topic_TOPIC_PROXIES)

	waiting := f.mustSubscribe(t, watch(2500, nil, berthv1.Topic_TOPIC_PROXIES)) // blocked in Next
	idle := f.mustSubscribe(t, watch(2000, nil, berthv1.Topic_TOPIC_PROXIES))    // events queued, unread
	midSnapshot := f.mustSubscribe(t, req)
	if snap := next(t, midSnapshot).GetSnapshot(); snap == nil || snap.Done {
		t.Fatalf("want the first of several snapshot chunks")
	}

	got := make(chan *berthv1.WatchResponse, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		resp, err := waiting.Next(t.Context())
		if err != nil {
			t.Errorf("Next: %v", err)
		}
		got <- resp
	})
	waitParkedInNext(t, 1)
	f.restore(5000)

	if resp := <-got; resp.GetReset_() == nil {
		t.Fatalf("waiting subscriber got %v, want a reset", resp)
	}
	wg.Wait()
	for name, s := range map[string]*Subscription{"idle": idle, "mid-snapshot": midSnapshot} {
		if resp := next(t, s); resp.GetReset_() == nil {
			t.Fatalf("%s subscriber got %v, want a reset", name, resp)
		}
	}
	for _, s := range []*Subscription{waiting, idle, midSnapshot} {
		if _, err := s.Next(t.Context()); !errors.Is(err, ErrSubscriptionReset) {
			t.Fatalf("Next after reset = %v, want ErrSubscriptionReset", err)
		}
	}
	if got := midSnapshot.LastIndex(); got != 0 {
		t.Fatalf("LastIndex after a partial snapshot = %d, want 0", got)
	}
	st := f.broker.Stats()
	if want := (BrokerStats{Subscribers: 3, Resets: 3, Buffered: 0, BufStart: 5000, LastIndex: 5000}); st != want {
		t.Fatalf("Stats = %+v, want %+v", st, want)
	}

	// Older than the restore: a snapshot. At the restore: only what follows.
	before := f.mustSubscribe(t, watch(waiting.LastIndex(), nil, berthv1.Topic_TOPIC_PROXIES))
	readSnapshot(t, before, 5000)
	at := f.mustSubscribe(t, watch(5000, nil, berthv1.Topic_TOPIC_PROXIES))
	f.apply(proxyEv("after", "eu"))
	for _, s := range []*Subscription{before, at} {
		if got := nextEvents(t, s); !slices.Equal(got, []uint64{5001}) {
			t.Fatalf("events after restore = %v, want [5001]", got)
		}
	}
}

func TestCloseUnblocksNext(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	s := f.mustSubscribe(t, watch(0, nil, berthv1.Topic_TOPIC_PROXIES))
	readSnapshot(t, s, 0)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Next(context.Background())
		errc <- err
	}()
	waitParkedInNext(t, 1)
	s.Close()
	if err := <-errc; !errors.Is(err, ErrSubscriptionClosed) {
		t.Fatalf("Next = %v, want ErrSubscriptionClosed", err)
	}
	s.Close() // idempotent
	if _, err := s.Next(t.Context()); !errors.Is(err, ErrSubscriptionClosed) {
		t.Fatalf("Next after Close = %v, want ErrSubscriptionClosed", err)
	}
	if got := f.broker.Stats().Subscribers; got != 0 {
		t.Fatalf("Subscribers = %d, want 0", got)
	}
}

func TestContextCancelUnblocksNext(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	s := f.mustSubscribe(t, watch(0, nil, berthv1.Topic_TOPIC_PROXIES))
	readSnapshot(t, s, 0)
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := s.Next(ctx)
		errc <- err
	}()
	waitParkedInNext(t, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
	// The subscription still works with a live context.
	f.apply(proxyEv("p", "eu"))
	if got := nextEvents(t, s); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("events = %v, want [1]", got)
	}
}

// Many subscribers waiting at once are all woken by one publish.
func TestPublishWakesAllWaiters(t *testing.T) {
	checkLeaks(t)
	f := newTestFSM(t, BrokerConfig{})
	const n = 20
	var wg sync.WaitGroup
	got := make(chan []uint64, n)
	for range n {
		s := f.mustSubscribe(t, watch(0, nil, berthv1.Topic_TOPIC_PROXIES))
		readSnapshot(t, s, 0)
		wg.Go(func() {
			resp, err := s.Next(t.Context())
			if err != nil {
				t.Errorf("Next: %v", err)
				return
			}
			got <- indexes(resp.GetEvents().GetEvents())
		})
	}
	waitParkedInNext(t, n)
	f.apply(proxyEv("p", "eu"))
	wg.Wait()
	close(got)
	count := 0
	for evs := range got {
		if !slices.Equal(evs, []uint64{1}) {
			t.Fatalf("events = %v, want [1]", evs)
		}
		count++
	}
	if count != n {
		t.Fatalf("%d subscribers woke, want %d", count, n)
	}
}

// BenchmarkPublish shows that publishing costs the same whatever the number
// of subscribers, one of which never reads. publish-ns/op is the time spent
// inside Publish alone; ns/op also counts the subscribers competing for CPU.
func BenchmarkPublish(b *testing.B) {
	for _, bc := range []struct {
		name          string
		live, stalled int
	}{
		{"subscribers=0", 0, 0},
		{"subscribers=1/live", 1, 0},
		{"subscribers=1/stalled", 0, 1},
		{"subscribers=10/9live+1stalled", 9, 1},
		{"subscribers=100/99live+1stalled", 99, 1},
		{"subscribers=1000/999live+1stalled", 999, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := &testFSM{broker: NewBroker(BrokerConfig{}, slog.New(slog.DiscardHandler))}
			req := watch(0, nil, berthv1.Topic_TOPIC_PROXIES)
			for range bc.stalled {
				s, _ := f.subscribe(req)
				defer s.Close()
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			for range bc.live {
				s, _ := f.subscribe(req)
				wg.Go(func() {
					defer func() { s.Close() }()
					for {
						_, err := s.Next(ctx)
						if errors.Is(err, ErrSubscriptionReset) {
							s.Close()
							f.mu.RLock()
							s, _ = f.broker.Subscribe(watch(s.LastIndex(), nil, berthv1.Topic_TOPIC_PROXIES), f.applied, nil)
							f.mu.RUnlock()
							continue
						}
						if err != nil {
							return
						}
					}
				})
			}
			b.ReportAllocs()
			var inPublish time.Duration
			index := uint64(0)
			for b.Loop() {
				ev := proxyEv("p", "eu")
				f.mu.Lock()
				index++
				f.applied = index
				ev.Index = index
				start := time.Now()
				f.broker.Publish(index, []*berthv1.Event{ev})
				inPublish += time.Since(start)
				f.mu.Unlock()
			}
			b.ReportMetric(float64(inPublish.Nanoseconds())/float64(b.N), "publish-ns/op")
			cancel()
			wg.Wait()
		})
	}
}
