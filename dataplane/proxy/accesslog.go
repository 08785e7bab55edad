package proxy

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The access log is one slog line per downstream request. It costs what
// the data path can afford: nothing when it is off or its level is not
// enabled; otherwise a pooled response-writer wrapper, the clock read
// twice, and one LogAttrs call whose attributes are built only then.

// accessLog writes the access log of one proxy.
type accessLog struct {
	logger  *slog.Logger
	headers []string // canonical names
	pool    sync.Pool
}

func newAccessLog(cfg EdgeConfig, logger *slog.Logger) *accessLog {
	if !cfg.AccessLog {
		return nil
	}
	return &accessLog{logger: logger.With("subsystem", "access"), headers: cfg.headerNames()}
}

// accessWriter records what a request's answer was while it is written.
type accessWriter struct {
	http.ResponseWriter
	start    time.Time
	status   int
	bytes    int64
	endpoint string
	reason   string // X-Berth-Error of a Berth-made answer
	via      target // where the request went; zero when nowhere
	viaSet   bool
	attrs    []slog.Attr // the line's attributes, kept with the pooled writer
}

// begin wraps w for the log, or returns nil when nothing would be logged.
func (l *accessLog) begin(ctx context.Context, w http.ResponseWriter) *accessWriter {
	if l == nil || !l.logger.Enabled(ctx, slog.LevelInfo) {
		return nil
	}
	aw, _ := l.pool.Get().(*accessWriter)
	if aw == nil {
		aw = new(accessWriter)
	}
	*aw = accessWriter{ResponseWriter: w, start: time.Now(), attrs: aw.attrs[:0]}
	return aw
}

// end writes the request's line and gives aw back.
func (l *accessLog) end(ctx context.Context, aw *accessWriter, r *http.Request) {
	status := aw.status
	if status == 0 {
		status = http.StatusOK // nothing written is an empty 200
	}
	attrs := append(aw.attrs[:0],
		slog.String("endpoint", aw.endpoint),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Int64("bytes", aw.bytes),
		slog.Duration("duration", time.Since(aw.start)),
		slog.String("remote", r.RemoteAddr))
	if r.TLS != nil {
		attrs = append(attrs, slog.Bool("tls", true))
	}
	switch {
	case !aw.viaSet:
	case aw.via.local != nil:
		attrs = append(attrs, slog.String("served", "local"), slog.String("connection", aw.via.local.id))
	default:
		attrs = append(attrs, slog.String("served", "peer"), slog.String("peer", aw.via.peer))
	}
	if aw.reason != "" {
		attrs = append(attrs, slog.String("error", aw.reason))
	}
	if len(l.headers) > 0 {
		hs := make([]slog.Attr, 0, len(l.headers))
		for _, h := range l.headers {
			if v := r.Header[h]; len(v) > 0 {
				hs = append(hs, slog.String(h, strings.Join(v, ", ")))
			}
		}
		attrs = append(attrs, slog.Attr{Key: "headers", Value: slog.GroupValue(hs...)})
	}
	l.logger.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
	clear(attrs) // drop references to this request's strings
	*aw = accessWriter{attrs: attrs[:0]}
	l.pool.Put(aw)
}

// served records where the request went (route.acc is nil when the log
// is off).
func (aw *accessWriter) served(t target) {
	if aw != nil {
		aw.via, aw.viaSet = t, true
	}
}

// failed records the reason of a Berth-made error answer.
func (aw *accessWriter) failed(reason string) {
	if aw != nil {
		aw.reason = reason
	}
}

func (aw *accessWriter) WriteHeader(code int) {
	if aw.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		aw.status = code
	}
	aw.ResponseWriter.WriteHeader(code)
}

func (aw *accessWriter) Write(b []byte) (int, error) {
	if aw.status == 0 {
		aw.status = http.StatusOK
	}
	n, err := aw.ResponseWriter.Write(b)
	aw.bytes += int64(n)
	return n, err
}

// Flush keeps streamed answers streaming through the wrapper.
func (aw *accessWriter) Flush() {
	if f, ok := aw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Hijack hands over the connection of an upgrade (101); the bytes copied
// after it are not counted.
func (aw *accessWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := aw.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	c, brw, err := hj.Hijack()
	if err == nil && aw.status == 0 {
		aw.status = http.StatusSwitchingProtocols
	}
	return c, brw, err
}

// Unwrap lets http.ResponseController reach the server's writer.
func (aw *accessWriter) Unwrap() http.ResponseWriter { return aw.ResponseWriter }
