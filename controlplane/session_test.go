package controlplane_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func conn(id, endpoint string) *berthv1.Connection {
	return &berthv1.Connection{Id: id, Slot: "slot-" + id, AgentId: "agent-1", Endpoints: []string{endpoint}}
}

func opens(conns ...*berthv1.Connection) []*berthv1.ConnectionEvent {
	var out []*berthv1.ConnectionEvent
	for _, c := range conns {
		out = append(out, &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{Connection: c}}})
	}
	return out
}

// sessionClient drives a proxy session stream in a test.
type sessionClient struct {
	t      *testing.T
	stream berthv1.RegistryService_SessionClient
	seq    uint64
	seen   map[string]*berthv1.Event // latest event per object key
	last   uint64
}

func openSession(t *testing.T, c *controlplanetest.Cluster, node int, proxyID string) *sessionClient {
	t.Helper()
	stream, err := c.Registry(node).Session(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Hello{Hello: &berthv1.SessionHello{ProxyId: proxyID}}}); err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil || msg.GetWelcome() == nil {
		t.Fatalf("want welcome, got %v %v", msg, err)
	}
	return &sessionClient{t: t, stream: stream, seen: map[string]*berthv1.Event{}}
}

func key(ev *berthv1.Event) string {
	switch o := ev.Object.(type) {
	case *berthv1.Event_Proxy:
		return "proxy/" + o.Proxy.Id
	case *berthv1.Event_Connection:
		return "conn/" + o.Connection.Id
	case *berthv1.Event_Move:
		return "move/" + o.Move.Id
	case *berthv1.Event_Endpoint:
		return "endpoint/" + o.Endpoint.Name
	}
	return "?"
}

// recvUntil reads the stream, folding updates into s.seen, until cond holds
// for a write ack or the state; it returns the ack it stopped on, if any.
func (s *sessionClient) recvUntil(cond func(ack *berthv1.WriteAck) bool) *berthv1.WriteAck {
	s.t.Helper()
	if cond(nil) { // what was folded in while waiting for something else may already do
		return nil
	}
	for {
		msg, err := s.stream.Recv()
		if err != nil {
			s.t.Fatalf("session: %v", err)
		}
		if ack := msg.GetWriteAck(); ack != nil {
			if cond(ack) {
				return ack
			}
			continue
		}
		var evs []*berthv1.Event
		switch u := msg.GetUpdate().GetKind().(type) {
		case *berthv1.WatchResponse_Snapshot:
			evs = u.Snapshot.Events
			s.last = u.Snapshot.Index
		case *berthv1.WatchResponse_Events:
			evs = u.Events.Events
		}
		for _, ev := range evs {
			s.seen[key(ev)] = ev
			s.last = max(s.last, ev.Index)
		}
		if cond(nil) {
			return nil
		}
	}
}

func (s *sessionClient) send(req *berthv1.SessionRequest) {
	s.t.Helper()
	if err := s.stream.Send(req); err != nil {
		s.t.Fatal(err)
	}
}

func (s *sessionClient) events(evs []*berthv1.ConnectionEvent) *berthv1.WriteAck {
	s.seq++
	seq := s.seq
	s.send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Events{Events: &berthv1.ConnectionEventBatch{Seq: seq, Events: evs}}})
	return s.recvUntil(func(ack *berthv1.WriteAck) bool { return ack != nil && ack.Seq == seq })
}

func (s *sessionClient) load() {
	s.send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Load{Load: &berthv1.LoadSample{Connections: 2, CpuMillicores: 250}}})
}

func proxyStatus(t *testing.T, c *controlplanetest.Cluster, node int, id string) berthv1.ProxyStatus {
	p, err := getProxy(t, c, node, id, berthv1.Consistency_CONSISTENCY_DEFAULT)
	if err != nil {
		t.Fatal(err)
	}
	return p.Status
}

