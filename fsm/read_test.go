package fsm

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

func ids[T interface{ GetId() string }](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.GetId()
	}
	return out
}

// pageAll pages through list with limit and returns every id and the
// number of pages.
func pageAll[T interface{ GetId() string }](t *testing.T, limit int, list func(after string, limit int) ([]T, string)) ([]string, int) {
	t.Helper()
	var all []string
	after, pages := "", 0
	for {
		got, next := list(after, limit)
		pages++
		if len(got) > limit {
			t.Fatalf("page of %d, limit %d", len(got), limit)
		}
		all = append(all, ids(got)...)
		if next == "" {
			return all, pages
		}
		if len(got) != limit || next != got[len(got)-1].GetId() {
			t.Fatalf("next %q after a page of %d ending %v", next, len(got), ids(got))
		}
		after = next
		if pages > 1_000_000 {
			t.Fatal("paging does not end")
		}
	}
}

func TestListProxies(t *testing.T) {
	h := newHarness(t)
	for i := range 10 {
		h.ok(registerProxy(fmt.Sprintf("p%d", i), fmt.Sprintf("r%d", i%2)))
	}
	h.ok(setAdmin("p1", adminCordoned))
	h.ok(setHealth("p2", down, 0))
	h.ok(setHealth("p3", unhealthy, 0))

	all, next := h.s.ListProxies(ProxyFilter{}, "", 0)
	if len(all) != 10 || next != "" || !slices.IsSorted(ids(all)) {
		t.Errorf("all: %v next %q", ids(all), next)
	}
	for _, tt := range []struct {
		name string
		f    ProxyFilter
		want []string
	}{
		{"region", ProxyFilter{Region: "r1"}, []string{"p1", "p3", "p5", "p7", "p9"}},
		{"status", ProxyFilter{Statuses: []berthv1.ProxyStatus{statusCordoned, statusDown}}, []string{"p1", "p2"}},
		{"both", ProxyFilter{Region: "r1", Statuses: []berthv1.ProxyStatus{statusActive}}, []string{"p5", "p7", "p9"}},
		{"none", ProxyFilter{Region: "r9"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, limit := range []int{1, 2, 3, 100} {
				got, _ := pageAll(t, limit, func(after string, limit int) ([]*berthv1.Proxy, string) {
					return h.s.ListProxies(tt.f, after, limit)
				})
				if !slices.Equal(got, tt.want) {
					t.Errorf("limit %d: %v, want %v", limit, got, tt.want)
				}
			}
		})
	}
	// A page that ends exactly at the last match says there is no more.
	if got, next := h.s.ListProxies(ProxyFilter{Region: "r1"}, "p5", 2); !slices.Equal(ids(got), []string{"p7", "p9"}) || next != "" {
		t.Errorf("last page %v next %q", ids(got), next)
	}
	// A cursor need not exist.
	if got, _ := h.s.ListProxies(ProxyFilter{}, "p45", 0); !slices.Equal(ids(got), []string{"p5", "p6", "p7", "p8", "p9"}) {
		t.Errorf("after p45: %v", ids(got))
	}
}

