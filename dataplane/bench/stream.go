package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/berthhq/berth/dataplane/agent"
)

// Stream kinds.
const (
	// StreamTCP is one raw TCP connection to an echo service: direct, or
	// through a proxy's berth-tcp upgrade.
	StreamTCP = "tcp"
	// StreamWebSocket is one WebSocket to an echo service, binary messages.
	StreamWebSocket = "ws"
)

// StreamConfig is one stream's throughput run (berthctl bench stream): a
// writer sends a known byte pattern as fast as the stream takes it, a
// reader checks every echoed byte, and the result is the echoed bytes per
// second. Any byte out of place ends the run with an error.
type StreamConfig struct {
	Kind string
	// Target: for tcp the echo service's host:port, or with Via the
	// proxy's downstream host:port; for ws a ws:// URL.
	Target string
	// Via makes a tcp stream go through the proxy at Target, to Endpoint,
	// with the berth-tcp upgrade.
	Via bool
	// Endpoint is sent as X-Berth-Endpoint (tcp with Via, and ws).
	Endpoint string
	Duration time.Duration
	// ChunkSize is the size of each write (tcp) or message (ws).
	ChunkSize int
	// Window is how many ws messages may await their echo.
	Window int
	// Timeout bounds connecting and, after Duration, the last echoes.
	Timeout time.Duration
}

// DefaultStream is 10 s of 64 KiB chunks, 8 messages in flight.
func DefaultStream() StreamConfig {
	return StreamConfig{Kind: StreamTCP, Duration: 10 * time.Second, ChunkSize: 64 << 10, Window: 8, Timeout: 10 * time.Second}
}

// Validate reports a configuration that cannot run.
func (c StreamConfig) Validate() error {
	switch {
	case c.Kind != StreamTCP && c.Kind != StreamWebSocket:
		return fmt.Errorf("stream kind %q: tcp or ws", c.Kind)
	case c.Target == "":
		return errors.New("stream target: required")
	case c.Duration <= 0:
		return errors.New("duration: must be positive")
	case c.ChunkSize < 64 || c.ChunkSize > 1<<20:
		return fmt.Errorf("chunk size %d: 64 to 1048576", c.ChunkSize)
	case c.Window < 1:
		return errors.New("window: at least 1")
	case c.Timeout <= 0:
		return errors.New("timeout: must be positive")
	case c.Kind == StreamWebSocket && c.Via:
		return errors.New("via: tcp streams only (a WebSocket URL names the proxy itself)")
	}
	return nil
}

// StreamResult is what one stream carried.
type StreamResult struct {
	Bytes   int64         // echoed and checked
	Elapsed time.Duration // first write to last checked byte
	MBps    float64       // Bytes per second, in MB (10^6)
}

// patternPeriod is prime, so a chunk read at the wrong offset does not
// match by accident.
const patternPeriod = 65521

// pattern returns the byte pattern, long enough to slice any chunk of up to
// size bytes at any offset mod patternPeriod.
func pattern(size int) []byte {
	p := make([]byte, patternPeriod+size)
	for i := range p {
		p[i] = byte((i%patternPeriod)*31 + (i%patternPeriod)>>8)
	}
	return p
}

// RunStream runs one stream.
func RunStream(ctx context.Context, cfg StreamConfig) (StreamResult, error) {
	if err := cfg.Validate(); err != nil {
		return StreamResult{}, err
	}
	if cfg.Kind == StreamWebSocket {
		return runWebSocket(ctx, cfg)
	}
	return runTCP(ctx, cfg)
}

func dialTCPStream(ctx context.Context, cfg StreamConfig) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if cfg.Via {
		return agent.DialEndpoint(dctx, cfg.Target, cfg.Endpoint, nil)
	}
	c, err := (&net.Dialer{}).DialContext(dctx, "tcp", cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", cfg.Target, err)
	}
	return c, nil
}

