package peer

import (
	"crypto/tls"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"time"

	"github.com/berthhq/berth/dataplane/tunnel"
)

// Config tunes a Pool.
type Config struct {
	// SelfID is this proxy's id, sent in PeerHello; Serve refuses links
	// that claim it.
	SelfID string
	// TLS secures links both ways when set (the client side for dials, and
	// the server side for Serve unless ServerTLS is set); nil means
	// plaintext.
	TLS *tls.Config
	// ServerTLS, when set, is used for accepted links instead of TLS (a
	// server config, e.g. one that requires and checks client certificates).
	ServerTLS *tls.Config
	// Tunnel tunes the yamux sessions and bounds each handshake.
	Tunnel tunnel.Config
	// BackoffBase is the back-off after the first failure; it doubles with
	// each failed dial in a row up to BackoffMax, with full jitter.
	BackoffBase time.Duration
	// BackoffMax caps the back-off.
	BackoffMax time.Duration
	// HeartbeatInterval is how often every READY link is pinged.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is how long a ping may take before the link is
	// declared dead and closed. It is much shorter than yamux's own
	// keepalive, which only notices a dead peer after its write timeout.
	HeartbeatTimeout time.Duration
}

// Default returns the defaults; SelfID must still be set.
func Default() Config {
	return Config{
		Tunnel:            tunnel.DefaultConfig(),
		BackoffBase:       100 * time.Millisecond,
		BackoffMax:        5 * time.Second,
		HeartbeatInterval: 2 * time.Second,
		HeartbeatTimeout:  5 * time.Second,
	}
}

// Validate reports whether c is usable.
func (c Config) Validate() error {
	if p := idProblem(c.SelfID); p != "" {
		return fmt.Errorf("self id: %s", p)
	}
	if err := c.Tunnel.Validate(); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	switch {
	case c.BackoffBase <= 0:
		return fmt.Errorf("backoff base %v: must be positive", c.BackoffBase)
	case c.BackoffMax < c.BackoffBase:
		return fmt.Errorf("backoff max %v: must be at least the base %v", c.BackoffMax, c.BackoffBase)
	case c.HeartbeatInterval <= 0:
		return fmt.Errorf("heartbeat interval %v: must be positive", c.HeartbeatInterval)
	case c.HeartbeatTimeout <= 0:
		return fmt.Errorf("heartbeat timeout %v: must be positive", c.HeartbeatTimeout)
	}
	return nil
}

// RegisterFlags binds the tunable fields to fs; values already in c are
// the defaults. SelfID, TLS and Tunnel come from the proxy's own flags.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&c.BackoffBase, "peer-backoff-base", c.BackoffBase, "back-off after a failed peer dial; doubles per failure, with jitter")
	fs.DurationVar(&c.BackoffMax, "peer-backoff-max", c.BackoffMax, "longest back-off between peer dials")
	fs.DurationVar(&c.HeartbeatInterval, "peer-heartbeat-interval", c.HeartbeatInterval, "how often each peer link is pinged")
	fs.DurationVar(&c.HeartbeatTimeout, "peer-heartbeat-timeout", c.HeartbeatTimeout, "how long a peer ping may take before the link is closed")
}

// maxIDLen and the characters below mirror fsm.ValidateID; the data plane
// does not import the registry for one rule.
const maxIDLen = 128

// idProblem describes what is wrong with a proxy id, or returns "".
func idProblem(id string) string {
	if id == "" {
		return "empty"
	}
	if len(id) > maxIDLen {
		return fmt.Sprintf("%d characters, at most %d", len(id), maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return fmt.Sprintf("%q has %q at %d; allowed: A-Z a-z 0-9 . _ : -", id, c, i)
		}
	}
	return ""
}

// Sentinel errors.
var (
	// ErrBackoff is OpenStream on a peer whose last dial failed (or whose
	// link broke) less than its back-off ago; the caller should try
	// another holder.
	ErrBackoff = errors.New("peer: in back-off")
	// ErrUnknownPeer is a proxy id the directory does not know, or this
	// proxy's own.
	ErrUnknownPeer = errors.New("peer: unknown peer")
	// ErrClosed is any call on a closed Pool.
	ErrClosed = errors.New("peer: pool closed")
)
