package proxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/dataplane/peer"
	"github.com/berthhq/berth/dataplane/ring"
	"github.com/berthhq/berth/dataplane/tunnel"
	"github.com/berthhq/berth/fsm"
)

// Config is one proxy's configuration.
type Config struct {
	ID     string
	Region string
	Zone   string
	Labels map[string]string
	// Weight is the proxy's relative share of connections.
	Weight uint32

	// TunnelAddr is where agents dial; DownstreamAddr serves clients;
	// PeerAddr accepts peer links; HTTPAddr serves /metrics and health ("":
	// off). The Advertise forms are what others dial (default: the listen
	// address, with an unspecified host replaced by 127.0.0.1).
	TunnelAddr          string
	TunnelAdvertise     string
	DownstreamAddr      string
	DownstreamAdvertise string
	PeerAddr            string
	PeerAdvertise       string
	HTTPAddr            string
	// Pprof serves net/http/pprof under /debug/pprof/ on HTTPAddr, so a
	// live proxy can be profiled.
	Pprof bool

	// ControlPlane is how the proxy reaches berthd.
	ControlPlane client.Config

	// HashHeader and HashCookie name the request's ring-hash key; without
	// one, requests go to the least loaded connection.
	HashHeader string
	HashCookie string
	Ring       ring.Config

	Tunnel tunnel.Config
	Peer   peer.Config

	// LoadInterval is how often load samples go to the control plane.
	LoadInterval time.Duration
	// EventFlush bounds how long a connection event waits to be batched.
	EventFlush time.Duration
	// CommitTimeout bounds how long a new tunnel waits for the control
	// plane to commit it before it is served anyway (static stability).
	CommitTimeout time.Duration
	// DrainTimeout bounds in-flight streams on a connection being closed
	// after a move or a drain.
	DrainTimeout time.Duration
	// MaxTunnels caps agent tunnels on this proxy (and so the size of a
	// full sync).
	MaxTunnels int
	// MaxStreamsPerTunnel caps streams open at once on one agent tunnel;
	// past it, requests go to another connection (or fail with 502).
	MaxStreamsPerTunnel int
	// MaxTunnelsPerToken caps this proxy's tunnels opened with one agent
	// token (by its id).
	MaxTunnelsPerToken int
	// TunnelRate and TunnelBurst limit new tunnels per source address
	// (per second, token bucket).
	TunnelRate  float64
	TunnelBurst int

	// AgentKeys is the keyring (a directory of key files, see package
	// token) that agent tokens must verify against. Set, every agent needs a
	// valid token naming the endpoints it registers, and its tunnel closes
	// when the token expires. Empty: agents are not authenticated (only with
	// --insecure).
	AgentKeys string
	// KeysReload is how often the agent keyring is re-read.
	KeysReload time.Duration

	// Edge is the downstream side: access log, timeouts, client
	// authentication and TLS (edge.go).
	Edge EdgeConfig

	// Collectors join the proxy's own metrics on its registry (served on
	// HTTPAddr): berth-proxy adds its berth_build_info gauge. Not a flag.
	Collectors []prometheus.Collector
}

// Default is a proxy on loopback talking to a local control plane.
func Default() Config {
	cp := client.Default()
	return Config{
		Weight:         1,
		TunnelAddr:     "127.0.0.1:8443",
		DownstreamAddr: "127.0.0.1:8080",
		PeerAddr:       "127.0.0.1:8444",
		HTTPAddr:       "127.0.0.1:8081",
		ControlPlane:   cp,
		Ring:           ring.Default(),
		Tunnel:         tunnel.DefaultConfig(),
		Peer:           peer.Default(),
		LoadInterval:   time.Second,
		EventFlush:     20 * time.Millisecond,
		CommitTimeout:  5 * time.Second,
		DrainTimeout:   30 * time.Second,
		MaxTunnels:     50_000,

		MaxStreamsPerTunnel: 4096,
		MaxTunnelsPerToken:  64,
		TunnelRate:          50,
		TunnelBurst:         100,
		KeysReload:          5 * time.Second,
		Edge:                DefaultEdge(),
	}
}