func TestListMovesAndEndpoints(t *testing.T) {
	h := moveSetup(t)
	h.ok(createMoves(mv("m1", "a1", "a", "b"), mv("m2", "a2", "a", "b"), mv("m3", "b1", "b", "a")))
	h.ok(updateMove("m2", moveAborted, "", "x"))
	for _, tt := range []struct {
		f    MoveFilter
		want []string
	}{
		{MoveFilter{}, []string{"m1", "m2", "m3"}},
		{MoveFilter{States: []berthv1.MoveState{movePending}}, []string{"m1", "m3"}},
		{MoveFilter{ProxyID: "b"}, []string{"m1", "m2", "m3"}},
		{MoveFilter{ProxyID: "c"}, nil},
		{MoveFilter{ProxyID: "a", States: []berthv1.MoveState{moveAborted}}, []string{"m2"}},
	} {
		got, _ := pageAll(t, 1, func(after string, limit int) ([]*berthv1.Move, string) {
			return h.s.ListMoves(tt.f, after, limit)
		})
		if !slices.Equal(got, tt.want) {
			t.Errorf("%+v: %v, want %v", tt.f, got, tt.want)
		}
	}
	h.ok(open("b", conn("b2", "api", "zeta")))
	names := func(eps []*berthv1.Endpoint) (out []string) {
		for _, e := range eps {
			out = append(out, e.Name)
		}
		return out
	}
	if eps, next := h.s.ListEndpoints("", "", 2); !slices.Equal(names(eps), []string{"api", "web"}) || next != "web" {
		t.Errorf("endpoints %v next %q", names(eps), next)
	}
	if eps, next := h.s.ListEndpoints("", "web", 2); !slices.Equal(names(eps), []string{"zeta"}) || next != "" {
		t.Errorf("endpoints %v next %q", names(eps), next)
	}
	if eps, _ := h.s.ListEndpoints("a", "", 0); !slices.Equal(names(eps), []string{"web"}) {
		t.Errorf("a serves %v", names(eps))
	}
	if eps, _ := h.s.ListEndpoints("nope", "", 0); len(eps) != 0 {
		t.Errorf("unknown proxy serves %v", names(eps))
	}
}

// TestListConnectionsUsesIndexes lists one proxy's connections out of
// 100k: the walk is over that proxy's index (O(result)), and paging
// through it returns each exactly once, in order.
func TestListConnectionsUsesIndexes(t *testing.T) {
	s, _ := largeState(t)
	const proxy = "proxy-0421"
	want := make([]string, 0, 100)
	for i := 421 * 100; i < 422*100; i++ {
		want = append(want, fmt.Sprintf("conn-%07d", i))
	}

	got, next := s.ListConnections(ConnectionFilter{ProxyID: proxy}, "", 0)
	if !slices.Equal(ids(got), want) || next != "" {
		t.Fatalf("got %d connections (%v...), want %d", len(got), ids(got)[:min(3, len(got))], len(want))
	}
	// White box: the walk is the proxy's own index, not all connections.
	if set := s.connSet(proxy, ""); set != s.connsByProxy[proxy] || set.len() != 100 {
		t.Errorf("ListConnections walks a set of %d for one proxy", set.len())
	}
	paged, pages := pageAll(t, 7, func(after string, limit int) ([]*berthv1.Connection, string) {
		return s.ListConnections(ConnectionFilter{ProxyID: proxy}, after, limit)
	})
	if !slices.Equal(paged, want) || pages != 15 {
		t.Errorf("paged %d connections in %d pages, want 100 in 15", len(paged), pages)
	}

	// By endpoint, and by both: the smaller index is walked.
	byEp, _ := s.ListConnections(ConnectionFilter{Endpoint: "ep-007"}, "", 0)
	wantEp := 0
	for _, c := range s.conns {
		if slices.Contains(c.Endpoints, "ep-007") {
			wantEp++
		}
	}
	if len(byEp) != wantEp || wantEp == 0 {
		t.Errorf("ep-007 has %d connections, want %d", len(byEp), wantEp)
	}
	for _, c := range byEp {
		if !slices.Contains(c.Endpoints, "ep-007") {
			t.Fatalf("connection %v listed for ep-007", c)
		}
	}
	if set := s.connSet(proxy, "shared"); set != s.connsByProxy[proxy] {
		t.Error("with proxy and a huge endpoint, the proxy's index should be walked")
	}
	both, _ := s.ListConnections(ConnectionFilter{ProxyID: proxy, Endpoint: "ep-084"}, "", 0)
	for _, c := range both {
		if c.ProxyId != proxy || !slices.Contains(c.Endpoints, "ep-084") {
			t.Fatalf("connection %v", c)
		}
	}
	if len(both) == 0 {
		t.Error("no connection of the proxy on ep-084")
	}
	if got, _ := s.ListConnections(ConnectionFilter{ProxyID: "nope"}, "", 0); len(got) != 0 {
		t.Errorf("unknown proxy has %d connections", len(got))
	}
	all, pagesAll := pageAll(t, 10_000, func(after string, limit int) ([]*berthv1.Connection, string) {
		return s.ListConnections(ConnectionFilter{}, after, limit)
	})
	if len(all) != 100_000 || pagesAll != 10 || !slices.IsSorted(all) {
		t.Errorf("all: %d in %d pages", len(all), pagesAll)
	}
}

