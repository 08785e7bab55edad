package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// echoStream opens a stream from opener, serves it on acceptor with an
// echo, and checks the bytes come back and both half-closes arrive.
func echoStream(t *testing.T, opener, acceptor *Session) {
	t.Helper()
	served := make(chan error, 1)
	go func() {
		in, err := acceptor.AcceptStream()
		if err != nil {
			served <- err
			return
		}
		if in.Header.GetEndpoint() != "web" || in.Header.GetClientAddress() != "192.0.2.1:4000" {
			served <- errors.New("unexpected header " + in.Header.String())
			in.Reject(Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST, "bad header"))
			return
		}
		c, err := in.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(c, c)
		served <- err
	}()
	st, err := opener.OpenStream(t.Context(), &berthv1.StreamHeader{Endpoint: "web", Kind: berthv1.StreamKind_STREAM_KIND_TCP, ClientAddress: "192.0.2.1:4000"})
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	defer st.Close()
	msg := []byte("hello through the tunnel")
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = st.Close() // yamux Close is a half-close: we can still read
	_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != string(msg) {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	if err := within(t, 5*time.Second, served, "acceptor"); err != nil {
		t.Fatalf("acceptor: %v", err)
	}
}

func TestOpenStreamRefusedSessionKeepsWorking(t *testing.T) {
	agent, proxy, _ := tunnelPair(t)
	go func() {
		in, err := agent.AcceptStream()
		if err != nil {
			return
		}
		in.Reject(Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST, "endpoint %s is not served here", in.Header.GetEndpoint()))
	}()
	_, err := proxy.OpenStream(t.Context(), &berthv1.StreamHeader{Endpoint: "nope"})
	var te *Error
	if !errors.As(err, &te) || te.Code != berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_BAD_REQUEST || te.Message != "endpoint nope is not served here" {
		t.Fatalf("err = %v, want a BAD_REQUEST refusal", err)
	}
	echoStream(t, proxy, agent)
	if agent.IsClosed() || proxy.IsClosed() {
		t.Fatal("a refused stream closed the session")
	}
}

