package agent

import (
	"context"
	"log/slog"
	"net"
)

// Listen is the Go SDK: a net.Listener whose connections are the streams
// Berth proxies open to endpoint, e.g. for http.Serve. cfg.Endpoints is
// replaced by endpoint. Listen returns once the first tunnel is up, or an
// error (with the last dial failure) if ctx ends first; ctx bounds only
// that wait. The tunnel then lives, reconnecting and moving as needed,
// until the listener is closed. Logs go to slog.Default(), under
// subsystem=agent.
func Listen(ctx context.Context, endpoint string, cfg Config) (net.Listener, error) {
	cfg.Endpoints = []string{endpoint}
	a, err := New(cfg, slog.Default())
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Run(context.Background())
	}()
	if err := a.WaitReady(ctx); err != nil {
		_ = a.Close()
		<-done
		return nil, err
	}
	return &listener{a: a, endpoint: endpoint, done: done}, nil
}

type listener struct {
	a        *Agent
	endpoint string
	done     chan struct{}
}

// Accept returns the next stream as a net.Conn (a *Stream).
func (l *listener) Accept() (net.Conn, error) {
	s, err := l.a.Accept()
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Close closes the tunnels and every stream on them.
func (l *listener) Close() error {
	err := l.a.Close()
	<-l.done
	return err
}

func (l *listener) Addr() net.Addr { return Addr(l.endpoint) }

// Addr is an endpoint's name as a net.Addr (network "berth").
type Addr string

func (a Addr) Network() string { return "berth" }
func (a Addr) String() string  { return string(a) }
