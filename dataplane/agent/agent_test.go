package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestStreamsReachAccept(t *testing.T) {
	p := newTestProxy(t, "a")
	a := startAgent(t, testConfig(p.addr()))
	ps := p.next(t)

	want := &berthv1.TunnelHello{ProtocolVersion: tunnel.ProtocolVersion, AgentId: "agent-1", Slot: "slot-1", Endpoints: []string{"web", "api"}, Token: "token-1"}
	if !proto.Equal(ps.hello, want) {
		t.Fatalf("hello = %v, want %v", ps.hello, want)
	}
	eventually(t, 5*time.Second, func() bool { return a.Status().Connected }, "status connected")
	st := a.Status()
	if st.Proxy != p.addr() || st.ProxyID != "a" || st.ConnectionID != ps.connID || st.Tunnels != 1 || st.Reconnects != 0 {
		t.Fatalf("status = %+v", st)
	}
	if err := a.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		endpoint string
		kind     berthv1.StreamKind
	}{
		{"web", berthv1.StreamKind_STREAM_KIND_HTTP},
		{"api", berthv1.StreamKind_STREAM_KIND_TCP},
	} {
		accepted := a.acceptAsync()
		c, err := ps.openStream(t, tc.endpoint, tc.kind)
		if err != nil {
			t.Fatalf("%s: OpenStream: %v", tc.endpoint, err)
		}
		s := recv(t, accepted, "Accept")
		if s.Endpoint != tc.endpoint || s.Kind != tc.kind || s.ClientAddress != "192.0.2.7:5555" {
			t.Fatalf("stream = %+v", s)
		}
		if got := s.RemoteAddr().String(); got != "192.0.2.7:5555" {
			t.Fatalf("RemoteAddr = %s, want the client's", got)
		}
		echoOnce(t, c, s)
	}
}

// echoOnce sends a line from the proxy side, echoes it on the agent side,
// and checks both half-closes go through.
func echoOnce(t *testing.T, proxySide net.Conn, s *Stream) {
	t.Helper()
	go func() {
		_, _ = io.Copy(s, s)
		_ = s.CloseWrite()
	}()
	if _, err := proxySide.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	_ = proxySide.Close() // half-close
	_ = proxySide.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(proxySide)
	if err != nil || string(got) != "ping" {
		t.Fatalf("echo = %q, %v", got, err)
	}
}

func TestUnknownEndpointRejected(t *testing.T) {
	p := newTestProxy(t, "a")
	startAgent(t, testConfig(p.addr()))
	ps := p.next(t)
	_, err := ps.openStream(t, "payments", berthv1.StreamKind_STREAM_KIND_HTTP)
	var te *tunnel.Error
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want *tunnel.Error", err)
	}
	if te.Code != berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST || te.Message != "endpoint payments is not served here" {
		t.Fatalf("refusal = %+v", te)
	}
	if ps.sess.IsClosed() {
		t.Fatal("refusal closed the tunnel")
	}
}

func TestStreamNotAcceptedIsRefused(t *testing.T) {
	p := newTestProxy(t, "a")
	cfg := testConfig(p.addr())
	cfg.Tunnel.HandshakeTimeout = 400 * time.Millisecond
	startAgent(t, cfg) // nobody calls Accept
	ps := p.next(t)
	_, err := ps.openStream(t, "web", berthv1.StreamKind_STREAM_KIND_HTTP)
	var te *tunnel.Error
	if !errors.As(err, &te) || te.Code != berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAVAILABLE {
		t.Fatalf("err = %v, want an UNAVAILABLE refusal", err)
	}
}

