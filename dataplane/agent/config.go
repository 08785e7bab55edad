package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/dataplane/tunnel"
	"github.com/berthhq/berth/fsm"
)

// Config is an agent's identity, the proxies it may dial and how it retries.
type Config struct {
	// Proxies are proxy tunnel addresses (host:port). The agent dials any of
	// them, rotating on failure; a Reconnect from a proxy may point it at
	// an address outside this list.
	Proxies []string
	// AgentID names this agent process in the registry (default:
	// hostname-pid).
	AgentID string
	// Slot is the listener identity, stable across reconnects and moves so a
	// connection keeps its ring-hash position (default: AgentID).
	Slot string
	// Endpoints are the endpoints this agent serves (DNS labels).
	Endpoints []string
	// Token is the agent token sent in the hello.
	Token string
	// TLS secures the tunnel; nil is plaintext. An empty ServerName is
	// filled with the host of the address dialled.
	TLS *tls.Config
	// Tunnel tunes the tunnel sessions.
	Tunnel tunnel.Config
	// BackoffBase and BackoffMax shape the wait between dial attempts:
	// exponential with full jitter (uniform in [0, min(max, base*2^n)]).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// DrainTimeout bounds how long an old tunnel's in-flight streams may run
	// after a move or drain before the agent closes it.
	DrainTimeout time.Duration
	// HTTPProxy is an HTTP proxy (http:// or https:// URL, user info for
	// Basic auth) that tunnels go through with CONNECT, over either
	// transport. Empty: the environment's HTTPS_PROXY (and NO_PROXY);
	// NoHTTPProxy: always direct.
	HTTPProxy string
}

// NoHTTPProxy as Config.HTTPProxy dials proxies directly whatever the
// environment says.
const NoHTTPProxy = "none"

// Default returns a Config with every tunable set; Proxies and Endpoints
// must still be filled in.
func Default() Config {
	return Config{
		Tunnel:       tunnel.DefaultConfig(),
		BackoffBase:  100 * time.Millisecond,
		BackoffMax:   10 * time.Second,
		DrainTimeout: 30 * time.Second,
	}
}

// RegisterFlags binds c's fields to flags on fs, with c's values as
// defaults. Endpoints are not bound: commands name them their own way
// (berth-agent takes name=local-address pairs). The token is not a flag, so
// it never shows in ps.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Proxies, "proxy", c.Proxies, "proxy tunnel address host:port, or a ws:// or wss:// URL to tunnel over WebSocket; repeat or comma-separate to fail over")
	fs.StringVar(&c.HTTPProxy, "http-proxy", c.HTTPProxy, "HTTP proxy URL to CONNECT through (default: $HTTPS_PROXY; \"none\": direct)")
	fs.StringVar(&c.AgentID, "agent-id", c.AgentID, "agent id (default: hostname-pid)")
	fs.StringVar(&c.Slot, "slot", c.Slot, "listener identity kept across reconnects and moves (default: the agent id)")
	fs.DurationVar(&c.BackoffBase, "backoff-base", c.BackoffBase, "first reconnect wait (full jitter, doubling)")
	fs.DurationVar(&c.BackoffMax, "backoff-max", c.BackoffMax, "longest reconnect wait")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "how long an old tunnel's streams may run after a move or drain")
	fs.DurationVar(&c.Tunnel.HandshakeTimeout, "handshake-timeout", c.Tunnel.HandshakeTimeout, "bound on the tunnel handshake and each stream's header exchange")
	fs.DurationVar(&c.Tunnel.KeepAliveInterval, "keepalive-interval", c.Tunnel.KeepAliveInterval, "ping an idle tunnel this often")
}

