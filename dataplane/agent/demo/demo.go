// Package demo is a tiny upstream HTTP service for trying Berth out
// (berth-agent demo-upstream): a greeting, an echo, a WebSocket echo and a
// slow stream, enough to see plain requests, upgrades and long responses
// cross a tunnel.
package demo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Limits of the demo handlers.
const (
	// MaxEchoBytes bounds an /echo body and a /ws message.
	MaxEchoBytes = 1 << 20
	// MaxStreamLines bounds /stream?n=.
	MaxStreamLines = 10_000
	// StreamInterval is the pause between /stream lines.
	StreamInterval = 100 * time.Millisecond
)

// Handler serves the demo routes; name identifies the instance in replies.
//
//	GET  /          greeting naming the instance
//	POST /echo      the request body back
//	GET  /ws        WebSocket echo
//	GET  /stream?n= n lines, one per StreamInterval, flushed as they go
func Handler(name string, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("subsystem", "demo")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Demo-Instance", name)
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Demo-Instance", name)
		if ct := r.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		body := http.MaxBytesReader(w, r.Body, MaxEchoBytes)
		b, err := io.ReadAll(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return // Accept has answered
		}
		defer c.CloseNow()
		c.SetReadLimit(MaxEchoBytes)
		if err := wsEcho(r.Context(), c); err != nil && websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			logger.Debug("websocket ended", "err", err)
		}
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		n := 10
		if v := r.URL.Query().Get("n"); v != "" {
			var err error
			if n, err = strconv.Atoi(v); err != nil || n < 0 || n > MaxStreamLines {
				http.Error(w, fmt.Sprintf("n: want 0..%d", MaxStreamLines), http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Demo-Instance", name)
		rc := http.NewResponseController(w)
		t := time.NewTicker(StreamInterval)
		defer t.Stop()
		for i := 1; i <= n; i++ {
			if i > 1 {
				select {
				case <-t.C:
				case <-r.Context().Done():
					return
				}
			}
			if _, err := fmt.Fprintf(w, "%s line %d/%d\n", name, i, n); err != nil {
				return
			}
			_ = rc.Flush()
		}
	})
	return mux
}

func wsEcho(ctx context.Context, c *websocket.Conn) error {
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return err
		}
		if err := c.Write(ctx, typ, msg); err != nil {
			return err
		}
	}
}

// Serve runs the demo handler on ln until ctx ends, then shuts down
// gracefully (bounded by five seconds). It closes ln.
func Serve(ctx context.Context, ln net.Listener, name string, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{Handler: Handler(name, logger), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("demo upstream listening", "subsystem", "demo", "addr", ln.Addr().String(), "name", name)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	return err
}

// ServeTCPEcho echoes every byte each connection on ln sends until ctx
// ends; a client's half-close ends its echo. It closes ln.
func ServeTCPEcho(ctx context.Context, ln net.Listener, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	logger.Info("demo TCP echo listening", "subsystem", "demo", "addr", ln.Addr().String())
	for {
		c, err := ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A plain copy: io.Copy of a TCP connection into itself would
			// splice(2) the socket into itself, which lost bytes under load.
			buf := make([]byte, 64<<10)
			_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, buf)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			_ = c.Close()
		}()
	}
}
