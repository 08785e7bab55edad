// Package bench is a closed-loop HTTP load generator that checks every
// response (berthctl bench http). Each client holds one keep-alive
// connection and sends its next request when the last answer has been read
// and checked; a request that fails, answers with an unexpected status or
// echoes the wrong body is an error, never throughput.
//
// The client side is written for low overhead (one pre-built request per
// client, a reused read buffer, no http.Transport), so that on a machine
// shared with the system under test the generator takes as little CPU as
// it can and the measured ratios speak about the system.
package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Config is one load run.
type Config struct {
	// URL is the target: http://host:port/path.
	URL string
	// Host overrides the Host header (the URL's host by default).
	Host string
	// Headers are added to every request.
	Headers http.Header
	// Clients is the number of concurrent keep-alive connections.
	Clients int
	// Duration bounds the run; Requests, when positive, stops it after
	// that many answered requests instead (whichever comes first).
	Duration time.Duration
	Requests int64
	// BodySize is the request body; with a body the method is POST and,
	// with Echo, the response must be the same bytes.
	BodySize int
	Echo     bool
	// Timeout bounds one request.
	Timeout time.Duration
	// Warmup requests run before timing starts (one per client at least
	// fills the connections).
	Warmup time.Duration
}

// Default is 16 clients for 10 s, 1 KiB echoed.
func Default() Config {
	return Config{
		Clients:  16,
		Duration: 10 * time.Second,
		BodySize: 1024,
		Echo:     true,
		Timeout:  10 * time.Second,
		Warmup:   time.Second,
	}
}

// maxBody bounds the request body (and so an echoed response).
const maxBody = 64 << 20

// Validate reports a run that cannot be made.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		return errors.New("url: required")
	case err != nil:
		return fmt.Errorf("url: %w", err)
	case u.Scheme != "http":
		return fmt.Errorf("url %q: only http:// is supported", c.URL)
	case u.Host == "":
		return fmt.Errorf("url %q: no host", c.URL)
	case c.Clients < 1 || c.Clients > 10_000:
		return fmt.Errorf("clients %d: want 1..10000", c.Clients)
	case c.Duration <= 0 && c.Requests <= 0:
		return errors.New("duration or requests: one must be positive")
	case c.Duration < 0 || c.Requests < 0:
		return errors.New("duration and requests: must not be negative")
	case c.BodySize < 0 || c.BodySize > maxBody:
		return fmt.Errorf("body size %d: want 0..%d", c.BodySize, maxBody)
	case c.Echo && c.BodySize > 0 && c.BodySize < seqLen:
		return fmt.Errorf("body size %d: an echoed body needs at least %d bytes to carry its sequence number", c.BodySize, seqLen)
	case c.Timeout <= 0:
		return errors.New("timeout: must be positive")
	case c.Warmup < 0:
		return errors.New("warmup: must not be negative")
	}
	return nil
}

// Result is what a run measured. Latencies cover answered, checked
// requests only.
type Result struct {
	Requests  int64            `json:"requests"`
	Errors    map[string]int64 `json:"errors"`
	Elapsed   time.Duration    `json:"elapsed_ns"`
	PerSecond float64          `json:"requests_per_second"`
	P50       time.Duration    `json:"p50_ns"`
	P90       time.Duration    `json:"p90_ns"`
	P99       time.Duration    `json:"p99_ns"`
	Max       time.Duration    `json:"max_ns"`
	BytesSent int64            `json:"bytes_sent"`
	BytesRecv int64            `json:"bytes_received"`
}

// ErrorCount is the number of failed requests of every kind.
func (r Result) ErrorCount() int64 {
	var n int64
	for _, v := range r.Errors {
		n += v
	}
	return n
}

// Error kinds, as keys of Result.Errors.
const (
	ErrDial     = "dial"
	ErrWrite    = "write"
	ErrRead     = "read"
	ErrTimeout  = "timeout"
	ErrBody     = "body-mismatch"
	ErrStatus   = "status-" // + the code, e.g. status-502
	ErrTooLarge = "response-too-large"
)

// seqLen is the sequence number at the start of every echoed body, so an
// answer meant for another request is caught.
const seqLen = 8