func TestProxySessionEventsHeartbeatsAndReconcile(t *testing.T) {
	clock := controlplanetest.NewFakeClock(time.Unix(1_700_000_000, 0))
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Clock: clock, Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Heartbeat = controlplane.HeartbeatConfig{UnhealthyAfter: 5 * time.Second, DownAfter: 30 * time.Second, Grace: 0, Interval: 20 * time.Millisecond}
	}})
	f := follower(c)
	register(t, c, f, "p1")
	register(t, c, f, "p2")
	s := openSession(t, c, f, "p1")

	// The snapshot carries the peer directory: both proxies.
	s.recvUntil(func(*berthv1.WriteAck) bool { return s.seen["proxy/p1"] != nil && s.seen["proxy/p2"] != nil })

	ack := s.events(opens(conn("c1", "web"), conn("c2", "web"), conn("c3", "Bad_Name")))
	if ack.Result.Code != berthv1.ResultCode_RESULT_CODE_OK || len(ack.Result.EventErrors) != 1 || ack.Result.EventErrors[0].Position != 2 {
		t.Fatalf("ack: %v", ack)
	}
	// Assignments and the endpoint come down the same stream.
	s.recvUntil(func(*berthv1.WriteAck) bool {
		ep := s.seen["endpoint/web"]
		return s.seen["conn/c1"] != nil && s.seen["conn/c2"] != nil && ep != nil && ep.GetEndpoint().ConnectionCount == 2
	})
	list, err := c.Admin(c.Leader()).ListConnections(ctxT(t), &berthv1.ListConnectionsRequest{ProxyId: "p1", Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil || len(list.Connections) != 2 {
		t.Fatalf("connections: %v %v", list, err)
	}

	// Load samples reach the leader's memory even though the session is on
	// a follower.
	s.load()
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		resp, err := c.Admin(f).ListProxies(ctxT(t), &berthv1.ListProxiesRequest{})
		if err != nil {
			return err
		}
		if resp.Load["p1"].GetCpuMillicores() != 250 {
			return fmt.Errorf("no load for p1 yet: %v", resp.Load)
		}
		return nil
	})

	// Silence: UNHEALTHY, then DOWN with its connections gone.
	clock.Advance(6 * time.Second)
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		if st := proxyStatus(t, c, f, "p1"); st != berthv1.ProxyStatus_PROXY_STATUS_UNHEALTHY {
			return fmt.Errorf("status %v", st)
		}
		return nil
	})
	clock.Advance(31 * time.Second)
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		if st := proxyStatus(t, c, f, "p1"); st != berthv1.ProxyStatus_PROXY_STATUS_DOWN {
			return fmt.Errorf("status %v", st)
		}
		return nil
	})
	list, err = c.Admin(f).ListConnections(ctxT(t), &berthv1.ListConnectionsRequest{ProxyId: "p1"})
	if err != nil || len(list.Connections) != 0 {
		t.Fatalf("a down proxy keeps connections: %v %v", list, err)
	}

	// It speaks again: HEALTHY, and a full sync restores what it holds.
	clock.Advance(time.Second)
	s.load()
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		if st := proxyStatus(t, c, f, "p1"); st != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE {
			s.load()
			return fmt.Errorf("status %v", st)
		}
		return nil
	})
	s.seq++
	seq := s.seq
	s.send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_FullSync{FullSync: &berthv1.FullSync{Seq: seq, Connections: []*berthv1.Connection{conn("c1", "web"), conn("c9", "api")}}}})
	ack = s.recvUntil(func(a *berthv1.WriteAck) bool { return a != nil && a.Seq == seq })
	if ack.Result.Code != berthv1.ResultCode_RESULT_CODE_OK {
		t.Fatalf("full sync: %v", ack)
	}
	list, err = c.Admin(f).ListConnections(ctxT(t), &berthv1.ListConnectionsRequest{ProxyId: "p1", Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil || len(list.Connections) != 2 || list.Connections[0].Id != "c1" || list.Connections[1].Id != "c9" {
		t.Fatalf("after reconcile: %v %v", list, err)
	}
}

func TestSessionRefusals(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{})
	for name, first := range map[string]*berthv1.SessionRequest{
		"no hello":         {Kind: &berthv1.SessionRequest_Load{Load: &berthv1.LoadSample{}}},
		"unknown proxy":    {Kind: &berthv1.SessionRequest_Hello{Hello: &berthv1.SessionHello{ProxyId: "ghost"}}},
		"invalid proxy id": {Kind: &berthv1.SessionRequest_Hello{Hello: &berthv1.SessionHello{ProxyId: "bad id!"}}},
	} {
		t.Run(name, func(t *testing.T) {
			stream, err := c.Registry(0).Session(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(first); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err == nil {
				t.Fatal("want the session refused")
			}
		})
	}
}
