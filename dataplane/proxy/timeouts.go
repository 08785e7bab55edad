package proxy

import (
	"context"
	"errors"
	"net"
	"time"
)

// Timeouts at the edge. The downstream server bounds reading a request's
// headers (ReadHeaderTimeout: what cuts a slowloris client) and an idle
// keep-alive connection (IdleTimeout), never the request itself: no
// ReadTimeout or WriteTimeout is set, since either would cut a WebSocket
// or a streamed body however healthy. Upstream, only the wait for the
// response head is bounded (UpstreamHeaderTimeout); once it has come the
// body streams as long as it lasts.

// errUpstreamHeaderTimeout: the upstream took the request but sent no
// response head in time (504).
var errUpstreamHeaderTimeout = errors.New("upstream sent no response headers in time")

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// clearReadDeadline lifts the header timeout once the head is in, keeping
// a cancellation that raced with it.
func clearReadDeadline(ctx context.Context, c net.Conn) {
	_ = c.SetReadDeadline(time.Time{})
	if ctx.Err() != nil {
		_ = c.SetReadDeadline(time.Now())
	}
}
