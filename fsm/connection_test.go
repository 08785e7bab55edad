package fsm

import (
	"slices"
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"google.golang.org/protobuf/proto"
)

// twoProxies is a state with proxies a (region ra) and b (region rb).
func twoProxies(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	h.ok(registerProxy("a", "ra"))
	h.ok(registerProxy("b", "rb"))
	return h
}

func TestOpenConnection(t *testing.T) {
	h := twoProxies(t)
	in := &berthv1.Connection{
		Id: "c1", Slot: "s1", AgentId: "agent-1", Endpoints: []string{"web", "api"},
		// The registry's own fields are ignored.
		State: connMoving, OpenedIndex: 77, MoveId: "m", Version: 77,
	}
	evs := h.ok(connEvents("a", openEv(in)))
	want := &berthv1.Connection{
		Id: "c1", Slot: "s1", AgentId: "agent-1", Endpoints: []string{"web", "api"}, ProxyId: "a",
		State: connActive, OpenedIndex: h.index, OpenedUnixMs: h.now, Version: h.index,
	}
	if c := h.conn("c1"); !proto.Equal(c, want) {
		t.Errorf("connection %v\nwant %v", c, want)
	}
	if got := eventKeys(evs); !slices.Equal(got, []string{"UPSERT conn c1", "UPSERT endpoint api", "UPSERT endpoint web"}) {
		t.Errorf("events %v", got)
	}
	if evs[0].Region != "ra" || evs[1].Region != "" {
		t.Errorf("regions %q %q, want ra and none", evs[0].Region, evs[1].Region)
	}
	in.Endpoints[0] = "changed"
	if h.conn("c1").Endpoints[0] != "web" {
		t.Error("stored connection aliases the command's endpoints")
	}

	t.Run("proxy_id may be set to its own proxy", func(t *testing.T) {
		c := conn("c2", "web")
		c.ProxyId = "a"
		h.ok(connEvents("a", openEv(c)))
	})
	t.Run("repeated open is idempotent", func(t *testing.T) {
		v := h.conn("c1").Version
		if evs := h.ok(connEvents("a", openEv(&berthv1.Connection{Id: "c1", Slot: "s1", AgentId: "agent-1", Endpoints: []string{"web", "api"}}))); len(evs) != 0 {
			t.Errorf("events %v", eventKeys(evs))
		}
		if h.conn("c1").Version != v {
			t.Error("version changed")
		}
	})
	t.Run("repeated open updates what changed", func(t *testing.T) {
		opened := h.conn("c1").OpenedIndex
		evs := h.ok(connEvents("a", openEv(&berthv1.Connection{Id: "c1", Slot: "s1", AgentId: "agent-1", Endpoints: []string{"web"}})))
		c := h.conn("c1")
		if c.OpenedIndex != opened || c.Version != h.index || !slices.Equal(c.Endpoints, []string{"web"}) {
			t.Errorf("connection %v", c)
		}
		if got := eventKeys(evs); !slices.Equal(got, []string{"UPSERT conn c1", "DELETE endpoint api"}) {
			t.Errorf("events %v", got)
		}
	})
}

