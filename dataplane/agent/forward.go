package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// localDialTimeout bounds connecting to a local service.
const localDialTimeout = 10 * time.Second

// Forward serves every stream a accepts by piping it to the local address
// targets[endpoint] (TCP, both ways, with half-close), so HTTP, WebSocket
// and any TCP protocol pass through untouched. It returns nil once a is
// closed, after the pipes it started have ended.
func Forward(a *Agent, targets map[string]string, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &forwarder{metrics: a.metrics, targets: targets, logger: logger.With("subsystem", "agent"), live: make(map[net.Conn]struct{})}
	defer f.stop()
	for {
		s, err := a.Accept()
		if errors.Is(err, ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.forward(s)
		}()
	}
}

type forwarder struct {
	metrics *metrics
	targets map[string]string
	logger  *slog.Logger
	wg      sync.WaitGroup
	mu      sync.Mutex
	live    map[net.Conn]struct{} // local connections being piped
	stopped bool
}

// stop closes the local side of every pipe: a service may ignore the EOF a
// closed tunnel passes on, and Forward must still return.
func (f *forwarder) stop() {
	f.mu.Lock()
	f.stopped = true
	for c := range f.live {
		_ = c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *forwarder) forward(s *Stream) {
	target := f.targets[s.Endpoint]
	log := f.logger.With("endpoint", s.Endpoint, "client", s.ClientAddress, "target", target)
	var local net.Conn
	err := errors.New("no local address for this endpoint")
	if target != "" {
		var d net.Dialer
		ctx, cancel := context.WithTimeout(context.Background(), localDialTimeout)
		local, err = d.DialContext(ctx, "tcp", target)
		cancel()
	}
	em := f.metrics.endpoint(s.Endpoint)
	if err != nil {
		em.upstreamErrors.Inc()
		log.Warn("local service unreachable", "err", err)
		if s.Kind == berthv1.StreamKind_STREAM_KIND_HTTP {
			writeBadGateway(s, err)
		}
		_ = s.Close()
		return
	}
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		_ = local.Close()
		_ = s.Close()
		return
	}
	f.live[local] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.live, local)
		f.mu.Unlock()
	}()
	log.Debug("stream forwarded")
	in, out := Pipe(s, local)
	em.bytesIn.Add(float64(in))
	em.bytesOut.Add(float64(out))
	log.Debug("stream done", "bytes_in", in, "bytes_out", out)
}

// writeBadGateway answers an HTTP stream whose service cannot be reached,
// so the client sees why rather than an empty reply.
func writeBadGateway(w io.Writer, cause error) {
	body := "berth-agent: local service unreachable\n"
	_, _ = fmt.Fprintf(w, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\nX-Berth-Error: %s\r\n\r\n%s",
		len(body), sanitizeHeader(cause.Error()), body)
}

func sanitizeHeader(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = ' '
		}
	}
	return string(b)
}

// Pipe copies a→b and b→a until both directions end. Each direction's EOF
// is passed on as a half-close (CloseWrite) so protocols that shut one
// side down first work; an error in either direction closes both. It
// returns the bytes copied a→b and b→a, and closes both.
func Pipe(a, b net.Conn) (aToB, bToA int64) {
	var wg sync.WaitGroup
	var once sync.Once
	abort := func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	half := func(dst, src net.Conn, n *int64) {
		defer wg.Done()
		var err error
		*n, err = io.Copy(dst, src)
		if err != nil {
			abort()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
		abort()
	}
	wg.Add(2)
	go half(b, a, &aToB)
	go half(a, b, &bToA)
	wg.Wait()
	abort()
	return aToB, bToA
}
