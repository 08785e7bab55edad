package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/berthhq/berth/dataplane/ring"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestEndpointOf(t *testing.T) {
	tests := []struct {
		host, header string
		want         string
		bad          bool
	}{
		{host: "web.example.com", want: "web"},
		{host: "web.example.com:8080", want: "web"},
		{host: "WEB.example.com", want: "web"},
		{host: "localhost:8080", want: "localhost"},
		{host: "anything", header: "api", want: "api"},
		{host: "127.0.0.1:8080", bad: true},
		{host: "x", header: "Not_A_Label", bad: true},
		{host: "", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.host+"|"+tt.header, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.Host = tt.host
			if tt.header != "" {
				r.Header.Set(EndpointHeader, tt.header)
			}
			got, err := endpointOf(r)
			if tt.bad {
				if !errors.Is(err, errInvalidEndpoint) {
					t.Fatalf("want errInvalidEndpoint, got %q %v", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q %v, want %q", got, err, tt.want)
			}
		})
	}
}

func TestStatusFor(t *testing.T) {
	tests := []struct {
		err    error
		code   int
		reason string
	}{
		{errInvalidEndpoint, http.StatusBadRequest, "invalid-endpoint"},
		{errNoUpstream, http.StatusServiceUnavailable, "no-upstream"},
		{errors.Join(errUnreachable, context.DeadlineExceeded), http.StatusGatewayTimeout, "upstream-timeout"},
		{errUnreachable, http.StatusBadGateway, "upstream-unreachable"},
		{errors.New("other"), http.StatusBadGateway, "upstream-error"},
	}
	for _, tt := range tests {
		code, reason := statusFor(tt.err)
		if code != tt.code || reason != tt.reason {
			t.Errorf("%v: got %d %s, want %d %s", tt.err, code, reason, tt.code, tt.reason)
		}
	}
}

