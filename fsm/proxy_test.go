package fsm

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"google.golang.org/protobuf/proto"
)

func TestDeriveStatus(t *testing.T) {
	tests := []struct {
		admin  berthv1.AdminState
		health berthv1.Health
		want   berthv1.ProxyStatus
	}{
		{adminNone, healthy, statusActive},
		{adminCordoned, healthy, statusCordoned},
		{adminDraining, healthy, statusDraining},
		{adminNone, unhealthy, statusUnhealthy},
		{adminCordoned, unhealthy, statusUnhealthy},
		{adminDraining, unhealthy, statusUnhealthy},
		{adminNone, down, statusDown},
		{adminCordoned, down, statusDown},
		{adminDraining, down, statusDown},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%v/%v", tt.admin, tt.health), func(t *testing.T) {
			if got := deriveStatus(tt.admin, tt.health); got != tt.want {
				t.Errorf("deriveStatus = %v, want %v", got, tt.want)
			}
			// The same through commands, in both orders of change.
			for _, order := range []string{"admin first", "health first"} {
				h := newHarness(t)
				h.ok(registerProxy("p", "r"))
				steps := []*berthv1.Command{setAdmin("p", tt.admin), setHealth("p", tt.health, 0)}
				if order == "health first" {
					slices.Reverse(steps)
				}
				for _, c := range steps {
					h.ok(c)
				}
				if got := h.proxy("p").Status; got != tt.want {
					t.Errorf("%s: status %v, want %v", order, got, tt.want)
				}
			}
		})
	}
}

func TestRegisterProxyCreates(t *testing.T) {
	h := newHarness(t)
	in := &berthv1.Proxy{
		Id: "p1", Region: "eu", Zone: "eu-1a",
		Addresses: &berthv1.ProxyAddresses{Tunnel: "10.0.0.1:7000", Downstream: "edge.example.com:443", Peer: "[fe80::1]:7001"},
		Labels:    map[string]string{"tier": "gold", "example.com/rack": "r1"},
		// Fields the registry owns are ignored.
		Status: statusDown, AdminState: adminDraining, Health: down, RegisteredIndex: 99, Version: 99,
	}
	evs := h.ok(registerFull(in))
	p := h.proxy("p1")
	want := &berthv1.Proxy{
		Id: "p1", Region: "eu", Zone: "eu-1a", Addresses: in.Addresses, Labels: in.Labels,
		CapacityWeight: 1, Status: statusActive, AdminState: adminNone, Health: healthy,
		RegisteredIndex: 1, HealthChangedUnixMs: h.now, Version: 1,
	}
	if !proto.Equal(p, want) {
		t.Errorf("proxy = %v\nwant %v", p, want)
	}
	if got := eventKeys(evs); !slices.Equal(got, []string{"UPSERT proxy p1"}) {
		t.Errorf("events %v", got)
	}
	if evs[0].Region != "eu" || evs[0].GetProxy() != p {
		t.Errorf("event %v: want region eu and the stored proxy", evs[0])
	}
	// The command's message is not kept: changing it later changes nothing.
	in.Labels["tier"] = "tin"
	in.Addresses.Tunnel = "10.9.9.9:1"
	if p.Labels["tier"] != "gold" || p.Addresses.Tunnel != "10.0.0.1:7000" {
		t.Errorf("stored proxy aliases the command: %v", p)
	}
}

func TestRegisterProxyUpdates(t *testing.T) {
	h := newHarness(t)
	h.ok(registerFull(&berthv1.Proxy{Id: "p1", Region: "eu", CapacityWeight: 3}))
	h.ok(setAdmin("p1", adminCordoned))
	h.ok(setHealth("p1", unhealthy, 0))
	before := h.proxy("p1")

	evs := h.ok(registerFull(&berthv1.Proxy{Id: "p1", Region: "us", Zone: "z", CapacityWeight: 0, Labels: map[string]string{"a": "b"}}))
	p := h.proxy("p1")
	if len(evs) != 1 || p.Version != h.index {
		t.Fatalf("events %v version %d", eventKeys(evs), p.Version)
	}
	if p.Region != "us" || p.Zone != "z" || p.Labels["a"] != "b" || p.CapacityWeight != 1 {
		t.Errorf("fields not updated: %v", p)
	}
	if p.AdminState != adminCordoned || p.Status != statusCordoned || p.Health != healthy {
		t.Errorf("admin state must stay and health become HEALTHY: %v", p)
	}
	if p.RegisteredIndex != 1 || p.HealthChangedUnixMs != h.now || p.HealthChangedUnixMs == before.HealthChangedUnixMs {
		t.Errorf("registered_index %d (want 1), health_changed %d (want %d)", p.RegisteredIndex, p.HealthChangedUnixMs, h.now)
	}
	if before.Health != unhealthy || before.Region != "eu" {
		t.Errorf("the old object was modified: %v", before)
	}

	// Registering the same again is a no-op: no event, same version.
	v := p.Version
	evs = h.ok(registerFull(&berthv1.Proxy{Id: "p1", Region: "us", Zone: "z", Labels: map[string]string{"a": "b"}}))
	if len(evs) != 0 || h.proxy("p1").Version != v {
		t.Errorf("identical registration: events %v, version %d -> %d", eventKeys(evs), v, h.proxy("p1").Version)
	}
}

