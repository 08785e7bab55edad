package client

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Environment variables read by LoadEnv.
const (
	// EnvAddr lists control-plane gRPC addresses, comma-separated.
	EnvAddr = "BERTH_ADDR"
	// EnvToken is the bearer token sent with every call. It is read from the
	// environment (or a file) rather than a flag so it never shows in ps.
	EnvToken = "BERTH_TOKEN"
)

// OnBehalfKey is gRPC metadata a control-plane node sends when it calls
// an AdminService on behalf of someone whose token it has not checked
// itself (the web console relaying a browser's token). The receiving node
// then checks the bearer token even though the caller holds a server
// certificate, which otherwise passes as a node forwarding a call it
// already authorized. The value names the relaying part.
const OnBehalfKey = "berth-on-behalf-of"

// DefaultAddr is where a local development control plane listens.
const DefaultAddr = "127.0.0.1:7000"

// Config says where the control plane is and how hard to try reaching it.
type Config struct {
	// Addrs are control-plane gRPC addresses (host:port). Calls fail over
	// between them; leader hints from servers may add more at run time.
	Addrs []string
	// DialTimeout bounds how long one attempt waits for a connection to one
	// address before failing over to the next.
	DialTimeout time.Duration
	// CallTimeout bounds one attempt of a unary call on one address (0: only
	// the caller's context bounds it). It is per attempt, so a failover still
	// has time left; the caller's context bounds the whole call.
	CallTimeout time.Duration
	// Retries is how many extra rounds over the address set a unary call
	// makes after the first round fails (0: one round only).
	Retries int
	// BackoffBase and BackoffMax shape the jittered exponential wait between
	// rounds (and between stream reconnects, see Client.Backoff).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// KeepaliveTime is how long a connection may be idle before the client
	// pings the server; KeepaliveTimeout how long it waits for the ack.
	// Servers must allow pings this often (keepalive.EnforcementPolicy).
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration

	// TLS is how the client authenticates the servers (and itself).
	TLS TLSConfig
	// Token, when set, is sent as "authorization: Bearer <token>".
	Token string
	// TokenFile names a file holding the token; it wins over Token.
	TokenFile string
}

// TLSConfig holds the client side of TLS. Plaintext needs Insecure.
type TLSConfig struct {
	// Insecure disables TLS: development only, and logged loudly.
	Insecure bool
	// CAFile is a PEM bundle of CAs that sign server certificates (empty:
	// the system roots).
	CAFile string
	// CertFile and KeyFile are the client certificate for mTLS (optional;
	// both or neither).
	CertFile string
	KeyFile  string
	// ServerName overrides the name checked against server certificates.
	ServerName string
}

// Default returns a Config for a local control plane.
func Default() Config {
	return Config{
		Addrs:            []string{DefaultAddr},
		DialTimeout:      5 * time.Second,
		CallTimeout:      10 * time.Second,
		Retries:          5,
		BackoffBase:      100 * time.Millisecond,
		BackoffMax:       2 * time.Second,
		KeepaliveTime:    30 * time.Second,
		KeepaliveTimeout: 10 * time.Second,
	}
}

// LoadEnv overrides fields from the environment (EnvAddr, EnvToken) through
// getenv, normally os.Getenv. Call it before RegisterFlags so flags win and
// their help shows the values in effect.
func (c *Config) LoadEnv(getenv func(string) string) {
	if v := strings.TrimSpace(getenv(EnvAddr)); v != "" {
		c.Addrs = splitAddrs([]string{v})
	}
	if v := getenv(EnvToken); v != "" {
		c.Token = v
	}
}