func TestReconnectAfterProxyClosesSession(t *testing.T) {
	pa, pb := newTestProxy(t, "a"), newTestProxy(t, "b")
	a := startAgent(t, testConfig(pa.addr(), pb.addr()))
	ps := nextOf(t, pa, pb)
	for round := 1; round <= 3; round++ {
		_ = ps.sess.Close()
		other := pb
		if ps.proxy == pb {
			other = pa
		}
		// The agent rotates to the next proxy after losing one.
		ps = other.next(t)
		if ps.hello.GetSlot() != "slot-1" || ps.hello.GetMoveId() != "" {
			t.Fatalf("reconnect hello = %v", ps.hello)
		}
		eventually(t, 5*time.Second, func() bool {
			st := a.Status()
			return st.Connected && st.ConnectionID == ps.connID && st.Reconnects == round
		}, "round %d: status %+v", round, a.Status())
		a.stillRunning(t)
	}
	// And the new tunnel serves.
	accepted := a.acceptAsync()
	c, err := ps.openStream(t, "web", berthv1.StreamKind_STREAM_KIND_HTTP)
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, c, recv(t, accepted, "Accept"))
}

func TestReconnectAfterRefusal(t *testing.T) {
	p := newTestProxy(t, "a")
	p.refuse.Store(3)
	a := startAgent(t, testConfig(p.addr()))
	ps := p.next(t)
	if n := p.helloCount(); n != 4 {
		t.Fatalf("%d hellos, want 3 refused and 1 welcomed", n)
	}
	if !strings.Contains(a.Status().LastError, "UNAUTHENTICATED") {
		t.Fatalf("last error = %q", a.Status().LastError)
	}
	a.stillRunning(t)

	// Refused again after a drop: still no return from Run.
	p.refuse.Store(2)
	_ = ps.sess.Close()
	ps = p.next(t)
	if n := p.helloCount(); n != 7 {
		t.Fatalf("%d hellos, want 7", n)
	}
	eventually(t, 5*time.Second, func() bool { return a.Status().ConnectionID == ps.connID }, "reconnected")
	a.stillRunning(t)
}

func TestRunKeepsTryingUntilContextEnds(t *testing.T) {
	watchLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	a, err := New(testConfig(dead), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(t.Context())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	eventually(t, 5*time.Second, func() bool { return strings.Contains(a.Status().LastError, dead) }, "a failed dial")
	select {
	case err := <-runErr:
		t.Fatalf("Run returned %v with the proxy down", err)
	default:
	}
	wctx, wcancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer wcancel()
	if err := a.WaitReady(wctx); err == nil || !strings.Contains(err.Error(), "last error") {
		t.Fatalf("WaitReady = %v", err)
	}
	cancel()
	if err := recv(t, runErr, "Run to return"); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}

func TestMoveMakeBeforeBreak(t *testing.T) {
	pa, pb := newTestProxy(t, "a"), newTestProxy(t, "b")
	a := startAgent(t, testConfig(pa.addr()))
	old := pa.next(t)

	// A stream in flight on the old tunnel.
	accepted := a.acceptAsync()
	inflight, err := old.openStream(t, "web", berthv1.StreamKind_STREAM_KIND_TCP)
	if err != nil {
		t.Fatal(err)
	}
	agentSide := recv(t, accepted, "Accept")

	old.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{
		MoveId: "move-1", ProxyId: "b", Address: pb.addr(),
	}}})
	m := old.recvControl(t)
	// When Moved arrives the new tunnel is up and the old one still open.
	if old.sess.IsClosed() {
		t.Fatal("old tunnel closed before the move completed")
	}
	hello := pb.lastHello()
	if hello == nil || hello.GetSlot() != "slot-1" || hello.GetMoveId() != "move-1" || hello.GetAgentId() != "agent-1" {
		t.Fatalf("target hello = %v", hello)
	}
	moved := m.GetMoved()
	if moved == nil || moved.GetMoveId() != "move-1" || moved.GetNewConnectionId() != "b-conn-1" {
		t.Fatalf("control = %v, want Moved{move-1, b-conn-1}", m)
	}
	nw := pb.next(t)
	eventually(t, 5*time.Second, func() bool {
		st := a.Status()
		return st.ConnectionID == nw.connID && st.Moves == 1 && st.Tunnels == 2
	}, "status after move: %+v", a.Status())

	// The in-flight stream finishes on the old tunnel.
	echoOnce(t, inflight, agentSide)

	// New streams come over the new tunnel.
	accepted = a.acceptAsync()
	c, err := nw.openStream(t, "api", berthv1.StreamKind_STREAM_KIND_TCP)
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, c, recv(t, accepted, "Accept on the new tunnel"))

	// The old proxy closes its side; the agent does not reconnect.
	_ = old.sess.Close()
	eventually(t, 5*time.Second, func() bool { return a.Status().Tunnels == 1 }, "old tunnel forgotten")
	st := a.Status()
	if !st.Connected || st.ConnectionID != nw.connID || st.Reconnects != 0 || pa.helloCount() != 1 {
		t.Fatalf("status after the old tunnel closed = %+v (hellos at a: %d)", st, pa.helloCount())
	}
	a.stillRunning(t)
}