func TestRegisterProxyRefused(t *testing.T) {
	manyLabels := map[string]string{}
	for i := range 40 {
		manyLabels[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name string
		p    *berthv1.Proxy
		msg  string
	}{
		{"missing", nil, "register_proxy.proxy: missing"},
		{"empty id", &berthv1.Proxy{}, "register_proxy.proxy.id: empty"},
		{"bad id", &berthv1.Proxy{Id: "p 1"}, "register_proxy.proxy.id"},
		{"long id", &berthv1.Proxy{Id: strings.Repeat("a", 129)}, "129 characters, at most 128"},
		{"bad region", &berthv1.Proxy{Id: "p", Region: "eu/west"}, "register_proxy.proxy.region"},
		{"long zone", &berthv1.Proxy{Id: "p", Zone: strings.Repeat("z", 65)}, "register_proxy.proxy.zone: 65 characters, at most 64"},
		{"too many labels", &berthv1.Proxy{Id: "p", Labels: manyLabels}, "proxy.labels: 40 labels, at most 32"},
		{"empty label key", &berthv1.Proxy{Id: "p", Labels: map[string]string{"": "v"}}, "labels: empty key"},
		{"bad label key", &berthv1.Proxy{Id: "p", Labels: map[string]string{"a b": "v"}}, "labels key"},
		{"long label value", &berthv1.Proxy{Id: "p", Labels: map[string]string{"k": strings.Repeat("v", 257)}}, "257 bytes, at most 256"},
		{"bad utf8 label", &berthv1.Proxy{Id: "p", Labels: map[string]string{"k": "\xff"}}, "not valid UTF-8"},
		{"address no port", &berthv1.Proxy{Id: "p", Addresses: &berthv1.ProxyAddresses{Tunnel: "10.0.0.1"}}, "addresses.tunnel"},
		{"address port 0", &berthv1.Proxy{Id: "p", Addresses: &berthv1.ProxyAddresses{Peer: "h:0"}}, "port must be 1..65535"},
		{"address no host", &berthv1.Proxy{Id: "p", Addresses: &berthv1.ProxyAddresses{Downstream: ":443"}}, "missing host"},
		{"address bad host", &berthv1.Proxy{Id: "p", Addresses: &berthv1.ProxyAddresses{Tunnel: "a*b:1"}}, "neither an IP"},
		{"address zone not utf8", &berthv1.Proxy{Id: "p", Addresses: &berthv1.ProxyAddresses{Tunnel: "[fe80::1%\xff]:80"}}, "addresses.tunnel"},
		{"address control char", &berthv1.Proxy{Id: "p", Addresses: &berthv1.ProxyAddresses{Tunnel: "host\n:80"}}, "addresses.tunnel"},
		{"address long", &berthv1.Proxy{Id: "p", Addresses: &berthv1.ProxyAddresses{Tunnel: strings.Repeat("a", 260) + ":1"}}, "at most 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.ok(registerProxy("other", "r"))
			res := h.refused(registerFull(tt.p), codeInvalid)
			if !strings.Contains(res.Message, tt.msg) {
				t.Errorf("message %q does not contain %q", res.Message, tt.msg)
			}
		})
	}
}