// RegisterFlags binds the config to flags on fs, using the current values as
// defaults. --addr may be repeated or comma-separated.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Addrs, "addr", c.Addrs,
		"control-plane gRPC address host:port; repeat or comma-separate for failover")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", c.DialTimeout, "how long to wait for a connection to one address before trying the next")
	fs.DurationVar(&c.CallTimeout, "call-timeout", c.CallTimeout, "timeout of one call attempt on one address (0: none)")
	fs.IntVar(&c.Retries, "retries", c.Retries, "extra rounds over the addresses after the first fails")
	fs.DurationVar(&c.BackoffBase, "retry-backoff", c.BackoffBase, "initial wait between retry rounds (jittered, doubling)")
	fs.DurationVar(&c.BackoffMax, "retry-backoff-max", c.BackoffMax, "longest wait between retry rounds")
	fs.DurationVar(&c.KeepaliveTime, "keepalive-time", c.KeepaliveTime, "ping an idle connection after this long")
	fs.DurationVar(&c.KeepaliveTimeout, "keepalive-timeout", c.KeepaliveTimeout, "close a connection whose ping is not answered in this long")
	fs.BoolVar(&c.TLS.Insecure, "insecure", c.TLS.Insecure, "plaintext gRPC without TLS (development only)")
	fs.StringVar(&c.TLS.CAFile, "tls-ca", c.TLS.CAFile, "PEM file of CAs for server certificates (default: system roots)")
	fs.StringVar(&c.TLS.CertFile, "tls-cert", c.TLS.CertFile, "client certificate PEM file for mTLS")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", c.TLS.KeyFile, "client key PEM file for mTLS")
	fs.StringVar(&c.TLS.ServerName, "tls-server-name", c.TLS.ServerName, "name to verify in server certificates")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "file holding the bearer token (or set "+EnvToken+")")
}

// Validate reports the first problem with c. It normalizes Addrs (splits
// comma-separated entries, trims, drops duplicates) as it goes.
func (c *Config) Validate() error {
	c.Addrs = splitAddrs(c.Addrs)
	if len(c.Addrs) == 0 {
		return errors.New("addr: at least one control-plane address is required")
	}
	for _, a := range c.Addrs {
		if err := validateAddr(a); err != nil {
			return fmt.Errorf("addr: %w", err)
		}
	}
	switch {
	case c.DialTimeout <= 0:
		return fmt.Errorf("dial timeout: must be positive, got %s", c.DialTimeout)
	case c.CallTimeout < 0:
		return fmt.Errorf("call timeout: must not be negative, got %s", c.CallTimeout)
	case c.Retries < 0:
		return fmt.Errorf("retries: must not be negative, got %d", c.Retries)
	case c.BackoffBase <= 0:
		return fmt.Errorf("retry backoff: must be positive, got %s", c.BackoffBase)
	case c.BackoffMax < c.BackoffBase:
		return fmt.Errorf("retry backoff max: %s is below the base %s", c.BackoffMax, c.BackoffBase)
	case c.KeepaliveTime <= 0 || c.KeepaliveTimeout <= 0:
		return errors.New("keepalive: time and timeout must be positive")
	}
	if err := c.TLS.validate(); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	return nil
}

func (t TLSConfig) validate() error {
	if t.Insecure && (t.CAFile != "" || t.CertFile != "" || t.KeyFile != "") {
		return errors.New("insecure mode conflicts with TLS files")
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return errors.New("client certificate and key must be given together")
	}
	return nil
}

// splitAddrs flattens comma-separated entries, trims them and drops empties
// and duplicates, keeping the first occurrence's position.
func splitAddrs(in []string) []string {
	var out []string
	seen := make(map[string]bool)
	for _, entry := range in {
		for _, a := range strings.Split(entry, ",") {
			a = strings.TrimSpace(a)
			if a == "" || seen[a] {
				continue
			}
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// validateAddr accepts host:port, or a full gRPC target with a scheme
// (dns:///name:port) which is passed through untouched.
func validateAddr(a string) error {
	if strings.Contains(a, "://") {
		return nil
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q: want host:port: %w", a, err)
	}
	if host == "" {
		return fmt.Errorf("%q: missing host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("%q: bad port %q", a, port)
	}
	return nil
}
