package conf

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// logFlushInterval is the longest a daemon's info line waits in memory.
const logFlushInterval = 100 * time.Millisecond

// bufferedOutput holds log lines for at most an interval before writing
// them, so a proxy's access log (a line per request) costs one write per
// interval instead of one per request. Lines at warn and above are written
// at once (flushingHandler), and Close writes the rest.
type bufferedOutput struct {
	mu   sync.Mutex
	w    *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

func newBufferedOutput(w io.Writer, every time.Duration) *bufferedOutput {
	b := &bufferedOutput{w: bufio.NewWriterSize(w, 64<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				_ = b.Flush()
			case <-b.stop:
				return
			}
		}
	}()
	return b
}

func (b *bufferedOutput) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

// Flush writes what is held.
func (b *bufferedOutput) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.w.Buffered() == 0 {
		return nil
	}
	return b.w.Flush()
}

// Close stops the flusher and writes what is held.
func (b *bufferedOutput) Close() error {
	close(b.stop)
	<-b.done
	return b.Flush()
}

// flushingHandler writes out a record at warn or above as soon as it is
// formatted, with everything held before it.
type flushingHandler struct {
	slog.Handler
	out *bufferedOutput
}

func (h flushingHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		_ = h.out.Flush()
	}
	return err
}

func (h flushingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return flushingHandler{Handler: h.Handler.WithAttrs(attrs), out: h.out}
}

func (h flushingHandler) WithGroup(name string) slog.Handler {
	return flushingHandler{Handler: h.Handler.WithGroup(name), out: h.out}
}