func TestSetProxyAdminState(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("p", "r"))
	evs := h.ok(setAdmin("p", adminDraining))
	if p := h.proxy("p"); p.Status != statusDraining || p.Version != h.index || len(evs) != 1 {
		t.Errorf("proxy %v events %v", p, eventKeys(evs))
	}
	if evs := h.ok(setAdmin("p", adminDraining)); len(evs) != 0 {
		t.Errorf("same admin state again: events %v", eventKeys(evs))
	}
	h.ok(setAdmin("p", adminNone))
	if p := h.proxy("p"); p.Status != statusActive {
		t.Errorf("uncordoned proxy: %v", p)
	}

	for _, tt := range []struct {
		name string
		cmd  *berthv1.Command
		code berthv1.ResultCode
	}{
		{"unknown proxy", setAdmin("nope", adminCordoned), codeNotFound},
		{"unspecified", setAdmin("p", berthv1.AdminState_ADMIN_STATE_UNSPECIFIED), codeInvalid},
		{"unknown enum", setAdmin("p", berthv1.AdminState(42)), codeInvalid},
		{"bad id", setAdmin("", adminCordoned), codeInvalid},
	} {
		t.Run(tt.name, func(t *testing.T) { h.refused(tt.cmd, tt.code) })
	}
}

func TestSetProxyAdminStateKeepsMoves(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("a", "r"))
	h.ok(registerProxy("b", "r"))
	h.ok(open("a", conn("c1", "web")))
	h.ok(createMoves(mv("m1", "c1", "a", "b")))
	h.ok(setAdmin("b", adminDraining))
	h.ok(setAdmin("a", adminCordoned))
	if m := h.move("m1"); m.State != movePending {
		t.Errorf("move %v: admin state changes must not touch moves", m)
	}
}

func TestSetProxyHealth(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("p", "r"))
	h.ok(open("p", conn("c1", "web")))
	v := h.proxy("p").Version

	t.Run("refusals", func(t *testing.T) {
		h.refused(setHealth("nope", unhealthy, 0), codeNotFound)
		h.refused(setHealth("p", unhealthy, v+100), codePrecondition)
		h.refused(setHealth("p", berthv1.Health_HEALTH_UNSPECIFIED, 0), codeInvalid)
		h.refused(setHealth("p", berthv1.Health(7), 0), codeInvalid)
	})
	t.Run("unhealthy keeps connections", func(t *testing.T) {
		evs := h.ok(setHealth("p", unhealthy, v))
		p := h.proxy("p")
		if p.Status != statusUnhealthy || p.HealthChangedUnixMs != h.now || len(evs) != 1 {
			t.Errorf("proxy %v events %v", p, eventKeys(evs))
		}
		h.conn("c1")
		if evs := h.ok(setHealth("p", unhealthy, 0)); len(evs) != 0 {
			t.Errorf("same health again: events %v", eventKeys(evs))
		}
	})
	t.Run("healthy again", func(t *testing.T) {
		h.ok(setHealth("p", healthy, 0))
		if p := h.proxy("p"); p.Status != statusActive {
			t.Errorf("proxy %v", p)
		}
	})
}

func TestProxyDownRemovesConnectionsAndAbortsMoves(t *testing.T) {
	for _, tt := range []struct {
		name   string
		cmd    *berthv1.Command
		reason string
	}{
		{"down", setHealth("b", down, 0), "proxy down"},
		{"deregister", deregister("b"), "proxy deregistered"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			for _, p := range []string{"a", "b", "c"} {
				h.ok(registerProxy(p, "r-"+p))
			}
			h.ok(open("a", conn("a1", "web"), conn("a2", "web")))
			h.ok(open("b", conn("b1", "web", "api"), conn("b2", "api")))
			h.ok(open("c", conn("c1", "web")))
			// a1: a->b PENDING. a2: a->b ACCEPTED (new connection b3 on b).
			// b1: b->c PENDING. c1: c->a, untouched.
			h.ok(createMoves(mv("m-ab", "a1", "a", "b"), mv("m-ab2", "a2", "a", "b"), mv("m-bc", "b1", "b", "c"), mv("m-ca", "c1", "c", "a")))
			h.ok(connEvents("b", openMoveEv(conn("b3", "web"), "m-ab2")))

			evs := h.ok(tt.cmd)
			want := []string{
				"DELETE conn b1", "DELETE conn b2", "DELETE conn b3",
				"UPSERT move m-ab ABORTED", "UPSERT conn a1",
				"UPSERT move m-ab2 ABORTED", "UPSERT conn a2",
				"UPSERT move m-bc ABORTED",
			}
			if tt.name == "down" {
				want = append(want, "UPSERT proxy b")
			} else {
				want = append(want, "DELETE proxy b")
			}
			want = append(want, "DELETE endpoint api", "UPSERT endpoint web")
			if got := eventKeys(evs); !slices.Equal(got, want) {
				t.Errorf("events\n got %v\nwant %v", got, want)
			}
			for _, ev := range evs {
				if c := ev.GetConnection(); c != nil && c.ProxyId == "b" && ev.Region != "r-b" {
					t.Errorf("event %v: region %q, want r-b", eventKeys([]*berthv1.Event{ev}), ev.Region)
				}
			}
			for _, id := range []string{"m-ab", "m-ab2", "m-bc"} {
				if m := h.move(id); m.State != moveAborted || m.AbortReason != tt.reason || m.Version != h.index {
					t.Errorf("move %v: want ABORTED %q", m, tt.reason)
				}
			}
			if m := h.move("m-ca"); m.State != movePending {
				t.Errorf("unrelated move %v changed", m)
			}
			for _, id := range []string{"a1", "a2"} {
				if c := h.conn(id); c.State != connActive || c.MoveId != "" {
					t.Errorf("connection %v should be ACTIVE again", c)
				}
			}
			if n := h.s.Counts().Connections; n != 3 {
				t.Errorf("%d connections left, want 3 (a1 a2 c1)", n)
			}
			if e, _ := h.s.Endpoint("web"); e.ConnectionCount != 3 || !slices.Equal(e.ProxyIds, []string{"a", "c"}) {
				t.Errorf("endpoint web = %v", e)
			}
		})
	}
}

