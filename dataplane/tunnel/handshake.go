package tunnel

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// DialTunnel is the agent's side of a tunnel: connect to a proxy (over TLS
// when tlsCfg is set), say hello, and start the session once welcomed. A
// refusal comes back as a *Error together with the welcome that carried it.
func DialTunnel(ctx context.Context, addr string, tlsCfg *tls.Config, hello *berthv1.TunnelHello, cfg Config) (*Session, *berthv1.TunnelWelcome, error) {
	return Dialer{TLS: tlsCfg}.DialTunnel(ctx, addr, hello, cfg)
}

// DialTunnel is the agent's side of a tunnel over the transport d names
// for addr: host:port (TCP, TLS when d.TLS is set) or a ws:// or wss://
// URL, either through d's HTTP proxy when it has one for addr.
func (d Dialer) DialTunnel(ctx context.Context, addr string, hello *berthv1.TunnelHello, cfg Config) (*Session, *berthv1.TunnelWelcome, error) {
	hello.ProtocolVersion = ProtocolVersion
	welcome := &berthv1.TunnelWelcome{}
	s, err := handshake(ctx, addr, d.dial, tunnelMagic, hello, welcome, func() error { return fromWire(welcome.Error) }, cfg)
	return s, welcome, err
}

// DialPeer is a proxy's side of a peer link to another proxy.
func DialPeer(ctx context.Context, addr string, tlsCfg *tls.Config, hello *berthv1.PeerHello, cfg Config) (*Session, *berthv1.PeerWelcome, error) {
	hello.ProtocolVersion = ProtocolVersion
	welcome := &berthv1.PeerWelcome{}
	s, err := handshake(ctx, addr, Dialer{TLS: tlsCfg}.dial, peerMagic, hello, welcome, func() error { return fromWire(welcome.Error) }, cfg)
	return s, welcome, err
}

// handshake connects (within the handshake timeout), says hello and starts
// the session once welcomed.
func handshake(ctx context.Context, addr string, connect func(context.Context, string) (net.Conn, error), magic string, hello, welcome proto.Message, refused func() error, cfg Config) (*Session, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	conn, err := connect(ctx, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if err := writePreamble(conn, magic); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("tunnel: preamble: %w", err)
	}
	if err := WriteFrame(conn, hello); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("tunnel: hello: %w", err)
	}
	if err := ReadFrame(conn, welcome); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("tunnel: welcome from %s: %w", addr, err)
	}
	if err := refused(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	// Disarm the cancel hook before clearing the deadline: if it fired in
	// between, it would cut the session's connection right after start.
	if !stop() {
		_ = conn.Close()
		return nil, fmt.Errorf("tunnel: handshake with %s: %w", addr, ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	return newSession(conn, true, cfg)
}

// ReadTunnelHello is the proxy's first step with an accepted connection: the
// preamble and the agent's hello, within the handshake timeout. On error
// the caller should close conn (after Refuse, when the error allows an
// answer).
func ReadTunnelHello(conn net.Conn, cfg Config) (*berthv1.TunnelHello, error) {
	hello := &berthv1.TunnelHello{}
	return hello, readHello(conn, tunnelMagic, hello, cfg)
}

// ReadPeerHello reads a peer link's preamble and hello.
func ReadPeerHello(conn net.Conn, cfg Config) (*berthv1.PeerHello, error) {
	hello := &berthv1.PeerHello{}
	return hello, readHello(conn, peerMagic, hello, cfg)
}

func readHello(conn net.Conn, magic string, hello proto.Message, cfg Config) error {
	_ = conn.SetDeadline(time.Now().Add(cfg.HandshakeTimeout))
	if err := readPreamble(conn, magic); err != nil {
		return err
	}
	if err := ReadFrame(conn, hello); err != nil {
		return fmt.Errorf("tunnel: hello: %w", err)
	}
	return nil
}

// Refuse answers a hello with a refusal and closes conn.
func Refuse(conn net.Conn, welcome proto.Message) {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = WriteFrame(conn, welcome)
	_ = conn.Close()
}

// AcceptTunnel answers an agent's hello with welcome (which must not carry
// an error) and starts the session.
func AcceptTunnel(conn net.Conn, welcome *berthv1.TunnelWelcome, cfg Config) (*Session, error) {
	return accept(conn, welcome, cfg)
}

// AcceptPeer answers a peer's hello and starts the session.
func AcceptPeer(conn net.Conn, welcome *berthv1.PeerWelcome, cfg Config) (*Session, error) {
	return accept(conn, welcome, cfg)
}

func accept(conn net.Conn, welcome proto.Message, cfg Config) (*Session, error) {
	if err := WriteFrame(conn, welcome); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("tunnel: welcome: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return newSession(conn, false, cfg)
}
