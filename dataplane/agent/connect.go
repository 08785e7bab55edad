package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// EndpointError is a proxy's refusal of a TCP upgrade: the HTTP status and
// the X-Berth-Error header it sent.
type EndpointError struct {
	Endpoint   string
	StatusCode int
	Message    string
}

func (e *EndpointError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("agent: endpoint %s: proxy answered %d %s", e.Endpoint, e.StatusCode, http.StatusText(e.StatusCode))
	}
	return fmt.Sprintf("agent: endpoint %s: proxy answered %d %s: %s", e.Endpoint, e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// DialEndpoint opens a raw TCP stream to endpoint through a proxy's
// downstream HTTP port: it upgrades an HTTP/1.1 request to "berth-tcp" and
// returns the connection once the proxy answers 101, bytes the proxy sent
// after its response headers included. Any other answer is an
// *EndpointError. ctx bounds the dial and the upgrade, not the stream.
func DialEndpoint(ctx context.Context, proxyAddr, endpoint string, tlsCfg *tls.Config) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("agent: dial proxy %s: %w", proxyAddr, err)
	}
	// ctx's deadline acts through the AfterFunc, which runs once ctx.Err is
	// set, so a timed-out upgrade reports context.DeadlineExceeded.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	fail := func(err error) (net.Conn, error) {
		stop()
		_ = conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agent: upgrade to %s via %s: %w", endpoint, proxyAddr, ctx.Err())
		}
		return nil, err
	}
	if tlsCfg != nil {
		tc := tls.Client(conn, tlsFor(tlsCfg, proxyAddr))
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(fmt.Errorf("agent: tls handshake with %s: %w", proxyAddr, err))
		}
		conn = tc
	}
	req := "GET /.berth/tcp HTTP/1.1\r\n" +
		"Host: " + endpoint + "\r\n" +
		"X-Berth-Endpoint: " + endpoint + "\r\n" +
		"Connection: Upgrade\r\n" +
		"Upgrade: berth-tcp\r\n\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		return fail(fmt.Errorf("agent: upgrade request to %s: %w", proxyAddr, err))
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return fail(fmt.Errorf("agent: upgrade response from %s: %w", proxyAddr, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		_ = resp.Body.Close()
		return fail(&EndpointError{Endpoint: endpoint, StatusCode: resp.StatusCode, Message: resp.Header.Get("X-Berth-Error")})
	}
	if !stop() {
		return fail(ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	return &bufferedConn{Conn: conn, r: br}, nil
}

// bufferedConn reads first what the response parser buffered past the
// headers.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection when the transport can.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// Relay is TCP client mode: every connection accepted on ln is relayed to
// endpoint through one of proxies (tried in turn until one upgrades), until
// ctx ends; then ln is closed, open relays are cut, and Relay returns nil.
func Relay(ctx context.Context, ln net.Listener, proxies []string, endpoint string, tlsCfg *tls.Config, logger *slog.Logger) error {
	if len(proxies) == 0 {
		return errors.New("agent: relay: no proxy address")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("subsystem", "agent", "endpoint", endpoint)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		live = make(map[net.Conn]struct{})
		next int
	)
	stop := context.AfterFunc(ctx, func() {
		_ = ln.Close()
		mu.Lock()
		for c := range live {
			_ = c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: relay: %w", err)
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			_ = c.Close()
			return nil
		}
		live[c] = struct{}{}
		first := next
		next = (next + 1) % len(proxies)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				mu.Lock()
				delete(live, c)
				mu.Unlock()
			}()
			log := logger.With("client", c.RemoteAddr().String())
			var up net.Conn
			var err error
			for i := range proxies {
				addr := proxies[(first+i)%len(proxies)]
				dctx, cancel := context.WithTimeout(ctx, localDialTimeout)
				up, err = DialEndpoint(dctx, addr, endpoint, tlsCfg)
				cancel()
				if err == nil {
					break
				}
				log.Warn("relay: upgrade failed", "proxy", addr, "err", err)
				var ee *EndpointError
				if errors.As(err, &ee) && ee.StatusCode < 500 {
					break // the endpoint is refused, not the proxy unreachable
				}
			}
			if err != nil {
				_ = c.Close()
				return
			}
			mu.Lock()
			if ctx.Err() != nil {
				mu.Unlock()
				_ = up.Close()
				_ = c.Close()
				return
			}
			live[up] = struct{}{}
			mu.Unlock()
			sent, received := Pipe(c, up)
			mu.Lock()
			delete(live, up)
			mu.Unlock()
			log.Debug("relay done", "bytes_out", sent, "bytes_in", received)
		}()
	}
}
