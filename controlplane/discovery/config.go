package discovery

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/hashicorp/memberlist"
)

// Discovery modes, the values of Config.Mode and --discovery.
const (
	ModeStatic = "static"
	ModeDNS    = "dns"
	ModeGossip = "gossip"
)

// Gossip timing profiles, the values of GossipConfig.Profile. They select
// memberlist's DefaultLANConfig, DefaultLocalConfig or DefaultWANConfig.
const (
	ProfileLAN   = "lan"
	ProfileLocal = "local"
	ProfileWAN   = "wan"
)

// Config selects and configures one discovery strategy. Only the
// sub-configuration named by Mode is validated and used.
type Config struct {
	// Mode is ModeStatic, ModeDNS or ModeGossip.
	Mode   string
	Static StaticConfig
	DNS    DNSConfig
	Gossip GossipConfig
	// PollInterval is how often callers should run Watch, and how often
	// gossip retries its seeds.
	PollInterval time.Duration
}

// StaticConfig is a fixed list of control-plane gRPC addresses.
type StaticConfig struct {
	// Addrs are host:port entries. Listing this node too is fine and
	// expected: every node can share one list.
	Addrs []string
}

// DNSConfig looks addresses up in DNS on every Discover.
type DNSConfig struct {
	// Name is looked up for A and AAAA records, or for SRV records when
	// SRV is set (e.g. "_grpc._tcp.berth.ns.svc.cluster.local" for a
	// headless Kubernetes service).
	Name string
	// Port is the gRPC port paired with every A/AAAA address. Unused with
	// SRV, whose records carry their own ports.
	Port int
	// SRV selects an SRV lookup; its targets are resolved to A/AAAA.
	SRV bool
	// Server, if set, is the host:port of the DNS server to ask instead of
	// the system's resolvers (UDP, with TCP for truncated answers).
	Server string
	// Timeout bounds one Discover call.
	Timeout time.Duration
}

// GossipConfig runs a memberlist (SWIM) agent. Every message is encrypted
// and authenticated with a key derived from the shared secret, so nodes with
// another secret never join.
type GossipConfig struct {
	// Bind is the IP:port for gossip over both UDP and TCP; port 0 picks a
	// free one.
	Bind string
	// Advertise is the IP:port other members should use to reach this one,
	// when it differs from Bind (NAT, or Bind is 0.0.0.0 and the guess is
	// wrong). Empty means derive it from Bind.
	Advertise string
	// Join are host:port gossip addresses of other members, joined at start
	// and again every PollInterval while they are not members.
	Join []string
	// Secret is the shared passphrase. Prefer SecretFile: flag values show
	// in process listings. Exactly one of the two must be set.
	Secret string
	// SecretFile is a file holding the passphrase; surrounding white space
	// is ignored.
	SecretFile string
	// Profile is ProfileLAN, ProfileLocal or ProfileWAN.
	Profile string

	// tune adjusts the memberlist config last; tests use it to speed up
	// failure detection.
	tune func(*memberlist.Config)
}

// Default returns the default configuration: a static list, empty, which
// means a single-node cluster until peers are configured.
func Default() Config {
	return Config{
		Mode:         ModeStatic,
		PollInterval: 5 * time.Second,
		DNS:          DNSConfig{Timeout: 5 * time.Second},
		Gossip: GossipConfig{
			Bind:    "0.0.0.0:7946",
			Profile: ProfileLAN,
		},
	}
}

// Validate checks the configuration of the selected mode.
func (c Config) Validate() error {
	if c.PollInterval <= 0 {
		return fmt.Errorf("poll interval must be positive, got %v", c.PollInterval)
	}
	switch c.Mode {
	case ModeStatic:
		if err := c.Static.Validate(); err != nil {
			return fmt.Errorf("static: %w", err)
		}
	case ModeDNS:
		if err := c.DNS.Validate(); err != nil {
			return fmt.Errorf("dns: %w", err)
		}
	case ModeGossip:
		if err := c.Gossip.Validate(); err != nil {
			return fmt.Errorf("gossip: %w", err)
		}
	default:
		return fmt.Errorf("unknown mode %q (want %s, %s or %s)", c.Mode, ModeStatic, ModeDNS, ModeGossip)
	}
	return nil
}

// Validate checks every address.
func (c StaticConfig) Validate() error {
	_, err := normalizeList(c.Addrs)
	return err
}

// Validate checks the name, port, server and timeout.
func (c DNSConfig) Validate() error {
	if c.Name == "" {
		return errors.New("name is required")
	}
	if _, err := normalizeHost(c.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if c.SRV {
		if c.Port != 0 {
			return errors.New("port must not be set with SRV: the records carry the ports")
		}
	} else if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("port must be 1-65535, got %d", c.Port)
	}
	if c.Server != "" {
		if _, err := normalizeAddr(c.Server); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("timeout must be positive, got %v", c.Timeout)
	}
	return nil
}

