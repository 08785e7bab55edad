package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Config tunes sessions.
type Config struct {
	// HandshakeTimeout bounds the preamble, hello and welcome exchange, and
	// each stream's header and reply.
	HandshakeTimeout time.Duration
	// KeepAliveInterval is how often yamux pings an idle session; a session
	// whose pings go unanswered is closed.
	KeepAliveInterval time.Duration
	// MaxStreamWindow is yamux's per-stream receive window.
	MaxStreamWindow uint32
	// AcceptBacklog bounds streams opened but not yet accepted.
	AcceptBacklog int
}

// DefaultConfig suits tunnels across a datacentre or the internet.
func DefaultConfig() Config {
	return Config{
		HandshakeTimeout:  10 * time.Second,
		KeepAliveInterval: 15 * time.Second,
		MaxStreamWindow:   1 << 20,
		AcceptBacklog:     1024,
	}
}

// Validate reports a configuration yamux would refuse.
func (c Config) Validate() error {
	switch {
	case c.HandshakeTimeout <= 0:
		return errors.New("handshake timeout: must be positive")
	case c.KeepAliveInterval <= 0:
		return errors.New("keepalive interval: must be positive")
	case c.MaxStreamWindow < 256<<10:
		return fmt.Errorf("max stream window %d: at least 262144", c.MaxStreamWindow)
	case c.AcceptBacklog < 1:
		return errors.New("accept backlog: at least 1")
	}
	return nil
}

func (c Config) yamux() *yamux.Config {
	y := yamux.DefaultConfig()
	y.EnableKeepAlive = true
	y.KeepAliveInterval = c.KeepAliveInterval
	y.ConnectionWriteTimeout = c.HandshakeTimeout
	y.MaxStreamWindowSize = c.MaxStreamWindow
	y.AcceptBacklog = c.AcceptBacklog
	y.StreamOpenTimeout = c.HandshakeTimeout
	y.StreamCloseTimeout = 5 * time.Minute
	y.LogOutput = nil
	y.Logger = slog.NewLogLogger(slog.DiscardHandler, slog.LevelInfo)
	return y
}

// Session is one tunnel or peer link after its handshake: a yamux session
// with a control stream.
type Session struct {
	cfg     Config
	conn    net.Conn
	mux     *yamux.Session
	control net.Conn
	sendMu  sync.Mutex
}

// newSession starts yamux on conn. The dialler opens the control stream;
// the acceptor waits for it.
func newSession(conn net.Conn, dialer bool, cfg Config) (*Session, error) {
	var (
		mux *yamux.Session
		err error
	)
	wire := newBatchingConn(conn)
	if dialer {
		mux, err = yamux.Client(wire, cfg.yamux())
	} else {
		mux, err = yamux.Server(wire, cfg.yamux())
	}
	if err != nil {
		_ = wire.Close()
		return nil, fmt.Errorf("tunnel: start session: %w", err)
	}
	s := &Session{cfg: cfg, conn: conn, mux: mux}
	if dialer {
		s.control, err = mux.OpenStream()
	} else {
		s.control, err = acceptWithin(mux, cfg.HandshakeTimeout)
	}
	if err != nil {
		_ = mux.Close()
		return nil, fmt.Errorf("tunnel: control stream: %w", err)
	}
	return s, nil
}

func acceptWithin(mux *yamux.Session, d time.Duration) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := mux.AcceptStream()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(d):
		_ = mux.Close()
		return nil, errors.New("no control stream within the handshake timeout")
	}
}

// OpenStream opens a stream for hdr and waits for the other side's reply.
// A refusal is a *Error; on success the stream carries raw bytes.
func (s *Session) OpenStream(ctx context.Context, hdr *berthv1.StreamHeader) (net.Conn, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("tunnel: open stream: %w", err)
	}
	// ctx's own deadline is left to the AfterFunc, which runs once ctx.Err
	// is set: a stream deadline at the same instant could fire first and
	// the error would not say context.DeadlineExceeded.
	_ = st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { _ = st.SetDeadline(time.Now()) })
	defer stop()
	if err := WriteFrame(st, hdr); err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("tunnel: stream header: %w", err)
	}
	var reply berthv1.StreamReply
	if err := ReadFrame(st, &reply); err != nil {
		_ = st.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("tunnel: stream reply: %w", ctx.Err())
		}
		return nil, fmt.Errorf("tunnel: stream reply: %w", err)
	}
	if !stop() {
		_ = st.Close()
		return nil, fmt.Errorf("tunnel: open stream: %w", ctx.Err())
	}
	if err := fromWire(reply.Error); err != nil {
		_ = st.Close()
		return nil, err
	}
	_ = st.SetDeadline(time.Time{})
	return st, nil
}

// Incoming is a stream the other side opened, its header read.
type Incoming struct {
	Header *berthv1.StreamHeader
	stream net.Conn
}

// Accept tells the opener the stream is served and returns it.
func (in *Incoming) Accept() (net.Conn, error) {
	if err := WriteFrame(in.stream, &berthv1.StreamReply{}); err != nil {
		_ = in.stream.Close()
		return nil, fmt.Errorf("tunnel: stream reply: %w", err)
	}
	_ = in.stream.SetDeadline(time.Time{})
	return in.stream, nil
}

// Reject refuses the stream with a reason the opener sees as a *Error.
func (in *Incoming) Reject(e *berthv1.TunnelError) {
	_ = WriteFrame(in.stream, &berthv1.StreamReply{Error: e})
	_ = in.stream.Close()
}

// AcceptStream waits for the next stream the other side opens and reads
// its header. A stream with an unreadable header is dropped and the next
// one awaited; the error is returned only when the session is closed.
func (s *Session) AcceptStream() (*Incoming, error) {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return nil, fmt.Errorf("tunnel: accept stream: %w", err)
		}
		_ = st.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
		var hdr berthv1.StreamHeader
		if err := ReadFrame(st, &hdr); err != nil {
			_ = st.Close()
			continue
		}
		return &Incoming{Header: &hdr, stream: st}, nil
	}
}

// SendControl writes a control message; safe for concurrent use.
func (s *Session) SendControl(m *berthv1.ControlMessage) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	_ = s.control.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer s.control.SetWriteDeadline(time.Time{})
	return WriteFrame(s.control, m)
}

// RecvControl reads the next control message; one reader at a time.
func (s *Session) RecvControl() (*berthv1.ControlMessage, error) {
	var m berthv1.ControlMessage
	if err := ReadFrame(s.control, &m); err != nil {
		if errors.Is(err, io.EOF) || s.mux.IsClosed() {
			return nil, fmt.Errorf("tunnel: control stream closed: %w", io.EOF)
		}
		return nil, err
	}
	return &m, nil
}

// NumStreams is the number of streams open now (the control stream
// included).
func (s *Session) NumStreams() int { return s.mux.NumStreams() }

// Ping measures a round trip over the session.
func (s *Session) Ping() (time.Duration, error) { return s.mux.Ping() }

// Closed is closed when the session ends.
func (s *Session) Closed() <-chan struct{} { return s.mux.CloseChan() }

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.mux.IsClosed() }

// RemoteAddr is the other side's address.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// Close ends the session and every stream on it.
func (s *Session) Close() error { return s.mux.Close() }
