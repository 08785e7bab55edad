// Package client is the gRPC client of the Berth control plane, shared by
// berthctl and (later) proxies.
//
// A Client keeps one long-lived grpc.ClientConn per control-plane address,
// created on first use, and implements grpc.ClientConnInterface itself, so
// any generated service client built on it fails over between addresses:
//
//   - a call goes to the preferred address (the last one that answered);
//   - codes.Unavailable, or no connection within DialTimeout, moves it to
//     the next address, round robin; after a full round it backs off
//     (jittered, exponential) and starts another, up to Config.Retries extra
//     rounds;
//   - a "not leader" answer (see NotLeaderStatus) naming the leader's address
//     sends the next attempt there, adding it to the address set; without an
//     address (an election is running) the client backs off and retries.
//
// Streams are retried the same way only while being opened; once a stream
// is established, an error ends it and the caller resumes (for example a
// watch restarting from the last index it saw). Retrying mid-stream would
// hide lost or repeated messages, which only the caller can judge.
//
// Unavailable is retried for every method, writes included: servers return
// it only when they did not act on the call (not leader, shutting down,
// connection refused). A call that timed out after reaching a server is not
// retried, since it may have taken effect.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/pki"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Errors returned by the Client.
var (
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("client: closed")
)

// RetryError is returned when a call failed on every attempt. It wraps the
// last attempt's error, so status.Code and AsNotLeader see through it.
type RetryError struct {
	// Method is the full gRPC method name.
	Method string
	// Attempts is how many attempts were made, over all addresses.
	Attempts int
	// Err is the last attempt's error.
	Err error
	// Stopped is the caller's context error when it ended the retries
	// early; nil when the retry budget ran out.
	Stopped error
}

// Error implements error.
func (e *RetryError) Error() string {
	if e.Stopped != nil {
		return fmt.Sprintf("stopped after %s (%v): %v", e.attempts(), e.Stopped, e.Err)
	}
	return fmt.Sprintf("gave up after %s: %v", e.attempts(), e.Err)
}

func (e *RetryError) attempts() string {
	if e.Attempts == 1 {
		return "1 attempt"
	}
	return fmt.Sprintf("%d attempts", e.Attempts)
}

// Unwrap returns the last attempt's error.
func (e *RetryError) Unwrap() error { return e.Err }

// connectError is an attempt that never got a connection within
// DialTimeout: safe to retry elsewhere, as the call was never sent.
type connectError struct {
	addr    string
	timeout time.Duration
}

func (e *connectError) Error() string {
	return fmt.Sprintf("connect to %s: not ready after %s", e.addr, e.timeout)
}

// GRPCStatus makes status.Code report DeadlineExceeded.
func (e *connectError) GRPCStatus() *status.Status {
	return status.New(codes.DeadlineExceeded, e.Error())
}

// Client talks to the control plane, failing over between its nodes. It is
// safe for concurrent use.
type Client struct {
	cfg      Config
	logger   *slog.Logger
	dialOpts []grpc.DialOption

	mu        sync.Mutex
	addrs     []string // known addresses; leader hints append to it
	preferred int      // index into addrs of the next address to try
	conns     map[string]*grpc.ClientConn
	closed    bool
	reloader  *pki.Reloader // nil unless TLS with a Berth identity
}

var _ grpc.ClientConnInterface = (*Client)(nil)

// New validates cfg and returns a Client. It does not connect: connections
// are made on first use. A nil logger discards logs.
func New(cfg Config, logger *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("client config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("subsystem", "cpclient")

	creds, reloader, err := transportCredentials(cfg.TLS, logger)
	if err != nil {
		return nil, fmt.Errorf("client tls: %w", err)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                cfg.KeepaliveTime,
			Timeout:             cfg.KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  cfg.BackoffBase,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   cfg.BackoffMax,
			},
			MinConnectTimeout: cfg.DialTimeout,
		}),
	}
	token, err := loadToken(cfg)
	if err != nil {
		return nil, err
	}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds{token: token, requireTLS: !cfg.TLS.Insecure}))
	}
	if cfg.TLS.Insecure {
		// Debug, not Warn: a daemon warns once at start for its whole
		// insecure setup, and berthctl (a new client per call or
		// reconnect) says it only with -v.
		logger.Debug("INSECURE: plaintext gRPC to the control plane, TLS is off (development mode only)",
			"addrs", strings.Join(cfg.Addrs, ","))
	}
	return &Client{
		cfg:      cfg,
		logger:   logger,
		dialOpts: opts,
		addrs:    slices.Clone(cfg.Addrs),
		conns:    make(map[string]*grpc.ClientConn),
		reloader: reloader,
	}, nil
}

