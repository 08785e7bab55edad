package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// EdgeConfig is what the proxy does at the edge, towards downstream
// clients: the access log, the downstream server's timeouts, optional
// client authentication and an optional TLS listener.
type EdgeConfig struct {
	// AccessLog writes one log line per downstream request (at info, with
	// subsystem "access").
	AccessLog bool
	// AccessLogHeaders are request headers whose values the access log
	// records (none by default: headers may carry secrets).
	AccessLogHeaders []string

	// ReadHeaderTimeout bounds reading a request's headers (a slowloris
	// client is cut by it). IdleTimeout bounds a keep-alive connection
	// waiting for its next request. Neither applies once a request is being
	// served, so they never cut a WebSocket or a streamed body.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	// UpstreamHeaderTimeout bounds the wait for an upstream's response
	// headers once the request is sent (0: no bound, so long polls work);
	// a response that has started streams for as long as it lasts.
	UpstreamHeaderTimeout time.Duration

	// AuthKeys, when set, is a keyring directory (as --agent-keys): every
	// downstream request must carry "Authorization: Bearer <token>" with a
	// token of that keyring whose endpoints claim covers the endpoint.
	AuthKeys string

	// TLSAddr, TLSCert and TLSKey run a downstream HTTPS listener (TLS 1.2+,
	// HTTP/2 by ALPN) beside the plain one; the files are re-read when they
	// change. Empty TLSAddr: no TLS listener.
	TLSAddr string
	TLSCert string
	TLSKey  string
	// CertReload is how often the TLS files are checked for change.
	CertReload time.Duration
}

// DefaultEdge logs every request and bounds only what a well-behaved
// client never waits on.
func DefaultEdge() EdgeConfig {
	return EdgeConfig{
		AccessLog:         true,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		CertReload:        5 * time.Second,
	}
}

// Validate reports the first problem.
func (c *EdgeConfig) Validate() error {
	for _, h := range c.AccessLogHeaders {
		if h == "" || strings.ContainsAny(h, " :\t\r\n") {
			return fmt.Errorf("access-log-headers: %q is not a header name", h)
		}
	}
	switch {
	case c.ReadHeaderTimeout <= 0:
		return errors.New("read-header-timeout: must be positive (it is what cuts slow clients)")
	case c.IdleTimeout <= 0:
		return errors.New("idle-timeout: must be positive")
	case c.UpstreamHeaderTimeout < 0:
		return errors.New("upstream-header-timeout: must not be negative (0 is no bound)")
	case c.CertReload <= 0:
		return errors.New("downstream-tls-reload: must be positive")
	}
	if c.TLSAddr != "" {
		if _, _, err := net.SplitHostPort(c.TLSAddr); err != nil {
			return fmt.Errorf("downstream-tls-addr: %w", err)
		}
		if c.TLSCert == "" || c.TLSKey == "" {
			return errors.New("downstream-tls-addr: needs --downstream-tls-cert and --downstream-tls-key")
		}
	} else if c.TLSCert != "" || c.TLSKey != "" {
		return errors.New("downstream-tls-cert/-key: need --downstream-tls-addr")
	}
	return nil
}

// RegisterFlags binds c to fs.
func (c *EdgeConfig) RegisterFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&c.AccessLog, "access-log", c.AccessLog, "log one line per downstream request")
	fs.StringSliceVar(&c.AccessLogHeaders, "access-log-headers", c.AccessLogHeaders, "request headers the access log records (comma-separated)")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", c.ReadHeaderTimeout, "bound on reading a downstream request's headers")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "bound on a keep-alive downstream connection waiting for its next request")
	fs.DurationVar(&c.UpstreamHeaderTimeout, "upstream-header-timeout", c.UpstreamHeaderTimeout, "bound on waiting for an upstream's response headers (0: none)")
	fs.StringVar(&c.AuthKeys, "downstream-auth-keys", c.AuthKeys, "keyring directory; set, downstream requests need a bearer token covering their endpoint")
	fs.StringVar(&c.TLSAddr, "downstream-tls-addr", c.TLSAddr, "where downstream clients connect over TLS (empty: off)")
	fs.StringVar(&c.TLSCert, "downstream-tls-cert", c.TLSCert, "PEM certificate (chain) for the TLS listener, re-read on change")
	fs.StringVar(&c.TLSKey, "downstream-tls-key", c.TLSKey, "PEM private key for the TLS listener, re-read on change")
	fs.DurationVar(&c.CertReload, "downstream-tls-reload", c.CertReload, "how often the downstream TLS files are checked for change")
}

// headerNames canonicalises the access log's header list once.
func (c *EdgeConfig) headerNames() []string {
	out := make([]string, len(c.AccessLogHeaders))
	for i, h := range c.AccessLogHeaders {
		out[i] = http.CanonicalHeaderKey(h)
	}
	return out
}