// TestSnapshotEventsMatchesBruteForce checks SnapshotEvents, which walks
// indexes, against Match applied to every object.
func TestSnapshotEventsMatchesBruteForce(t *testing.T) {
	_, s := randomCommands(5, 3000)
	var every []*berthv1.Event
	for _, p := range s.proxies {
		every = append(every, &berthv1.Event{Index: p.Version, Op: upsert, Region: p.Region, Object: &berthv1.Event_Proxy{Proxy: p}})
	}
	for _, c := range s.conns {
		every = append(every, &berthv1.Event{Index: c.Version, Op: upsert, Region: s.proxies[c.ProxyId].Region, Object: &berthv1.Event_Connection{Connection: c}})
	}
	for _, m := range s.moves {
		region := ""
		if p := s.proxies[m.FromProxyId]; p != nil {
			region = p.Region
		}
		every = append(every, &berthv1.Event{Index: m.Version, Op: upsert, Region: region, Object: &berthv1.Event_Move{Move: m}})
	}
	for _, e := range s.endpoints {
		every = append(every, &berthv1.Event{Index: e.Version, Op: upsert, Object: &berthv1.Event_Endpoint{Endpoint: e}})
	}
	for _, v := range s.servers {
		every = append(every, &berthv1.Event{Index: v.Version, Op: upsert, Object: &berthv1.Event_Server{Server: v}})
	}
	key := func(ev *berthv1.Event) string {
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
		return string(b)
	}
	allTopics := []berthv1.Topic{}
	for n := range berthv1.Topic_name {
		allTopics = append(allTopics, berthv1.Topic(n))
	}
	var filters []*berthv1.EventFilter
	filters = append(filters, nil, &berthv1.EventFilter{})
	for _, region := range []string{"", "r0", "r1"} {
		for _, proxy := range []string{"", "p0", "p3", "nope"} {
			for _, ep := range []string{"", "e1", "e2", "nope"} {
				filters = append(filters, &berthv1.EventFilter{Region: region, ProxyId: proxy, Endpoint: ep})
			}
		}
	}
	topicSets := [][]berthv1.Topic{allTopics, nil}
	for _, tp := range allTopics {
		topicSets = append(topicSets, []berthv1.Topic{tp})
	}
	topicSets = append(topicSets, []berthv1.Topic{berthv1.Topic_TOPIC_ASSIGNMENTS, berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_ENDPOINTS})
	nonEmpty := 0
	for _, topics := range topicSets {
		for _, f := range filters {
			want := map[string]bool{}
			for _, ev := range every {
				if Match(topics, f, ev) {
					want[key(ev)] = true
				}
			}
			got := s.SnapshotEvents(topics, f)
			gotKeys := map[string]bool{}
			for _, ev := range got {
				if gotKeys[key(ev)] {
					t.Errorf("%v %v: duplicate %v", topics, f, ev)
				}
				gotKeys[key(ev)] = true
			}
			if !maps.Equal(gotKeys, want) {
				t.Errorf("topics %v filter %v: got %d events, want %d", topics, f, len(gotKeys), len(want))
			}
			if len(want) > 0 {
				nonEmpty++
			}
		}
	}
	if nonEmpty < len(topicSets)*len(filters)/8 {
		t.Errorf("only %d non-empty cases: the random state is too thin", nonEmpty)
	}
}