// Admin returns an AdminService client whose unary calls fail over.
func (c *Client) Admin() berthv1.AdminServiceClient {
	return berthv1.NewAdminServiceClient(c)
}

// Addrs returns the addresses the client currently knows, including any
// learned from leader hints.
func (c *Client) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.addrs)
}

// Backoff returns the jittered wait before retry round n (n >= 1): the base
// doubled n-1 times, capped at the max, then drawn from [d/2, d]. Callers
// that resume streams use it between reconnects.
func (c *Client) Backoff(n int) time.Duration {
	d := c.cfg.BackoffBase
	for i := 1; i < n && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.BackoffMax)
	half := d / 2
	return half + rand.N(d-half+1)
}

// Close closes every connection. Calls made afterwards fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.reloader != nil {
		c.reloader.Close()
	}
	var errs []error
	for addr, cc := range c.conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", addr, err))
		}
	}
	clear(c.conns)
	return errors.Join(errs...)
}

// Invoke performs a unary call with failover. Each attempt is bounded by
// Config.CallTimeout; ctx bounds the whole call, retries included.
func (c *Client) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.retry(ctx, method, func(ctx context.Context, cc *grpc.ClientConn) error {
		if c.cfg.CallTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.cfg.CallTimeout)
			defer cancel()
		}
		return cc.Invoke(ctx, method, args, reply, opts...)
	})
}

// NewStream opens a stream on a reachable address, failing over while the
// stream is being opened. Errors after that end the stream; see the package
// comment.
func (c *Client) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	var stream grpc.ClientStream
	err := c.retry(ctx, method, func(ctx context.Context, cc *grpc.ClientConn) error {
		s, err := cc.NewStream(ctx, desc, method, opts...)
		stream = s
		return err
	})
	if err != nil {
		return nil, err
	}
	return stream, nil
}

// retry runs attempt on address after address until one succeeds, the
// error is not worth retrying, the rounds run out or ctx ends.
func (c *Client) retry(ctx context.Context, method string, attempt func(context.Context, *grpc.ClientConn) error) error {
	var (
		lastErr  error
		attempts int
	)
	giveUp := func(stopped error) error {
		return &RetryError{Method: method, Attempts: attempts, Err: lastErr, Stopped: stopped}
	}
	for round := 0; round <= c.cfg.Retries; round++ {
		if round > 0 {
			if err := sleep(ctx, c.Backoff(round)); err != nil {
				return giveUp(err)
			}
		}
		tried := make(map[string]bool)
		for {
			addr, cc, err := c.pick(tried)
			if errors.Is(err, ErrClosed) {
				return err
			}
			if addr == "" {
				break // every address tried this round
			}
			tried[addr] = true
			if err != nil {
				// A target grpc cannot even parse (say, a bad leader hint):
				// skip it and try the others.
				lastErr = err
				continue
			}
			attempts++
			err = c.waitReady(ctx, addr, cc)
			if err == nil {
				err = attempt(ctx, cc)
			}
			if err == nil {
				c.prefer(addr)
				return nil
			}
			lastErr = err
			if ctx.Err() != nil {
				if attempts == 1 {
					return err
				}
				return giveUp(ctx.Err())
			}
			nl, isNotLeader := AsNotLeader(err)
			if !isNotLeader && !retryable(err) {
				return err // a definitive answer from a server
			}
			if isNotLeader {
				if nl.LeaderAddress != "" && !tried[nl.LeaderAddress] {
					c.logger.Debug("not leader; redirecting", "method", method, "addr", addr,
						"leader_id", nl.LeaderID, "leader_address", nl.LeaderAddress)
					c.redirect(nl.LeaderAddress)
					continue
				}
				// No usable leader address: an election is likely running,
				// so asking the other nodes now would not help.
				c.logger.Debug("not leader and no leader known; backing off", "method", method, "addr", addr)
				break
			}
			c.logger.Debug("call failed; trying next address", "method", method, "addr", addr, "err", err)
			c.advance(addr)
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no control-plane address to try")
	}
	return giveUp(nil)
}

// retryable reports whether err means the call did not reach a server that
// acted on it, so another address may succeed.
func retryable(err error) bool {
	var ce *connectError
	if errors.As(err, &ce) {
		return true
	}
	return status.Code(err) == codes.Unavailable
}

// pick returns the first address, starting at the preferred one, that has
// not been tried this round, with its connection ("" when none is left).
func (c *Client) pick(tried map[string]bool) (string, *grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return "", nil, ErrClosed
	}
	n := len(c.addrs)
	for i := range n {
		addr := c.addrs[(c.preferred+i)%n]
		if tried[addr] {
			continue
		}
		cc, err := c.connLocked(addr)
		return addr, cc, err
	}
	return "", nil, nil
}