func TestConnectionEventRefusals(t *testing.T) {
	long := make([]string, 65)
	for i := range long {
		long[i] = "e" + strings.Repeat("x", i%5) + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	tests := []struct {
		name string
		ev   *berthv1.ConnectionEvent
		code berthv1.ResultCode
		msg  string
	}{
		{"no kind", &berthv1.ConnectionEvent{}, codeInvalid, "neither open nor close"},
		{"nil event", nil, codeInvalid, "neither open nor close"},
		{"open without connection", &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{}}}, codeInvalid, "open.connection: missing"},
		{"empty id", openEv(conn("")), codeInvalid, "open.connection.id: empty"},
		{"bad id", openEv(conn("c/1")), codeInvalid, "open.connection.id"},
		{"bad slot", openEv(&berthv1.Connection{Id: "c9", Slot: "s 1"}), codeInvalid, "open.connection.slot"},
		{"bad agent", openEv(&berthv1.Connection{Id: "c9", AgentId: strings.Repeat("a", 129)}), codeInvalid, "open.connection.agent_id"},
		{"bad endpoint", openEv(conn("c9", "Web")), codeInvalid, "open.connection.endpoints[0]"},
		{"endpoint dash", openEv(conn("c9", "web-")), codeInvalid, "starts or ends with '-'"},
		{"endpoint long", openEv(conn("c9", strings.Repeat("e", 64))), codeInvalid, "64 characters, at most 63"},
		{"duplicate endpoint", openEv(conn("c9", "web", "api", "web")), codeInvalid, "endpoints[2]: \"web\" listed twice"},
		{"too many endpoints", openEv(conn("c9", long...)), codeInvalid, "65 endpoints, at most 64"},
		{"other proxy_id", openEv(&berthv1.Connection{Id: "c9", ProxyId: "b"}), codeInvalid, "open.connection.proxy_id"},
		{"held by another proxy", openEv(conn("b1")), codeExists, `held by proxy "b"`},
		{"unknown move", openMoveEv(conn("c9"), "nope"), codeNotFound, `move "nope"`},
		{"bad move id", openMoveEv(conn("c9"), "m 1"), codeInvalid, "open.move_id"},
		{"move to another proxy", openMoveEv(conn("c9"), "m-ab"), codePrecondition, `goes to proxy "b", not "a"`},
		{"move of itself", openMoveEv(conn("b1"), "m-ab"), codeExists, `held by proxy "b"`},
		{"close bad id", closeEv(""), codeInvalid, "close.connection_id: empty"},
		{"close on another proxy", closeEv("b1"), codePrecondition, `held by proxy "b", not "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := twoProxies(t)
			h.ok(open("a", conn("a1", "web")))
			h.ok(open("b", conn("b1", "web")))
			h.ok(createMoves(mv("m-ab", "a1", "a", "b"), mv("m-ba", "b1", "b", "a")))
			// The batch below comes from "a": of these, only m-ba (to a)
			// could be accepted by it.
			res := h.refused(connEvents("a", tt.ev), tt.code)
			if len(res.EventErrors) != 1 || res.EventErrors[0].Position != 0 || res.EventErrors[0].Code != tt.code {
				t.Fatalf("event errors %v", res.EventErrors)
			}
			if !strings.Contains(res.EventErrors[0].Message, tt.msg) {
				t.Errorf("event error %q does not contain %q", res.EventErrors[0].Message, tt.msg)
			}
			if !strings.Contains(res.Message, "all 1 entries refused") {
				t.Errorf("message %q", res.Message)
			}
		})
	}
}

func TestConnectionEventsPartialBatch(t *testing.T) {
	h := twoProxies(t)
	h.ok(open("b", conn("b1", "web")))
	res, evs := h.do(connEvents("a",
		openEv(conn("c1", "web")),
		openEv(conn("b1", "web")), // held by b
		openEv(conn("c2", "Bad")), // bad endpoint name
		closeEv("c1"),
		closeEv("unknown"), // idempotent
		openEv(conn("c3", "api")),
	))
	if res.Code != codeOK {
		t.Fatalf("code %v %q", res.Code, res.Message)
	}
	var positions []uint32
	var codes []berthv1.ResultCode
	for _, e := range res.EventErrors {
		positions = append(positions, e.Position)
		codes = append(codes, e.Code)
	}
	if !slices.Equal(positions, []uint32{1, 2}) || !slices.Equal(codes, []berthv1.ResultCode{codeExists, codeInvalid}) {
		t.Errorf("event errors %v", res.EventErrors)
	}
	if got := eventKeys(evs); !slices.Equal(got, []string{"UPSERT conn c1", "DELETE conn c1", "UPSERT conn c3", "UPSERT endpoint api"}) {
		t.Errorf("events %v", got)
	}
	if _, ok := h.s.Connection("c2"); ok {
		t.Error("refused connection c2 stored")
	}
	if c := h.conn("b1"); c.ProxyId != "b" {
		t.Errorf("b1 moved to %q", c.ProxyId)
	}
	// web is unchanged overall (c1 came and went): no event for it.
	if e, _ := h.s.Endpoint("web"); e.ConnectionCount != 1 || e.Version == h.index {
		t.Errorf("endpoint web %v", e)
	}
}

func TestConnectionEventsEnvelopeRefused(t *testing.T) {
	tooMany := make([]*berthv1.ConnectionEvent, MaxEventsPerCommand+1)
	for i := range tooMany {
		tooMany[i] = closeEv("x")
	}
	h := twoProxies(t)
	h.ok(open("a", conn("a1", "web")))
	h.ok(registerProxy("d", "r"))
	h.ok(setHealth("d", down, 0))
	for _, tt := range []struct {
		name string
		cmd  *berthv1.Command
		code berthv1.ResultCode
	}{
		{"unknown proxy", open("nope", conn("c1")), codeNotFound},
		{"down proxy", open("d", conn("c1")), codePrecondition},
		{"bad proxy id", open("", conn("c1")), codeInvalid},
		{"too many events", connEvents("a", tooMany...), codeInvalid},
		{"all refused", connEvents("a", openEv(conn("x", "BAD")), closeEv("")), codeInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) { h.refused(tt.cmd, tt.code) })
	}
	if evs := h.ok(connEvents("a")); len(evs) != 0 {
		t.Errorf("empty batch: events %v", eventKeys(evs))
	}
}

func TestCloseConnection(t *testing.T) {
	h := twoProxies(t)
	h.ok(open("a", conn("c1", "web"), conn("c2", "web")))
	evs := h.ok(connEvents("a", closeEv("c1")))
	if got := eventKeys(evs); !slices.Equal(got, []string{"DELETE conn c1", "UPSERT endpoint web"}) {
		t.Errorf("events %v", got)
	}
	if evs[0].GetConnection().Id != "c1" || evs[0].Region != "ra" {
		t.Errorf("delete event must carry the last state and region: %v", evs[0])
	}
	if evs := h.ok(connEvents("a", closeEv("c1"))); len(evs) != 0 {
		t.Errorf("second close: events %v", eventKeys(evs))
	}
	evs = h.ok(connEvents("a", closeEv("c2")))
	if got := eventKeys(evs); !slices.Equal(got, []string{"DELETE conn c2", "DELETE endpoint web"}) {
		t.Errorf("events %v", got)
	}
	if _, ok := h.s.Endpoint("web"); ok {
		t.Error("endpoint without connections still listed")
	}
}

func TestReconcileProxy(t *testing.T) {
	h := twoProxies(t)
	h.ok(open("a", conn("keep", "web"), conn("change", "web"), conn("gone", "api"), conn("moving", "web")))
	h.ok(open("b", conn("b1", "web")))
	h.ok(createMoves(mv("m1", "moving", "a", "b")))
	keepBefore := h.conn("keep")

	res, evs := h.do(reconcile("a",
		conn("keep", "web"),
		conn("change", "web", "api"),
		conn("new", "web"),
		conn("b1", "web"),     // held by healthy b: refused
		conn("bad", "BAD"),    // invalid: refused
		conn("new", "web"),    // listed twice: refused
		&berthv1.Connection{}, // invalid: refused
	))
	if res.Code != codeOK {
		t.Fatalf("code %v %q", res.Code, res.Message)
	}
	var got []string
	for _, e := range res.EventErrors {
		got = append(got, e.Code.String())
	}
	want := []string{codeExists.String(), codeInvalid.String(), codeInvalid.String(), codeInvalid.String()}
	if !slices.Equal(got, want) {
		t.Errorf("event errors %v", res.EventErrors)
	}
	if h.conn("keep") != keepBefore {
		t.Error("unchanged connection was rewritten")
	}
	if c := h.conn("change"); !slices.Equal(c.Endpoints, []string{"web", "api"}) || c.Version != h.index {
		t.Errorf("changed connection %v", c)
	}
	if c := h.conn("new"); c.OpenedIndex != h.index || c.State != connActive {
		t.Errorf("new connection %v", c)
	}
	for _, id := range []string{"gone", "moving"} {
		if _, ok := h.s.Connection(id); ok {
			t.Errorf("connection %q not in the list survived", id)
		}
	}
	if m := h.move("m1"); m.State != moveAborted || m.AbortReason != "connection closed" {
		t.Errorf("move of a removed connection: %v", m)
	}
	if c := h.conn("b1"); c.ProxyId != "b" {
		t.Errorf("b1 taken from healthy b: %v", c)
	}
	wantEvents := []string{
		"UPSERT conn change", "UPSERT conn new",
		"DELETE conn gone",
		"DELETE conn moving", "UPSERT move m1 ABORTED",
		// api and web end with the same counts and proxies: no events.
	}
	if got := eventKeys(evs); !slices.Equal(got, wantEvents) {
		t.Errorf("events\n got %v\nwant %v", got, wantEvents)
	}

	t.Run("refused entry keeps the existing record", func(t *testing.T) {
		if res, _ := h.do(reconcile("a", conn("keep", "web"), conn("change", "BAD"), conn("new", "web"))); res.Code != codeOK || len(res.EventErrors) != 1 {
			t.Fatalf("result %v", res)
		}
		if _, ok := h.s.Connection("change"); !ok {
			t.Error("connection with a refused report was deleted")
		}
	})
	t.Run("empty list removes everything", func(t *testing.T) {
		h.ok(reconcile("a"))
		if n := len(h.s.connsByProxy["a"].keys()); n != 0 {
			t.Errorf("%d connections left on a", n)
		}
	})
	t.Run("envelope refusals", func(t *testing.T) {
		many := make([]*berthv1.Connection, MaxReconcileConnections+1)
		for i := range many {
			many[i] = conn("x")
		}
		h.refused(reconcile("nope"), codeNotFound)
		h.refused(reconcile("a", many...), codeInvalid)
		h.refused(reconcile("a", conn("b1")), codeExists)
	})
}

func TestReconcileCompletesAcceptedMove(t *testing.T) {
	h := twoProxies(t)
	h.ok(open("a", conn("c1", "web")))
	h.ok(createMoves(mv("m1", "c1", "a", "b")))
	h.ok(connEvents("b", openMoveEv(conn("c1b", "web"), "m1")))
	// a was cut off, closed c1 after the drain, and reports its full set.
	h.ok(reconcile("a"))
	if m := h.move("m1"); m.State != moveCompleted {
		t.Errorf("move %v: the old side is gone, the new one up: want COMPLETED", m)
	}
}

func TestReconcileTakesConnectionFromDownProxy(t *testing.T) {
	// A DOWN proxy holds no connections, so the only way to see this path
	// is a state restored from elsewhere; build it by hand.
	h := twoProxies(t)
	h.ok(open("b", conn("c1", "web")))
	p := cloneProxy(h.proxy("b"))
	p.Health, p.Status = down, statusDown
	h.s.setProxy(p)
	evs := h.ok(reconcile("a", conn("c1", "web")))
	if c := h.conn("c1"); c.ProxyId != "a" {
		t.Errorf("connection %v", c)
	}
	if got := eventKeys(evs); !slices.Equal(got, []string{"DELETE conn c1", "UPSERT conn c1", "UPSERT endpoint web"}) {
		t.Errorf("events %v", got)
	}
	if evs[0].Region != "rb" || evs[1].Region != "ra" {
		t.Errorf("regions %q %q", evs[0].Region, evs[1].Region)
	}
}

func TestEndpointsDerived(t *testing.T) {
	h := newHarness(t)
	for _, p := range []string{"p3", "p1", "p2"} {
		h.ok(registerProxy(p, "r"))
	}
	h.ok(open("p3", conn("c1", "web"), conn("c2", "web", "api")))
	h.ok(open("p1", conn("c3", "web")))
	e, _ := h.s.Endpoint("web")
	if e.ConnectionCount != 3 || !slices.Equal(e.ProxyIds, []string{"p1", "p3"}) || e.Version != h.index {
		t.Errorf("web %v", e)
	}
	webVersion := e.Version

	// A change elsewhere leaves web alone.
	h.ok(open("p2", conn("c4", "api")))
	if e, _ := h.s.Endpoint("web"); e.Version != webVersion {
		t.Errorf("web version moved without a change: %v", e)
	}
	if e, _ := h.s.Endpoint("api"); e.ConnectionCount != 2 || !slices.Equal(e.ProxyIds, []string{"p2", "p3"}) {
		t.Errorf("api %v", e)
	}
	// One event per endpoint per command, however many connections moved.
	evs := h.ok(open("p2", conn("c5", "web"), conn("c6", "web"), conn("c7", "web")))
	if got := eventKeys(evs); !slices.Equal(got, []string{"UPSERT conn c5", "UPSERT conn c6", "UPSERT conn c7", "UPSERT endpoint web"}) {
		t.Errorf("events %v", got)
	}
	if e := evs[3].GetEndpoint(); e.ConnectionCount != 6 || !slices.Equal(e.ProxyIds, []string{"p1", "p2", "p3"}) {
		t.Errorf("web %v", e)
	}
	// Closing p1's only web connection drops p1 from the list.
	h.ok(connEvents("p1", closeEv("c3")))
	if e, _ := h.s.Endpoint("web"); !slices.Equal(e.ProxyIds, []string{"p2", "p3"}) || e.ConnectionCount != 5 {
		t.Errorf("web %v", e)
	}
	if eps, _ := h.s.ListEndpoints("p1", "", 0); len(eps) != 0 {
		t.Errorf("p1 serves %v", eps)
	}
	if eps, _ := h.s.ListEndpoints("p3", "", 0); len(eps) != 2 || eps[0].Name != "api" || eps[1].Name != "web" {
		t.Errorf("p3 serves %v", eps)
	}
}

func TestServers(t *testing.T) {
	h := newHarness(t)
	evs := h.ok(upsertServer("s2", "10.0.0.2:7000", "10.0.0.2:7001"))
	if len(evs) != 1 || evs[0].GetServer().Version != h.index || evs[0].Region != "" {
		t.Errorf("events %v", evs)
	}
	h.ok(upsertServer("s1", "10.0.0.1:7000", ""))
	if evs := h.ok(upsertServer("s1", "10.0.0.1:7000", "")); len(evs) != 0 {
		t.Errorf("identical upsert: %v", eventKeys(evs))
	}
	h.ok(upsertServer("s1", "10.0.0.1:7000", "10.0.0.1:7001"))
	if v, _ := h.s.Server("s1"); v.GrpcAddress != "10.0.0.1:7001" || v.Version != h.index {
		t.Errorf("server %v", v)
	}
	if got := h.s.Servers(); len(got) != 2 || got[0].Id != "s1" || got[1].Id != "s2" {
		t.Errorf("servers %v", got)
	}
	for _, tt := range []struct {
		name string
		cmd  *berthv1.Command
		code berthv1.ResultCode
	}{
		{"bad raft address", upsertServer("s3", "nohostport", ""), codeInvalid},
		{"bad grpc address", upsertServer("s3", "h:1", "h:99999"), codeInvalid},
		{"empty id", upsertServer("", "h:1", ""), codeInvalid},
		{"no server", cmdOf(&berthv1.UpsertServerCommand{}), codeInvalid},
		{"remove unknown", removeServer("s9"), codeNotFound},
		{"remove empty id", removeServer(""), codeInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) { h.refused(tt.cmd, tt.code) })
	}
	evs = h.ok(removeServer("s2"))
	if got := eventKeys(evs); !slices.Equal(got, []string{"DELETE server s2"}) {
		t.Errorf("events %v", got)
	}
	if h.s.Counts().Servers != 1 {
		t.Errorf("counts %+v", h.s.Counts())
	}
}

func TestBatchAppliesEachCommandOnItsOwn(t *testing.T) {
	s := NewState()
	batch := &berthv1.Command{NowUnixMs: 1000, Kind: &berthv1.Command_Batch{Batch: &berthv1.CommandBatch{Commands: []*berthv1.Command{
		{NowUnixMs: 1000, Kind: &berthv1.Command_RegisterProxy{RegisterProxy: &berthv1.RegisterProxyCommand{Proxy: &berthv1.Proxy{Id: "p1"}}}},
		{NowUnixMs: 1000, Kind: &berthv1.Command_SetProxyAdminState{SetProxyAdminState: &berthv1.SetProxyAdminStateCommand{ProxyId: "ghost", AdminState: berthv1.AdminState_ADMIN_STATE_CORDONED}}},
		{NowUnixMs: 1000, Kind: &berthv1.Command_SetProxyAdminState{SetProxyAdminState: &berthv1.SetProxyAdminStateCommand{ProxyId: "p1", AdminState: berthv1.AdminState_ADMIN_STATE_CORDONED}}},
	}}}}
	res, events := s.Apply(7, batch)
	if res.Code != berthv1.ResultCode_RESULT_CODE_OK || len(res.Results) != 3 {
		t.Fatalf("batch result: %v", res)
	}
	want := []berthv1.ResultCode{berthv1.ResultCode_RESULT_CODE_OK, berthv1.ResultCode_RESULT_CODE_NOT_FOUND, berthv1.ResultCode_RESULT_CODE_OK}
	for i, r := range res.Results {
		if r.Code != want[i] || r.Index != 7 {
			t.Fatalf("result %d: %v, want %v at 7", i, r, want[i])
		}
	}
	p, ok := s.Proxy("p1")
	if !ok || p.Status != berthv1.ProxyStatus_PROXY_STATUS_CORDONED || p.Version != 7 {
		t.Fatalf("p1: %v", p)
	}
	if len(events) != 2 {
		t.Fatalf("want 2 events (register, cordon), got %d", len(events))
	}
	nested := &berthv1.Command{Kind: &berthv1.Command_Batch{Batch: &berthv1.CommandBatch{Commands: []*berthv1.Command{batch}}}}
	if res, _ := s.Apply(8, nested); res.Code != berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT {
		t.Fatalf("nested batch: %v", res)
	}
	empty := &berthv1.Command{Kind: &berthv1.Command_Batch{Batch: &berthv1.CommandBatch{}}}
	if res, _ := s.Apply(9, empty); res.Code != berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT {
		t.Fatalf("empty batch: %v", res)
	}
}