// TestSortedSet compares sortedSet with a sorted slice under random
// inserts and removes, across chunk splits and merges.
func TestSortedSet(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var s sortedSet
	ref := map[string]bool{}
	for step := range 60_000 {
		k := fmt.Sprintf("k%05d", r.IntN(5000))
		// Grow for 45k steps, then only shrink, to see splits and merges.
		if step < 45_000 && r.IntN(3) > 0 {
			if got, want := s.insert(k), !ref[k]; got != want {
				t.Fatalf("insert(%s) = %v, want %v", k, got, want)
			}
			ref[k] = true
		} else {
			if got, want := s.remove(k), ref[k]; got != want {
				t.Fatalf("remove(%s) = %v, want %v", k, got, want)
			}
			delete(ref, k)
		}
		if step%5000 == 0 || step == 59_999 {
			want := slices.Sorted(maps.Keys(ref))
			if got := s.keys(); !slices.Equal(got, want) || s.len() != len(want) {
				t.Fatalf("step %d: %d keys, want %d", step, len(got), len(want))
			}
			for i, c := range s.chunks {
				if len(c) == 0 || len(c) >= chunkSplit {
					t.Fatalf("chunk %d has %d keys", i, len(c))
				}
			}
			cursor := fmt.Sprintf("k%05d", r.IntN(5000))
			i, _ := slices.BinarySearch(want, cursor)
			if i < len(want) && want[i] == cursor {
				i++
			}
			if got := slices.Collect(s.after(cursor)); !slices.Equal(got, want[i:]) && !(len(got) == 0 && len(want[i:]) == 0) {
				t.Fatalf("after(%s): %d keys, want %d", cursor, len(got), len(want[i:]))
			}
			for _, k := range want[:min(10, len(want))] {
				if !s.has(k) {
					t.Fatalf("has(%s) = false", k)
				}
			}
		}
	}
	var nilSet *sortedSet
	if nilSet.len() != 0 || nilSet.has("x") || len(nilSet.keys()) != 0 || len(slices.Collect(nilSet.after(""))) != 0 {
		t.Error("nil set is not empty")
	}
}

// TestClonesCopyEveryField fills every field of each stored message and
// checks the hand-written clone equals it: adding a proto field without
// copying it fails here.
func TestClonesCopyEveryField(t *testing.T) {
	check := func(m proto.Message, clone func(proto.Message) proto.Message) {
		fill(m.ProtoReflect())
		if c := clone(m); !proto.Equal(c, m) {
			t.Errorf("%T clone lost fields:\n got %v\nwant %v", m, c, m)
		}
	}
	check(&berthv1.Proxy{}, func(m proto.Message) proto.Message { return cloneProxy(m.(*berthv1.Proxy)) })
	check(&berthv1.Connection{}, func(m proto.Message) proto.Message { return cloneConn(m.(*berthv1.Connection)) })
	check(&berthv1.Move{}, func(m proto.Message) proto.Message { return cloneMove(m.(*berthv1.Move)) })
}

func fill(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			mp.Set(protoreflect.ValueOfString("k").MapKey(), protoreflect.ValueOfString("v"))
		case fd.IsList():
			l := m.Mutable(fd).List()
			l.Append(scalar(fd))
		case fd.Kind() == protoreflect.MessageKind:
			fill(m.Mutable(fd).Message())
		default:
			m.Set(fd, scalar(fd))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("x-" + string(fd.Name()))
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(uint32(fd.Number()) + 7)
	case protoreflect.Uint64Kind:
		return protoreflect.ValueOfUint64(uint64(fd.Number()) + 7)
	case protoreflect.Int64Kind:
		return protoreflect.ValueOfInt64(int64(fd.Number()) + 7)
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(int32(fd.Number()) + 7)
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	}
	panic(fmt.Sprintf("fill: unhandled kind %v", fd.Kind()))
}