// connLocked returns the connection to addr, creating it once. grpc.NewClient
// does not dial, so holding the mutex here is cheap, and racing callers still
// share one connection. c.mu must be held.
func (c *Client) connLocked(addr string) (*grpc.ClientConn, error) {
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, c.dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// waitReady waits up to DialTimeout for cc to connect. A connection in
// TRANSIENT_FAILURE returns at once: the call then fails fast with the
// transport's own error, which names the cause.
func (c *Client) waitReady(ctx context.Context, addr string, cc *grpc.ClientConn) error {
	state := cc.GetState()
	if state == connectivity.Ready || state == connectivity.TransientFailure {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	for {
		switch state {
		case connectivity.Ready, connectivity.TransientFailure:
			return nil
		case connectivity.Idle:
			cc.Connect()
		case connectivity.Shutdown:
			return ErrClosed
		}
		if !cc.WaitForStateChange(dctx, state) {
			if err := ctx.Err(); err != nil {
				return status.FromContextError(err).Err()
			}
			return &connectError{addr: addr, timeout: c.cfg.DialTimeout}
		}
		state = cc.GetState()
	}
}

// prefer makes addr the first address tried by later calls.
func (c *Client) prefer(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i := slices.Index(c.addrs, addr); i >= 0 {
		c.preferred = i
	}
}

// advance moves the preference past addr, unless another call already moved
// it elsewhere.
func (c *Client) advance(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.addrs[c.preferred] == addr {
		c.preferred = (c.preferred + 1) % len(c.addrs)
	}
}

// redirect adds addr (a leader hint) to the known addresses if new and
// prefers it.
func (c *Client) redirect(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.addrs, addr)
	if i < 0 {
		c.addrs = append(c.addrs, addr)
		i = len(c.addrs) - 1
	}
	c.preferred = i
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// transportCredentials builds the connection security. With a CA, a
// certificate and a key (a Berth PKI identity), the material reloads from
// disk and the server must present a Berth server certificate (its role is
// checked, and its host name when ServerName is set); otherwise plain TLS
// with the CA (or system roots) and an optional client certificate.
func transportCredentials(t TLSConfig, logger *slog.Logger) (credentials.TransportCredentials, *pki.Reloader, error) {
	if t.Insecure {
		return insecure.NewCredentials(), nil, nil
	}
	files := pki.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile}
	if files.CA != "" && files.Cert != "" && files.Key != "" {
		r, err := pki.NewReloader(files, logger)
		if err != nil {
			return nil, nil, err
		}
		return credentials.NewTLS(r.ClientConfig(t.ServerName, pki.RoleServer)), r, nil
	}
	creds, err := staticCredentials(t)
	return creds, nil, err
}

func staticCredentials(t TLSConfig) (credentials.TransportCredentials, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: t.ServerName}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(tc), nil
}

func loadToken(cfg Config) (string, error) {
	if cfg.TokenFile == "" {
		return strings.TrimSpace(cfg.Token), nil
	}
	b, err := os.ReadFile(cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", cfg.TokenFile)
	}
	return token, nil
}

// tokenCreds sends a bearer token with every call.
type tokenCreds struct {
	token      string
	requireTLS bool
}

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.token}, nil
}

func (t tokenCreds) RequireTransportSecurity() bool { return t.requireTLS }