// Run drives the load until cfg's duration or count is reached or ctx ends.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	u, _ := url.Parse(cfg.URL)
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	host := cfg.Host
	if host == "" {
		host = u.Host
	}
	head := requestHead(u.RequestURI(), host, cfg)

	if cfg.Warmup > 0 {
		wc := cfg
		wc.Requests = 0
		warm := &run{cfg: wc, addr: addr, head: head, stopAt: time.Now().Add(cfg.Warmup)}
		warm.start(ctx)
	}
	r := &run{cfg: cfg, addr: addr, head: head}
	if cfg.Duration > 0 {
		r.stopAt = time.Now().Add(cfg.Duration)
	}
	start := time.Now()
	lats := r.start(ctx)
	elapsed := time.Since(start)

	res := Result{Errors: r.errs, Elapsed: elapsed, BytesSent: r.sent, BytesRecv: r.recv}
	res.Requests = int64(len(lats))
	if elapsed > 0 {
		res.PerSecond = float64(res.Requests) / elapsed.Seconds()
	}
	if len(lats) > 0 {
		slices.Sort(lats)
		res.P50 = percentile(lats, 0.50)
		res.P90 = percentile(lats, 0.90)
		res.P99 = percentile(lats, 0.99)
		res.Max = lats[len(lats)-1]
	}
	return res, ctx.Err()
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(float64(len(sorted))*q+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func requestHead(path, host string, cfg Config) []byte {
	method := http.MethodGet
	if cfg.BodySize > 0 {
		method = http.MethodPost
	}
	b := fmt.Appendf(nil, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, host)
	for k, vs := range cfg.Headers {
		for _, v := range vs {
			b = fmt.Appendf(b, "%s: %s\r\n", k, v)
		}
	}
	if cfg.BodySize > 0 {
		b = fmt.Appendf(b, "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n", cfg.BodySize)
	}
	return append(b, "\r\n"...)
}

// run is one timed phase: its clients share the counters under mu.
type run struct {
	cfg    Config
	addr   string
	head   []byte
	stopAt time.Time // zero: no time limit

	mu         sync.Mutex
	done       int64 // answered and failed requests, for Requests
	errs       map[string]int64
	sent, recv int64
}

func (r *run) start(ctx context.Context) []time.Duration {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !r.stopAt.IsZero() {
		var stop context.CancelFunc
		ctx, stop = context.WithDeadline(ctx, r.stopAt)
		defer stop()
	}
	r.errs = map[string]int64{}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []time.Duration
	)
	for i := range r.cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lats := r.client(ctx, cancel, uint64(i)<<40)
			mu.Lock()
			all = append(all, lats...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all
}

// take counts one answered request and says whether to send another.
func (r *run) take(sent, recv int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done++
	r.sent += int64(sent)
	r.recv += int64(recv)
	return r.cfg.Requests <= 0 || r.done < r.cfg.Requests
}

// fail counts one failed request (it counts towards Requests too, so a
// run against a server that only fails still ends) and says whether to
// send another.
func (r *run) fail(kind string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[kind]++
	r.done++
	return r.cfg.Requests <= 0 || r.done < r.cfg.Requests
}

// client sends requests one after another on a keep-alive connection,
// redialling after any error, until ctx ends.
func (r *run) client(ctx context.Context, stopAll context.CancelFunc, seq uint64) []time.Duration {
	var (
		lats   []time.Duration
		conn   net.Conn // written under connMu; the AfterFunc reads it
		connMu sync.Mutex
		br     *bufio.Reader
		d      net.Dialer
	)
	body := make([]byte, r.cfg.BodySize)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	req := append(append([]byte(nil), r.head...), body...)
	bodyAt := len(r.head)
	got := make([]byte, 0, r.cfg.BodySize)
	closeConn := func() {
		connMu.Lock()
		defer connMu.Unlock()
		if conn != nil {
			_ = conn.Close()
			conn = nil
		}
	}
	defer closeConn()
	// Ending the run unblocks a client stuck in a read.
	stop := context.AfterFunc(ctx, func() {
		connMu.Lock()
		defer connMu.Unlock()
		if conn != nil {
			_ = conn.Close()
		}
	})
	defer stop()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := d.DialContext(ctx, "tcp", r.addr)
			if err != nil {
				if ctx.Err() == nil {
					if !r.fail(ErrDial) {
						stopAll()
						break
					}
					sleepCtx(ctx, 10*time.Millisecond)
				}
				continue
			}
			connMu.Lock()
			conn = c
			connMu.Unlock()
			br = bufio.NewReaderSize(conn, 32<<10)
		}
		seq++
		if r.cfg.Echo && len(body) >= seqLen {
			binary.BigEndian.PutUint64(req[bodyAt:], seq)
		}
		t0 := time.Now()
		_ = conn.SetDeadline(t0.Add(r.cfg.Timeout))
		kind, n, reuse := r.roundTrip(conn, br, req, req[bodyAt:], &got)
		if ctx.Err() != nil {
			break
		}
		if kind != "" {
			closeConn()
			if !r.fail(kind) {
				stopAll()
				break
			}
			continue
		}
		lats = append(lats, time.Since(t0))
		if !reuse {
			closeConn()
		}
		if !r.take(len(req), n) {
			stopAll()
			break
		}
	}
	return lats
}

// roundTrip writes one request and reads and checks its answer. It returns
// the error kind ("" for success), the response body's size and whether
// the connection may carry the next request.
func (r *run) roundTrip(conn net.Conn, br *bufio.Reader, req, want []byte, got *[]byte) (kind string, size int, reuse bool) {
	if _, err := conn.Write(req); err != nil {
		return ioKind(err, ErrWrite), 0, false
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return ioKind(err, ErrRead), 0, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return ErrStatus + strconv.Itoa(resp.StatusCode), 0, false
	}
	buf := (*got)[:0]
	limit := int64(maxBody)
	if r.cfg.Echo && len(want) > 0 {
		limit = int64(len(want)) + 1
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := resp.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			*got = buf[:0]
			return ErrTooLarge, len(buf), false
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			*got = buf[:0]
			return ioKind(err, ErrRead), len(buf), false
		}
	}
	*got = buf[:0]
	if r.cfg.Echo && len(want) > 0 && string(buf) != string(want) {
		return ErrBody, len(buf), false
	}
	return "", len(buf), !resp.Close
}

func ioKind(err error, kind string) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ErrTimeout
	}
	return kind
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