func TestOpenStreamContextCancel(t *testing.T) {
	agent, proxy, _ := tunnelPair(t)
	// The agent reads the header and then never answers.
	held := make(chan *Incoming, 2)
	go func() {
		for {
			in, err := agent.AcceptStream()
			if err != nil {
				return
			}
			held <- in
		}
	}()

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, err := proxy.OpenStream(ctx, &berthv1.StreamHeader{Endpoint: "web"})
		errc <- err
	}()
	within(t, 5*time.Second, held, "the header to arrive")
	cancel()
	if err := within(t, 5*time.Second, errc, "OpenStream to return"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	// A context deadline shorter than the handshake timeout wins too.
	dctx, dcancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer dcancel()
	if _, err := proxy.OpenStream(dctx, &berthv1.StreamHeader{Endpoint: "web"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if proxy.IsClosed() {
		t.Fatal("a canceled stream closed the session")
	}
}

// The opener waits for the reply at most HandshakeTimeout.
func TestOpenStreamReplyTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.HandshakeTimeout = 100 * time.Millisecond
	ln := listen(t)
	res := make(chan *Session, 1)
	acceptOne(t, ln, func(c net.Conn) {
		if _, err := ReadTunnelHello(c, cfg); err != nil {
			_ = c.Close()
			return
		}
		s, err := AcceptTunnel(c, &berthv1.TunnelWelcome{ConnectionId: "c"}, cfg)
		if err == nil {
			res <- s
		}
	})
	agent, _, err := DialTunnel(t.Context(), ln.Addr().String(), nil, &berthv1.TunnelHello{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	proxy := within(t, 5*time.Second, res, "accept")
	defer proxy.Close()
	_, err = proxy.OpenStream(t.Context(), &berthv1.StreamHeader{Endpoint: "web"}) // nobody accepts
	if err == nil {
		t.Fatal("OpenStream succeeded without a reply")
	}
}

func TestControlMessagesBothWays(t *testing.T) {
	agent, proxy, _ := tunnelPair(t)
	down := []*berthv1.ControlMessage{
		{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{MoveId: "m1", ProxyId: "b", Address: "127.0.0.1:1"}}},
		{Kind: &berthv1.ControlMessage_Drain{Drain: &berthv1.Drain{Reason: "shutdown", DeadlineUnixMs: 1234}}},
	}
	up := []*berthv1.ControlMessage{
		{Kind: &berthv1.ControlMessage_Moved{Moved: &berthv1.Moved{MoveId: "m1", NewConnectionId: "c2"}}},
	}
	for _, m := range down {
		if err := proxy.SendControl(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range up {
		if err := agent.SendControl(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range down {
		got, err := agent.RecvControl()
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("agent got %v, want %v", got, want)
		}
	}
	for _, want := range up {
		got, err := proxy.RecvControl()
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("proxy got %v, want %v", got, want)
		}
	}
	// Streams and control share the session without getting in each
	// other's way.
	echoStream(t, proxy, agent)

	// Closing one side ends the other's control stream with io.EOF.
	_ = proxy.Close()
	if _, err := agent.RecvControl(); !errors.Is(err, io.EOF) {
		t.Fatalf("RecvControl after close = %v, want io.EOF", err)
	}
}

func TestSendControlConcurrent(t *testing.T) {
	agent, proxy, _ := tunnelPair(t)
	const n = 50
	errc := make(chan error, n)
	for i := range n {
		go func() {
			errc <- agent.SendControl(&berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Moved{Moved: &berthv1.Moved{MoveId: string(rune('a' + i%26))}}})
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		if _, err := proxy.RecvControl(); err != nil {
			t.Fatalf("frames interleaved: %v", err)
		}
	}
}

func TestAcceptStreamSkipsGarbageHeader(t *testing.T) {
	agent, proxy, _ := tunnelPair(t)
	for _, garbage := range [][]byte{
		{0, 0, 0, 3, 0xff, 0xff, 0xff}, // not protobuf
		{0xff, 0xff, 0xff, 0xff},       // oversize
		{0, 0},                         // cut short
	} {
		raw, err := proxy.mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.Write(garbage); err != nil {
			t.Fatal(err)
		}
		_ = raw.Close()
	}
	echoStream(t, proxy, agent)
}

func TestSessionCloseUnblocksEverything(t *testing.T) {
	agent, proxy, _ := tunnelPair(t)

	// A stream open end to end, and one still waiting for its reply.
	accepted := make(chan net.Conn, 1)
	go func() {
		in, err := agent.AcceptStream()
		if err != nil {
			return
		}
		c, err := in.Accept()
		if err == nil {
			accepted <- c
		}
		if _, err := agent.AcceptStream(); err == nil { // hold the second one
			<-agent.Closed()
		}
	}()
	st, err := proxy.OpenStream(t.Context(), &berthv1.StreamHeader{Endpoint: "web"})
	if err != nil {
		t.Fatal(err)
	}
	agentSide := within(t, 5*time.Second, accepted, "accept")

	blocked := map[string]func() error{
		"proxy RecvControl": func() error { _, err := proxy.RecvControl(); return err },
		"agent RecvControl": func() error { _, err := agent.RecvControl(); return err },
		"proxy AcceptStream": func() error {
			_, err := proxy.AcceptStream()
			return err
		},
		"proxy stream Read": func() error { _, err := st.Read(make([]byte, 1)); return err },
		"agent stream Read": func() error { _, err := agentSide.Read(make([]byte, 1)); return err },
		"proxy OpenStream": func() error {
			_, err := proxy.OpenStream(context.Background(), &berthv1.StreamHeader{Endpoint: "web"})
			return err
		},
	}
	type result struct {
		name string
		err  error
	}
	res := make(chan result, len(blocked))
	for name, f := range blocked {
		go func() { res <- result{name, f()} }()
	}
	// Nothing returns while the session is up.
	select {
	case r := <-res:
		t.Fatalf("%s returned early: %v", r.name, r.err)
	case <-time.After(50 * time.Millisecond): // a check that nothing happens, not synchronisation
	}

	if err := proxy.Close(); err != nil {
		t.Fatal(err)
	}
	within(t, 5*time.Second, proxy.Closed(), "proxy Closed()")
	within(t, 5*time.Second, agent.Closed(), "agent Closed()")
	if !proxy.IsClosed() || !agent.IsClosed() {
		t.Fatal("IsClosed false after close")
	}
	for range blocked {
		r := within(t, 5*time.Second, res, "blocked calls to return")
		if r.err == nil {
			t.Errorf("%s: nil error after close", r.name)
		}
	}
	if _, err := proxy.OpenStream(t.Context(), &berthv1.StreamHeader{}); err == nil {
		t.Error("OpenStream on a closed session succeeded")
	}
	if err := proxy.SendControl(&berthv1.ControlMessage{}); err == nil {
		t.Error("SendControl on a closed session succeeded")
	}
}

// An acceptor that never sees the control stream gives up after the
// handshake timeout.
func TestNoControlStream(t *testing.T) {
	cfg := testConfig()
	cfg.HandshakeTimeout = 100 * time.Millisecond
	ln := listen(t)
	errc := make(chan error, 1)
	acceptOne(t, ln, func(c net.Conn) {
		if _, err := ReadTunnelHello(c, cfg); err != nil {
			_ = c.Close()
			errc <- err
			return
		}
		s, err := AcceptTunnel(c, &berthv1.TunnelWelcome{ConnectionId: "c"}, cfg)
		if s != nil {
			_ = s.Close()
		}
		errc <- err
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(tunnelMagic + "\x01")); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(c, &berthv1.TunnelHello{}); err != nil {
		t.Fatal(err)
	}
	// Read the welcome, then stay silent: no yamux, no control stream.
	var w berthv1.TunnelWelcome
	if err := ReadFrame(c, &w); err != nil {
		t.Fatal(err)
	}
	if err := within(t, 5*time.Second, errc, "AcceptTunnel"); err == nil {
		t.Fatal("AcceptTunnel succeeded without a control stream")
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"handshake": func(c *Config) { c.HandshakeTimeout = 0 },
		"keepalive": func(c *Config) { c.KeepAliveInterval = -1 },
		"window":    func(c *Config) { c.MaxStreamWindow = 1024 },
		"backlog":   func(c *Config) { c.AcceptBacklog = 0 },
	} {
		c := DefaultConfig()
		mut(&c)
		if c.Validate() == nil {
			t.Errorf("%s: invalid config accepted", name)
		}
	}
}