// Validate reports the first problem.
func (c *Config) Validate() error {
	if err := fsm.ValidateID("id", c.ID); err != nil {
		return err
	}
	for name, a := range map[string]string{"tunnel-addr": c.TunnelAddr, "downstream-addr": c.DownstreamAddr, "peer-addr": c.PeerAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return fmt.Errorf("http-addr: %w", err)
		}
	}
	if c.Pprof && c.HTTPAddr == "" {
		return errors.New("pprof: needs --http-addr")
	}
	if c.HashHeader != "" && c.HashCookie != "" {
		return errors.New("hash-header and hash-cookie exclude each other")
	}
	if err := c.ControlPlane.Validate(); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	if err := c.Ring.Validate(); err != nil {
		return fmt.Errorf("ring: %w", err)
	}
	if err := c.Tunnel.Validate(); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	if err := c.Edge.Validate(); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	switch {
	case c.LoadInterval <= 0:
		return errors.New("load-interval: must be positive")
	case c.EventFlush <= 0:
		return errors.New("event-flush: must be positive")
	case c.CommitTimeout <= 0:
		return errors.New("commit-timeout: must be positive")
	case c.DrainTimeout <= 0:
		return errors.New("drain-timeout: must be positive")
	case c.MaxTunnels < 1 || c.MaxTunnels > fsm.MaxReconcileConnections:
		return fmt.Errorf("max-tunnels %d: must be 1 to %d", c.MaxTunnels, fsm.MaxReconcileConnections)
	case c.MaxStreamsPerTunnel < 1:
		return errors.New("max-streams-per-tunnel: at least 1")
	case c.MaxTunnelsPerToken < 1:
		return errors.New("max-tunnels-per-token: at least 1")
	case c.KeysReload <= 0:
		return errors.New("keys-reload: must be positive")
	case c.TunnelRate <= 0 || c.TunnelBurst < 1:
		return errors.New("tunnel-rate and tunnel-burst: must be positive")
	case c.AgentKeys == "" && !c.ControlPlane.TLS.Insecure:
		return errors.New("agent-keys: required (agents must authenticate) unless --insecure")
	}
	if !c.ControlPlane.TLS.Insecure {
		if err := c.pkiFiles().Validate(); err != nil || !c.pkiFiles().Enabled() {
			return fmt.Errorf("tls: --tls-ca, --tls-cert and --tls-key (a proxy certificate) are required unless --insecure: %v", err)
		}
	}
	return nil
}

// RegisterFlags binds c to fs.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ID, "id", c.ID, "proxy ID, stable across restarts (required)")
	fs.StringVar(&c.Region, "region", c.Region, "region this proxy serves")
	fs.StringVar(&c.Zone, "zone", c.Zone, "zone within the region")
	fs.StringToStringVar(&c.Labels, "label", c.Labels, "labels, key=value (repeatable)")
	fs.Uint32Var(&c.Weight, "weight", c.Weight, "relative share of connections")
	fs.StringVar(&c.TunnelAddr, "tunnel-addr", c.TunnelAddr, "where agents dial their tunnels")
	fs.StringVar(&c.TunnelAdvertise, "tunnel-advertise", c.TunnelAdvertise, "tunnel address others are told (default: tunnel-addr)")
	fs.StringVar(&c.DownstreamAddr, "downstream-addr", c.DownstreamAddr, "where downstream clients send requests")
	fs.StringVar(&c.DownstreamAdvertise, "downstream-advertise", c.DownstreamAdvertise, "downstream address others are told")
	fs.StringVar(&c.PeerAddr, "peer-addr", c.PeerAddr, "where other proxies open peer links")
	fs.StringVar(&c.PeerAdvertise, "peer-advertise", c.PeerAdvertise, "peer address others are told")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "address for /metrics, /healthz and /readyz (empty: off)")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve net/http/pprof under /debug/pprof/ on --http-addr")
	fs.StringVar(&c.HashHeader, "hash-header", c.HashHeader, "request header whose value is the ring-hash key")
	fs.StringVar(&c.HashCookie, "hash-cookie", c.HashCookie, "cookie whose value is the ring-hash key")
	fs.DurationVar(&c.CommitTimeout, "commit-timeout", c.CommitTimeout, "how long a new tunnel waits for the control plane before it is served anyway")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", c.DrainTimeout, "how long in-flight streams may take when a connection is drained")
	fs.IntVar(&c.MaxTunnels, "max-tunnels", c.MaxTunnels, "agent tunnels this proxy accepts at most")
	fs.IntVar(&c.MaxStreamsPerTunnel, "max-streams-per-tunnel", c.MaxStreamsPerTunnel, "streams open at once on one agent tunnel")
	fs.IntVar(&c.MaxTunnelsPerToken, "max-tunnels-per-token", c.MaxTunnelsPerToken, "tunnels one agent token may hold on this proxy")
	fs.Float64Var(&c.TunnelRate, "tunnel-rate", c.TunnelRate, "new tunnels per second from one source address")
	fs.IntVar(&c.TunnelBurst, "tunnel-burst", c.TunnelBurst, "burst of new tunnels from one source address")
	fs.StringVar(&c.AgentKeys, "agent-keys", c.AgentKeys, "directory of keys agent tokens are verified with (berthctl token keygen)")
	c.Edge.RegisterFlags(fs)
	c.Ring.RegisterFlags(fs)
	c.Peer.RegisterFlags(fs)
	c.ControlPlane.RegisterFlags(fs)
}

// advertise turns a listener's address into one others can dial.
func advertise(configured string, ln net.Addr) string {
	if configured != "" {
		return configured
	}
	host, port, err := net.SplitHostPort(ln.String())
	if err != nil {
		return ln.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	if _, err := strconv.Atoi(port); err != nil {
		return ln.String()
	}
	return net.JoinHostPort(strings.Trim(host, "[]"), port)
}

// pkiFiles are the proxy's certificate files: the same CA, certificate
// (role proxy) and key serve its control-plane client, its peer links and
// its tunnel port.
func (c *Config) pkiFiles() pki.Files {
	t := c.ControlPlane.TLS
	return pki.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile}
}