func TestMoveToUnreachableKeepsTunnel(t *testing.T) {
	pa, pb := newTestProxy(t, "a"), newTestProxy(t, "b")
	a := startAgent(t, testConfig(pa.addr()))
	cur := pa.next(t)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	cur.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{MoveId: "move-x", Address: dead}}})
	eventually(t, 5*time.Second, func() bool { return strings.Contains(a.Status().LastError, dead) }, "the move dial to fail")
	st := a.Status()
	if cur.sess.IsClosed() || !st.Connected || st.ConnectionID != cur.connID || st.Moves != 0 || st.Tunnels != 1 {
		t.Fatalf("after a failed move: closed=%v status=%+v", cur.sess.IsClosed(), st)
	}
	select {
	case m := <-cur.control:
		t.Fatalf("agent sent %v for a failed move", m)
	default:
	}
	// The kept tunnel still serves, and a later move still works.
	accepted := a.acceptAsync()
	c, err := cur.openStream(t, "web", berthv1.StreamKind_STREAM_KIND_TCP)
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, c, recv(t, accepted, "Accept"))

	cur.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{MoveId: "move-y", Address: pb.addr()}}})
	if m := cur.recvControl(t); m.GetMoved().GetMoveId() != "move-y" {
		t.Fatalf("control = %v", m)
	}
	pb.next(t)
}

func TestDrainMovesToAnotherProxy(t *testing.T) {
	pa, pb := newTestProxy(t, "a"), newTestProxy(t, "b")
	a := startAgent(t, testConfig(pa.addr(), pb.addr()))
	old := nextOf(t, pa, pb)
	other := pb
	if old.proxy == pb {
		other = pa
	}
	accepted := a.acceptAsync()
	inflight, err := old.openStream(t, "web", berthv1.StreamKind_STREAM_KIND_TCP)
	if err != nil {
		t.Fatal(err)
	}
	agentSide := recv(t, accepted, "Accept")

	old.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Drain{Drain: &berthv1.Drain{Reason: "shutting down"}}})
	nw := other.next(t)
	if nw.hello.GetMoveId() != "" || nw.hello.GetSlot() != "slot-1" {
		t.Fatalf("drain hello = %v", nw.hello)
	}
	if old.sess.IsClosed() {
		t.Fatal("old tunnel closed before the new one was up")
	}
	eventually(t, 5*time.Second, func() bool {
		st := a.Status()
		return st.ConnectionID == nw.connID && st.Moves == 1
	}, "status after drain: %+v", a.Status())
	echoOnce(t, inflight, agentSide)
	_ = old.sess.Close()
	eventually(t, 5*time.Second, func() bool { return a.Status().Tunnels == 1 }, "old tunnel forgotten")
	if st := a.Status(); st.Reconnects != 0 || !st.Connected {
		t.Fatalf("status = %+v", st)
	}
}