// Validate checks addresses, the secret source and the profile. It does not
// read SecretFile; New does.
func (c GossipConfig) Validate() error {
	bind, err := parseIPPort(c.Bind, true)
	if err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if bind.Addr().Is6() && bind.Addr().IsUnspecified() && c.Advertise == "" {
		// memberlist only guesses a private address for 0.0.0.0.
		return errors.New("advertise is required when binding [::]")
	}
	if c.Advertise != "" {
		if _, err := parseIPPort(c.Advertise, false); err != nil {
			return fmt.Errorf("advertise: %w", err)
		}
	}
	if _, err := normalizeList(c.Join); err != nil {
		return fmt.Errorf("join: %w", err)
	}
	switch {
	case c.Secret == "" && c.SecretFile == "":
		return errors.New("a shared secret is required (secret file or secret)")
	case c.Secret != "" && c.SecretFile != "":
		return errors.New("set either the secret file or the secret, not both")
	case c.Secret != "" && strings.TrimSpace(c.Secret) == "":
		return errors.New("secret is blank")
	}
	switch c.Profile {
	case ProfileLAN, ProfileLocal, ProfileWAN:
	default:
		return fmt.Errorf("unknown profile %q (want %s, %s or %s)", c.Profile, ProfileLAN, ProfileLocal, ProfileWAN)
	}
	return nil
}

// parseIPPort parses an IP-literal host:port, which is what memberlist binds
// and advertises.
func parseIPPort(s string, allowZeroPort bool) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q: want IP:port: %w", s, ErrInvalidAddress)
	}
	if ap.Port() == 0 && !allowZeroPort {
		return netip.AddrPort{}, fmt.Errorf("address %q: port must be 1-65535: %w", s, ErrInvalidAddress)
	}
	return ap, nil
}

// RegisterFlags registers the discovery flags on fs, with c's current values
// as defaults. Call it on Default() before fs.Parse.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Mode, "discovery", c.Mode, "how to find control-plane nodes: static, dns or gossip")
	fs.DurationVar(&c.PollInterval, "discovery-poll-interval", c.PollInterval, "how often to look for control-plane nodes")

	fs.Var((*listValue)(&c.Static.Addrs), "discovery-static", "comma-separated control-plane gRPC addresses (host:port)")

	fs.StringVar(&c.DNS.Name, "discovery-dns-name", c.DNS.Name, "DNS name to look up (A/AAAA, or SRV with --discovery-dns-srv)")
	fs.IntVar(&c.DNS.Port, "discovery-dns-port", c.DNS.Port, "gRPC port for A/AAAA answers")
	fs.BoolVar(&c.DNS.SRV, "discovery-dns-srv", c.DNS.SRV, "look up SRV records (e.g. a headless Kubernetes service) instead of A/AAAA")
	fs.StringVar(&c.DNS.Server, "discovery-dns-server", c.DNS.Server, "DNS server host:port to ask instead of the system resolvers")
	fs.DurationVar(&c.DNS.Timeout, "discovery-dns-timeout", c.DNS.Timeout, "time limit of one DNS discovery round")

	fs.StringVar(&c.Gossip.Bind, "gossip-bind", c.Gossip.Bind, "IP:port for gossip (UDP and TCP)")
	fs.StringVar(&c.Gossip.Advertise, "gossip-advertise", c.Gossip.Advertise, "IP:port other members use to reach this one (default: from --gossip-bind)")
	fs.Var((*listValue)(&c.Gossip.Join), "gossip-join", "comma-separated gossip addresses (host:port) of members to join")
	fs.StringVar(&c.Gossip.SecretFile, "gossip-secret-file", c.Gossip.SecretFile, "file holding the shared gossip secret")
	fs.Var((*secretValue)(&c.Gossip.Secret), "gossip-secret", "shared gossip secret (prefer --gossip-secret-file: flags show in process listings)")
	fs.StringVar(&c.Gossip.Profile, "gossip-profile", c.Gossip.Profile, "gossip timings: lan, local or wan")
}

// listValue is a pflag.Value for comma-separated lists. Each Set replaces the
// list, so a repeated flag means its last value, like the other flags.
type listValue []string

func (l *listValue) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, ",")
}

func (l *listValue) Type() string { return "list" }

func (l *listValue) Set(s string) error {
	*l = splitList(s)
	return nil
}

// secretValue is a string flag whose value never shows in --help output.
type secretValue string

func (v *secretValue) String() string { return "" }

func (v *secretValue) Type() string { return "string" }

func (v *secretValue) Set(s string) error {
	*v = secretValue(s)
	return nil
}