func TestDeregisterProxy(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("p", "r"))
	h.refused(deregister("nope"), codeNotFound)
	h.refused(deregister("bad id"), codeInvalid)
	h.ok(deregister("p"))
	if _, ok := h.s.Proxy("p"); ok {
		t.Error("proxy still there")
	}
	// Registering again starts afresh.
	h.ok(registerProxy("p", "r"))
	if p := h.proxy("p"); p.RegisteredIndex != h.index {
		t.Errorf("registered_index %d, want %d", p.RegisteredIndex, h.index)
	}
}

func TestDownProxyRegistersAgain(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("p", "r"))
	h.ok(setAdmin("p", adminCordoned))
	h.ok(setHealth("p", down, 0))
	h.refused(open("p", conn("c1")), codePrecondition)
	h.refused(reconcile("p", conn("c1")), codePrecondition)
	h.ok(registerProxy("p", "r"))
	if p := h.proxy("p"); p.Health != healthy || p.Status != statusCordoned {
		t.Errorf("re-registered proxy %v: want HEALTHY, still CORDONED", p)
	}
	h.ok(open("p", conn("c1")))
}

func TestRemoveProxyOnlyWhenDown(t *testing.T) {
	remove := func(id string) *berthv1.Command { return cmdOf(&berthv1.RemoveProxyCommand{ProxyId: id}) }
	h := newHarness(t)
	h.ok(registerProxy("p", "r"))
	h.ok(registerProxy("q", "r"))
	h.ok(open("p", conn("c1", "web")))
	h.ok(createMoves(mv("m1", "c1", "p", "q")))
	h.refused(remove("nope"), codeNotFound)
	h.refused(remove("bad id"), codeInvalid)
	// Up (active, then unhealthy but still reachable): refused, nothing changes.
	h.refused(remove("p"), codePrecondition)
	h.ok(setHealth("p", berthv1.Health_HEALTH_UNHEALTHY, 0))
	if res := h.refused(remove("p"), codePrecondition); !strings.Contains(res.Message, "UNHEALTHY") {
		t.Errorf("refusal %q does not say the proxy is UNHEALTHY", res.Message)
	}
	if h.conn("c1") == nil || h.move("m1").State != berthv1.MoveState_MOVE_STATE_PENDING {
		t.Fatal("a refused removal changed the registry")
	}
	// Down: its connections are gone and its moves aborted, so it can go.
	h.ok(setHealth("p", down, 0))
	evs := h.ok(remove("p"))
	if _, ok := h.s.Proxy("p"); ok {
		t.Fatal("proxy p still listed")
	}
	if len(evs) != 1 || evs[0].Op != berthv1.EventOp_EVENT_OP_DELETE || evs[0].GetProxy().GetId() != "p" {
		t.Errorf("events %v, want one DELETE of p", evs)
	}
	// The aborted move stays as history; q is untouched.
	if m := h.move("m1"); m.State != berthv1.MoveState_MOVE_STATE_ABORTED {
		t.Errorf("move m1 %v", m)
	}
	if p := h.proxy("q"); p.Status != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE {
		t.Errorf("proxy q %v", p)
	}
	h.refused(remove("p"), codeNotFound)
	// A removed proxy that comes back registers afresh.
	h.ok(registerProxy("p", "r"))
}