func TestDrainTimeoutClosesOldTunnel(t *testing.T) {
	pa, pb := newTestProxy(t, "a"), newTestProxy(t, "b")
	cfg := testConfig(pa.addr(), pb.addr())
	cfg.DrainTimeout = 100 * time.Millisecond
	a := startAgent(t, cfg)
	old := nextOf(t, pa, pb)
	old.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Drain{Drain: &berthv1.Drain{}}})
	nextOf(t, pa, pb)
	// The old proxy never closes it; the agent does after DrainTimeout.
	eventually(t, 5*time.Second, old.sess.IsClosed, "old tunnel closed by the agent")
	eventually(t, 5*time.Second, func() bool { return a.Status().Tunnels == 1 }, "old tunnel forgotten")
	if st := a.Status(); !st.Connected || st.Reconnects != 0 {
		t.Fatalf("status = %+v", st)
	}
}

// With a single proxy a drain has nowhere to go: the agent stays until the
// proxy closes the tunnel, then reconnects as usual.
func TestDrainWithoutAlternative(t *testing.T) {
	p := newTestProxy(t, "a")
	a := startAgent(t, testConfig(p.addr()))
	old := p.next(t)
	old.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Drain{Drain: &berthv1.Drain{}}})
	// Prove the drain was handled: a Reconnect sent after it is served,
	// so the agent's loop has processed the drain first.
	pb := newTestProxy(t, "b")
	old.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{MoveId: "m", Address: pb.addr()}}})
	old.recvControl(t)
	if p.helloCount() != 1 {
		t.Fatalf("drain with no alternative dialled the draining proxy again")
	}
	pb.next(t)
	eventually(t, 5*time.Second, func() bool { return a.Status().Moves == 1 }, "moved")
}

func TestAcceptAndRunAfterClose(t *testing.T) {
	p := newTestProxy(t, "a")
	a := startAgent(t, testConfig(p.addr()))
	p.next(t)
	if err := a.Run(t.Context()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, err := a.Accept()
		blocked <- err
	}()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, blocked, "Accept to return"); !errors.Is(err, ErrClosed) || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept = %v, want ErrClosed", err)
	}
	if err := recv(t, a.runErr, "Run to return"); err != nil {
		t.Fatalf("Run = %v", err)
	}
	a.runErr <- nil // for the cleanup
	if err := a.Run(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if st := a.Status(); st.Connected {
		t.Fatalf("status after close = %+v", st)
	}
}

// Close ends everything: tunnels (one draining), streams in flight,
// streams waiting for Accept; the leak check in the cleanup verifies that
// no goroutine survives.
func TestCloseLeavesNothingRunning(t *testing.T) {
	pa, pb := newTestProxy(t, "a"), newTestProxy(t, "b")
	a := startAgent(t, testConfig(pa.addr()))
	old := pa.next(t)
	accepted := a.acceptAsync()
	inflight, err := old.openStream(t, "web", berthv1.StreamKind_STREAM_KIND_TCP)
	if err != nil {
		t.Fatal(err)
	}
	s := recv(t, accepted, "Accept")
	old.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{MoveId: "m", Address: pb.addr()}}})
	old.recvControl(t)
	nw := pb.next(t)
	// A stream waiting in the accept queue.
	waiting := make(chan error, 1)
	go func() {
		_, err := nw.openStream(t, "api", berthv1.StreamKind_STREAM_KIND_TCP)
		waiting <- err
	}()
	eventually(t, 5*time.Second, func() bool { return len(a.queue) == 1 }, "a queued stream")

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, waiting, "queued stream answer"); err == nil {
		t.Fatal("queued stream accepted by a closed agent")
	}
	if _, err := s.Read(make([]byte, 1)); err == nil {
		t.Fatal("stream readable after Close")
	}
	_ = inflight.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(inflight); err != nil && !errors.Is(err, io.EOF) {
		t.Logf("proxy side of the stream: %v", err)
	}
	eventually(t, 5*time.Second, func() bool { return old.sess.IsClosed() && nw.sess.IsClosed() }, "proxies see the tunnels closed")
}