// Validate reports the first problem with c. Empty AgentID and Slot are
// allowed (New fills them in).
func (c Config) Validate() error {
	if len(c.Proxies) == 0 {
		return errors.New("proxy: at least one proxy address is required")
	}
	for _, p := range c.Proxies {
		if tunnel.IsWebSocketURL(p) {
			if _, err := tunnel.ParseWebSocketURL(p); err != nil {
				return fmt.Errorf("proxy: %w", err)
			}
			continue
		}
		if err := fsm.ValidateHostPort("proxy", p); err != nil {
			return err
		}
	}
	if _, err := c.proxyFunc(); err != nil {
		return err
	}
	if c.AgentID != "" {
		if err := fsm.ValidateID("agent id", c.AgentID); err != nil {
			return err
		}
	}
	if c.Slot != "" {
		if err := fsm.ValidateID("slot", c.Slot); err != nil {
			return err
		}
	}
	if len(c.Endpoints) == 0 {
		return errors.New("endpoints: at least one endpoint is required")
	}
	if len(c.Endpoints) > fsm.MaxEndpointsPerConnection {
		return fmt.Errorf("endpoints: %d endpoints, at most %d", len(c.Endpoints), fsm.MaxEndpointsPerConnection)
	}
	seen := make(map[string]bool, len(c.Endpoints))
	for _, e := range c.Endpoints {
		if err := fsm.ValidateEndpointName(e); err != nil {
			return err
		}
		if seen[e] {
			return fmt.Errorf("endpoints: %q listed twice", e)
		}
		seen[e] = true
	}
	if err := c.Tunnel.Validate(); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	switch {
	case c.BackoffBase <= 0:
		return fmt.Errorf("backoff base: must be positive, got %s", c.BackoffBase)
	case c.BackoffMax < c.BackoffBase:
		return fmt.Errorf("backoff max: %s is below the base %s", c.BackoffMax, c.BackoffBase)
	case c.DrainTimeout <= 0:
		return fmt.Errorf("drain timeout: must be positive, got %s", c.DrainTimeout)
	}
	return nil
}

// withDefaults fills the identity fields Validate lets through empty.
func (c Config) withDefaults() Config {
	if c.AgentID == "" {
		c.AgentID = defaultAgentID()
	}
	if c.Slot == "" {
		c.Slot = c.AgentID
	}
	c.Proxies = append([]string(nil), c.Proxies...)
	c.Endpoints = append([]string(nil), c.Endpoints...)
	return c
}

// defaultAgentID is hostname-pid, with characters an ID may not hold
// replaced so it always validates.
func defaultAgentID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "agent"
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		host = host[:i]
	}
	id := []byte(host + "-" + strconv.Itoa(os.Getpid()))
	for i, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			id[i] = '-'
		}
	}
	if len(id) > fsm.MaxIDLen {
		id = id[len(id)-fsm.MaxIDLen:]
	}
	return string(id)
}

// TLSOptions are TLS settings from files, as commands take them.
type TLSOptions struct {
	// Enable turns TLS on with the system roots when no CA file is given.
	Enable bool
	// CAFile is a PEM bundle of CAs that sign proxy certificates.
	CAFile string
	// CertFile and KeyFile are a client certificate (both or neither).
	CertFile, KeyFile string
	// ServerName overrides the name checked in proxy certificates.
	ServerName string
}

// RegisterFlags binds o to flags on fs.
func (o *TLSOptions) RegisterFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&o.Enable, "tls", o.Enable, "use TLS to the proxy (implied by the other --tls-* flags)")
	fs.StringVar(&o.CAFile, "tls-ca", o.CAFile, "PEM file of CAs for proxy certificates (default: system roots)")
	fs.StringVar(&o.CertFile, "tls-cert", o.CertFile, "client certificate PEM file")
	fs.StringVar(&o.KeyFile, "tls-key", o.KeyFile, "client key PEM file")
	fs.StringVar(&o.ServerName, "tls-server-name", o.ServerName, "name to verify in proxy certificates (default: the host dialled)")
}

// Load builds the tls.Config o describes; nil when TLS is off.
func (o TLSOptions) Load() (*tls.Config, error) {
	if !o.Enable && o.CAFile == "" && o.CertFile == "" && o.KeyFile == "" && o.ServerName == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca: no certificate in %s", o.CAFile)
		}
		cfg.RootCAs = pool
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("tls: client certificate and key must be given together")
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// ReadToken reads an agent token from a file, trimming surrounding space.
func ReadToken(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(raw))
	if tok == "" {
		return "", fmt.Errorf("token file %s: empty", path)
	}
	return tok, nil
}

// tlsFor returns cfg with ServerName set to addr's host when it was empty,
// since the agent dials several proxies with one configuration.
func tlsFor(cfg *tls.Config, addr string) *tls.Config {
	if cfg == nil || cfg.ServerName != "" {
		return cfg
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return cfg
	}
	c := cfg.Clone()
	c.ServerName = host
	return c
}

// proxyFunc is how tunnels find their HTTP proxy.
func (c Config) proxyFunc() (func(*http.Request) (*url.URL, error), error) {
	switch c.HTTPProxy {
	case "":
		return http.ProxyFromEnvironment, nil
	case NoHTTPProxy:
		return nil, nil
	}
	u, err := url.Parse(c.HTTPProxy)
	if err != nil {
		return nil, fmt.Errorf("http-proxy: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return nil, fmt.Errorf("http-proxy: %q: want http://host:port or https://host:port", c.HTTPProxy)
	}
	return http.ProxyURL(u), nil
}