func TestValidateHello(t *testing.T) {
	ok := func() *berthv1.TunnelHello {
		return &berthv1.TunnelHello{AgentId: "a1", Slot: "s1", Endpoints: []string{"web", "api"}}
	}
	tests := map[string]func(h *berthv1.TunnelHello){
		"no agent id":        func(h *berthv1.TunnelHello) { h.AgentId = "" },
		"bad slot":           func(h *berthv1.TunnelHello) { h.Slot = "a b" },
		"no endpoints":       func(h *berthv1.TunnelHello) { h.Endpoints = nil },
		"bad endpoint":       func(h *berthv1.TunnelHello) { h.Endpoints = []string{"Web!"} },
		"duplicate endpoint": func(h *berthv1.TunnelHello) { h.Endpoints = []string{"web", "web"} },
		"too many endpoints": func(h *berthv1.TunnelHello) {
			h.Endpoints = nil
			for i := range 65 {
				h.Endpoints = append(h.Endpoints, "e"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+string(rune('a'+i/26)))
			}
		},
		"bad move id": func(h *berthv1.TunnelHello) { h.MoveId = strings.Repeat("m", 200) },
	}
	if err := validateHello(ok()); err != nil {
		t.Fatalf("valid hello refused: %v", err)
	}
	for name, mutate := range tests {
		t.Run(name, func(t *testing.T) {
			h := ok()
			mutate(h)
			if err := validateHello(h); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

func TestCPLinkBatchesAndAcks(t *testing.T) {
	l := newCPLink()
	open := func(id string) *berthv1.ConnectionEvent {
		return &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{Connection: &berthv1.Connection{Id: id}}}}
	}
	// Disconnected: waiting opens learn at once that nothing was committed.
	if err := <-l.enqueue(open("c0"), true); !errors.Is(err, errNotCommitted) {
		t.Fatalf("disconnected enqueue: %v", err)
	}
	l.up()
	w1 := l.enqueue(open("c1"), true)
	l.enqueue(&berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Close{Close: &berthv1.ConnectionClose{ConnectionId: "c9"}}}, false)
	w3 := l.enqueue(open("c3"), true)
	seq, batch := l.take(100)
	if len(batch) != 3 {
		t.Fatalf("batch of %d", len(batch))
	}
	// The third event was refused; the first applied.
	l.acked(seq, &berthv1.CommandResult{Code: berthv1.ResultCode_RESULT_CODE_OK, EventErrors: []*berthv1.EventError{{Position: 2, Code: berthv1.ResultCode_RESULT_CODE_ALREADY_EXISTS, Message: "dup"}}})
	if err := <-w1; err != nil {
		t.Fatalf("c1: %v", err)
	}
	if err := <-w3; err == nil {
		t.Fatal("c3 should be refused")
	}
	// In flight when the session drops: released as not committed.
	w4 := l.enqueue(open("c4"), true)
	l.take(100)
	l.down()
	if err := <-w4; !errors.Is(err, errNotCommitted) {
		t.Fatalf("c4 after down: %v", err)
	}
}

func TestDirectorySnapshotEventsAndRing(t *testing.T) {
	d := newDirectory("me", ring.Default())
	conn := func(id, proxy string) *berthv1.Event {
		return &berthv1.Event{Index: 5, Op: berthv1.EventOp_EVENT_OP_UPSERT, Object: &berthv1.Event_Connection{Connection: &berthv1.Connection{Id: id, Slot: "s-" + id, ProxyId: proxy, Endpoints: []string{"web"}}}}
	}
	prox := func(id string, st berthv1.ProxyStatus) *berthv1.Event {
		return &berthv1.Event{Index: 5, Object: &berthv1.Event_Proxy{Proxy: &berthv1.Proxy{Id: id, Status: st, Addresses: &berthv1.ProxyAddresses{Peer: id + ":1", Tunnel: id + ":2"}}}}
	}
	ep := &berthv1.Event{Index: 5, Object: &berthv1.Event_Endpoint{Endpoint: &berthv1.Endpoint{Name: "web", ProxyIds: []string{"me", "p2", "p3"}}}}
	// A snapshot in two chunks is applied only when done.
	d.apply(&berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Snapshot{Snapshot: &berthv1.WatchSnapshot{Index: 5, Events: []*berthv1.Event{prox("p2", berthv1.ProxyStatus_PROXY_STATUS_ACTIVE), prox("p3", berthv1.ProxyStatus_PROXY_STATUS_DOWN)}}}})
	if _, ok := d.peerAddress("p2"); ok {
		t.Fatal("partial snapshot applied")
	}
	d.apply(&berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Snapshot{Snapshot: &berthv1.WatchSnapshot{Index: 5, Done: true, Events: []*berthv1.Event{ep, conn("c1", "p2"), conn("c2", "me")}}}})
	if addr, ok := d.peerAddress("p2"); !ok || addr != "p2:1" {
		t.Fatalf("peer address: %q %v", addr, ok)
	}
	if h := d.holders("web"); len(h) != 1 || h[0] != "p2" {
		t.Fatalf("holders (self and DOWN excluded): %v", h)
	}
	if d.ring("web", nil).Len() == 0 || len(d.ring("web", nil).Targets()) != 2 {
		t.Fatalf("ring: %v", d.ring("web", nil).Targets())
	}
	// A deleted connection leaves the ring; an older event is ignored.
	del := conn("c1", "p2")
	del.Index, del.Op = 6, berthv1.EventOp_EVENT_OP_DELETE
	d.apply(&berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Events{Events: &berthv1.WatchEvents{Events: []*berthv1.Event{del}}}})
	stale := conn("c1", "p2")
	stale.Index = 4
	d.apply(&berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Events{Events: &berthv1.WatchEvents{Events: []*berthv1.Event{stale}}}})
	if ts := d.ring("web", nil).Targets(); len(ts) != 1 || ts[0].ID != "c2" {
		t.Fatalf("ring after delete: %v", ts)
	}
	if d.lastIndex() != 6 {
		t.Fatalf("index %d", d.lastIndex())
	}
}
