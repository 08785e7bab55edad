package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestTunnelHandshake(t *testing.T) {
	agent, proxy, hello := tunnelPair(t)
	want := &berthv1.TunnelHello{ProtocolVersion: ProtocolVersion, AgentId: "agent-1", Slot: "slot-1", Endpoints: []string{"web"}}
	if !proto.Equal(hello, want) {
		t.Fatalf("hello = %v, want %v", hello, want)
	}
	// The session carries streams once both sides are up.
	echoStream(t, proxy, agent)
	echoStream(t, agent, proxy)
	if got := agent.RemoteAddr().String(); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("RemoteAddr = %s", got)
	}
	if _, err := agent.Ping(); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func TestPeerHandshake(t *testing.T) {
	cfg := testConfig()
	ln := listen(t)
	type result struct {
		hello *berthv1.PeerHello
		sess  *Session
		err   error
	}
	res := make(chan result, 1)
	acceptOne(t, ln, func(c net.Conn) {
		h, err := ReadPeerHello(c, cfg)
		if err != nil {
			_ = c.Close()
			res <- result{err: err}
			return
		}
		s, err := AcceptPeer(c, &berthv1.PeerWelcome{ProxyId: "proxy-b"}, cfg)
		res <- result{h, s, err}
	})
	a, welcome, err := DialPeer(t.Context(), ln.Addr().String(), nil, &berthv1.PeerHello{ProxyId: "proxy-a"}, cfg)
	if err != nil {
		t.Fatalf("DialPeer: %v", err)
	}
	defer a.Close()
	if welcome.GetProxyId() != "proxy-b" {
		t.Fatalf("welcome = %v", welcome)
	}
	r := within(t, 5*time.Second, res, "peer accept")
	if r.err != nil {
		t.Fatalf("peer accept: %v", r.err)
	}
	defer r.sess.Close()
	if r.hello.GetProxyId() != "proxy-a" || r.hello.GetProtocolVersion() != ProtocolVersion {
		t.Fatalf("peer hello = %v", r.hello)
	}
	echoStream(t, a, r.sess)
	echoStream(t, r.sess, a)
}

// A peer link is not a tunnel: each acceptor refuses the other's magic.
func TestMagicMismatch(t *testing.T) {
	cfg := testConfig()
	ln := listen(t)
	errc := make(chan error, 1)
	acceptOne(t, ln, func(c net.Conn) {
		defer c.Close()
		_, err := ReadTunnelHello(c, cfg)
		errc <- err
	})
	_, _, err := DialPeer(t.Context(), ln.Addr().String(), nil, &berthv1.PeerHello{ProxyId: "p"}, cfg)
	if err == nil {
		t.Fatal("DialPeer to a tunnel port succeeded")
	}
	if err := within(t, 5*time.Second, errc, "tunnel hello"); !errors.Is(err, ErrBadPreamble) {
		t.Fatalf("ReadTunnelHello = %v, want ErrBadPreamble", err)
	}
}

func TestTunnelRefused(t *testing.T) {
	cfg := testConfig()
	ln := listen(t)
	acceptOne(t, ln, func(c net.Conn) {
		if _, err := ReadTunnelHello(c, cfg); err != nil {
			_ = c.Close()
			return
		}
		Refuse(c, &berthv1.TunnelWelcome{Error: Refusal(berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAUTHENTICATED, "token expired %d s ago", 5)})
	})
	s, welcome, err := DialTunnel(t.Context(), ln.Addr().String(), nil, &berthv1.TunnelHello{AgentId: "a"}, cfg)
	if s != nil {
		_ = s.Close()
		t.Fatal("DialTunnel returned a session for a refusal")
	}
	var te *Error
	if !errors.As(err, &te) {
		t.Fatalf("err = %v (%T), want *Error", err, err)
	}
	if te.Code != berthv1.TunnelErrorCode_TUNNEL_ERROR_CODE_UNAUTHENTICATED || te.Message != "token expired 5 s ago" {
		t.Fatalf("refusal = %+v", te)
	}
	if welcome.GetError().GetCode() != te.Code {
		t.Fatalf("welcome = %v", welcome)
	}
	if !strings.Contains(err.Error(), "UNAUTHENTICATED") {
		t.Errorf("message %q does not name the code", err)
	}
}