func runTCP(ctx context.Context, cfg StreamConfig) (StreamResult, error) {
	c, err := dialTCPStream(ctx, cfg)
	if err != nil {
		return StreamResult{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()
	pat := pattern(cfg.ChunkSize)
	start := time.Now()
	wrote := make(chan int64, 1)
	go func() {
		var off int64
		deadline := start.Add(cfg.Duration)
		for time.Now().Before(deadline) {
			at := int(off % patternPeriod)
			n, err := c.Write(pat[at : at+cfg.ChunkSize])
			off += int64(n)
			if err != nil {
				break
			}
		}
		wrote <- off
		// The echo ends when the service sees the half-close; should a hop
		// not pass it on, the read deadline ends the wait.
		if tc, ok := c.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		_ = c.SetReadDeadline(time.Now().Add(cfg.Timeout))
	}()
	buf := make([]byte, cfg.ChunkSize)
	var (
		got  int64
		last time.Time
		rerr error
	)
	for rerr == nil {
		var n int
		n, rerr = c.Read(buf)
		if n > 0 {
			at := int(got % patternPeriod)
			if !bytes.Equal(buf[:n], pat[at:at+n]) {
				return StreamResult{}, fmt.Errorf("echoed bytes at offset %d differ from what was sent", got)
			}
			got += int64(n)
			last = time.Now()
		}
	}
	if total := <-wrote; got != total {
		return StreamResult{}, fmt.Errorf("%d of %d bytes came back: %w", got, total, rerr)
	}
	return streamResult(got, last.Sub(start)), nil
}

func runWebSocket(ctx context.Context, cfg StreamConfig) (StreamResult, error) {
	hdr := http.Header{}
	if cfg.Endpoint != "" {
		hdr.Set("X-Berth-Endpoint", cfg.Endpoint)
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	c, _, err := websocket.Dial(dctx, cfg.Target, &websocket.DialOptions{HTTPHeader: hdr})
	cancel()
	if err != nil {
		return StreamResult{}, fmt.Errorf("dial %s: %w", cfg.Target, err)
	}
	defer c.CloseNow()
	c.SetReadLimit(int64(cfg.ChunkSize) + 64)
	pat := pattern(cfg.ChunkSize)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	// Each message: its sequence number, then the pattern from an offset
	// that number picks.
	msg := func(seq uint64, b []byte) []byte {
		at := int((seq * 7919) % patternPeriod)
		b = binary.BigEndian.AppendUint64(b[:0], seq)
		return append(b, pat[at:at+cfg.ChunkSize-8]...)
	}
	wctx, wcancel := context.WithTimeout(ctx, cfg.Duration+cfg.Timeout)
	defer wcancel()
	credits := make(chan struct{}, cfg.Window)
	for range cfg.Window {
		credits <- struct{}{}
	}
	// After the last message an 8-byte end mark, echoed like the rest.
	end := binary.BigEndian.AppendUint64(nil, ^uint64(0))
	sent := make(chan uint64, 1)
	go func() {
		var seq uint64
		out := make([]byte, 0, cfg.ChunkSize)
		defer func() { sent <- seq }()
		for time.Now().Before(deadline) {
			select {
			case <-credits:
			case <-wctx.Done():
				return
			}
			if err := c.Write(wctx, websocket.MessageBinary, msg(seq, out)); err != nil {
				return
			}
			seq++
		}
		_ = c.Write(wctx, websocket.MessageBinary, end)
	}()
	want := make([]byte, 0, cfg.ChunkSize)
	var (
		got, bytesIn uint64
		last         time.Time
	)
	for {
		_, b, err := c.Read(wctx)
		if err != nil {
			return StreamResult{}, fmt.Errorf("stream ended after %d messages: %w", got, err)
		}
		if bytes.Equal(b, end) {
			break
		}
		if !bytes.Equal(b, msg(got, want)) {
			return StreamResult{}, fmt.Errorf("echoed message %d differs from what was sent", got)
		}
		got++
		bytesIn += uint64(len(b))
		last = time.Now()
		credits <- struct{}{}
	}
	if total := <-sent; got != total {
		return StreamResult{}, fmt.Errorf("%d of %d messages came back", got, total)
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
	return streamResult(int64(bytesIn), last.Sub(start)), nil
}

func streamResult(n int64, d time.Duration) StreamResult {
	r := StreamResult{Bytes: n, Elapsed: d}
	if d > 0 {
		r.MBps = float64(n) / d.Seconds() / 1e6
	}
	return r
}