func TestBadPreamble(t *testing.T) {
	for _, tc := range []struct {
		name  string
		send  string
		want  error
		magic string // acceptor kind: tunnel or peer
	}{
		{"http", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", ErrBadPreamble, tunnelMagic},
		{"tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ErrBadPreamble, tunnelMagic},
		{"peer-on-tunnel", peerMagic + "\x01", ErrBadPreamble, tunnelMagic},
		{"tunnel-on-peer", tunnelMagic + "\x01", ErrBadPreamble, peerMagic},
		{"version-0", tunnelMagic + "\x00", ErrUnsupportedVersion, tunnelMagic},
		{"version-2", tunnelMagic + "\x02", ErrUnsupportedVersion, tunnelMagic},
		{"peer-version-9", peerMagic + "\x09", ErrUnsupportedVersion, peerMagic},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			ln := listen(t)
			errc := make(chan error, 1)
			acceptOne(t, ln, func(c net.Conn) {
				defer c.Close()
				var err error
				if tc.magic == tunnelMagic {
					_, err = ReadTunnelHello(c, cfg)
				} else {
					_, err = ReadPeerHello(c, cfg)
				}
				errc <- err
			})
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			// The connection stays open: the refusal must come from the
			// bytes, not from EOF or the handshake timeout.
			if err := within(t, time.Second, errc, "hello"); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// A dialler that gets a preamble it does not speak (an old proxy answering
// with its own version) fails fast too: here the proxy answers with garbage.
func TestDialGarbageWelcome(t *testing.T) {
	cfg := testConfig()
	ln := listen(t)
	acceptOne(t, ln, func(c net.Conn) {
		defer c.Close()
		if _, err := ReadTunnelHello(c, cfg); err != nil {
			return
		}
		_, _ = c.Write([]byte("\x00\x00\x00\x03\xff\xff\xff"))
		_, _ = io.Copy(io.Discard, c)
	})
	_, _, err := DialTunnel(t.Context(), ln.Addr().String(), nil, &berthv1.TunnelHello{}, cfg)
	if err == nil || !strings.Contains(err.Error(), "decode frame") {
		t.Fatalf("err = %v, want a decode error", err)
	}
}

func TestOversizeFrameRefusedBeforeBody(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrameBytes+1)
	r := &strictReader{data: hdr[:]}
	err := ReadFrame(r, &berthv1.TunnelHello{})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}

	// Over a connection: the hello is refused at once although the body
	// never comes.
	cfg := testConfig()
	ln := listen(t)
	errc := make(chan error, 1)
	acceptOne(t, ln, func(c net.Conn) {
		defer c.Close()
		_, err := ReadTunnelHello(c, cfg)
		errc <- err
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	binary.BigEndian.PutUint32(hdr[:], 1<<31)
	if _, err := c.Write(append([]byte(tunnelMagic+"\x01"), hdr[:]...)); err != nil {
		t.Fatal(err)
	}
	if err := within(t, time.Second, errc, "hello"); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
}

// strictReader serves data and fails the read after it, so a reader that
// goes on reading is caught.
type strictReader struct {
	data  []byte
	extra int
}

func (r *strictReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		r.extra++
		return 0, errors.New("read past the frame header")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestWriteFrameTooLarge(t *testing.T) {
	var buf bytes.Buffer
	err := WriteFrame(&buf, &berthv1.TunnelHello{Token: strings.Repeat("x", MaxFrameBytes)})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("%d bytes written for a refused frame", buf.Len())
	}
}

func TestFrameRoundTrip(t *testing.T) {
	msgs := []proto.Message{
		&berthv1.TunnelHello{ProtocolVersion: 1, AgentId: "a", Slot: "s", Endpoints: []string{"x", "y"}, Token: "t", MoveId: "m"},
		&berthv1.TunnelWelcome{},
		&berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Drain{Drain: &berthv1.Drain{Reason: "bye", DeadlineUnixMs: 42}}},
		&berthv1.StreamHeader{Endpoint: "web", Kind: berthv1.StreamKind_STREAM_KIND_TCP, Hops: 1, ClientAddress: "[::1]:5"},
	}
	var buf bytes.Buffer
	for _, m := range msgs {
		if err := WriteFrame(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range msgs {
		got := m.ProtoReflect().New().Interface()
		if err := ReadFrame(&buf, got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, m) {
			t.Fatalf("got %v, want %v", got, m)
		}
	}
	if err := ReadFrame(&buf, &berthv1.TunnelHello{}); err != io.EOF {
		t.Fatalf("read at end = %v, want io.EOF", err)
	}
	// A frame cut short is an error, not a partial message.
	if err := WriteFrame(&buf, msgs[0]); err != nil {
		t.Fatal(err)
	}
	buf.Truncate(buf.Len() - 1)
	if err := ReadFrame(&buf, &berthv1.TunnelHello{}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated frame = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestHelloTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.HandshakeTimeout = 100 * time.Millisecond
	ln := listen(t)
	errc := make(chan error, 1)
	acceptOne(t, ln, func(c net.Conn) {
		defer c.Close()
		_, err := ReadTunnelHello(c, cfg)
		errc <- err
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Half a hello: the preamble but no frame.
	if _, err := c.Write([]byte(tunnelMagic + "\x01")); err != nil {
		t.Fatal(err)
	}
	if err := within(t, 5*time.Second, errc, "hello timeout"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
}

func TestHelloTimeoutSilentClient(t *testing.T) {
	cfg := testConfig()
	cfg.HandshakeTimeout = 100 * time.Millisecond
	ln := listen(t)
	errc := make(chan error, 1)
	acceptOne(t, ln, func(c net.Conn) {
		defer c.Close()
		_, err := ReadTunnelHello(c, cfg)
		errc <- err
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := within(t, 5*time.Second, errc, "hello timeout"); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
}

// The dialler gives up on a proxy that never welcomes it.
func TestWelcomeTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.HandshakeTimeout = 100 * time.Millisecond
	ln := listen(t)
	acceptOne(t, ln, func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	})
	start := time.Now()
	_, _, err := DialTunnel(t.Context(), ln.Addr().String(), nil, &berthv1.TunnelHello{}, cfg)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("gave up after %s", d)
	}
}

func TestDialContextCanceled(t *testing.T) {
	cfg := testConfig()
	cfg.HandshakeTimeout = time.Minute
	ln := listen(t)
	acceptOne(t, ln, func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
	})
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		_, _, err := DialTunnel(ctx, ln.Addr().String(), nil, &berthv1.TunnelHello{}, cfg)
		errc <- err
	}()
	cancel()
	if err := within(t, 5*time.Second, errc, "dial to return"); err == nil {
		t.Fatal("DialTunnel succeeded after cancel")
	}
}
