package controlplane

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/controlplane/discovery"
	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/fsm"
)

// Config is one control-plane node's configuration.
type Config struct {
	// ID is the node's Raft server ID; stable across restarts.
	ID string
	// DataDir holds the Raft log, stable store and snapshots.
	DataDir string

	// RaftAddr is where the Raft transport listens; RaftAdvertise is what
	// peers dial (defaults to RaftAddr).
	RaftAddr      string
	RaftAdvertise string
	// GRPCAddr serves the admin, registry and cluster services;
	// GRPCAdvertise is what peers, proxies and tools dial.
	GRPCAddr      string
	GRPCAdvertise string
	// HTTPAddr serves /metrics, /healthz and /readyz; empty disables it.
	HTTPAddr string

	// BootstrapExpect bootstraps a new cluster once this many nodes without
	// Raft state see each other. 0 means: only ever join an existing cluster
	// (or Bootstrap a single node explicitly).
	BootstrapExpect int
	// Bootstrap makes a node with no Raft state bootstrap a cluster of
	// itself alone (development and the first node of a manual setup).
	Bootstrap bool
	// Discovery finds the other control-plane nodes.
	Discovery discovery.Config
	// RemoveDeadAfter removes a voter that has been unreachable this long,
	// while quorum stays safe; 0 disables removal.
	RemoveDeadAfter time.Duration
	// MinVoters is the size below which dead servers are never removed.
	MinVoters int

	// TLS names this node's CA bundle, certificate (role server) and key:
	// mutual TLS on Raft and gRPC, with roles checked per service.
	TLS pki.Files
	// Insecure runs without TLS (development only, logged loudly).
	Insecure bool
	// AdminAuth requires an admin token on every AdminService call (read
	// or operate role; default deny).
	AdminAuth bool
	// AdminBootstrapTokenFile holds an operate token that is always
	// accepted, to create the first tokens (berthctl token admin bootstrap).
	AdminBootstrapTokenFile string

	Raft       RaftConfig
	Heartbeat  HeartbeatConfig
	Broker     BrokerConfig
	ApplyLimit ApplyConfig
	Rebalance  RebalanceConfig
}

// RaftConfig holds the Raft timings and storage knobs.
type RaftConfig struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotInterval and SnapshotThreshold decide when the FSM is
	// snapshotted and the log truncated; TrailingLogs entries are kept so a
	// briefly lagging follower catches up from the log, not a snapshot.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	SnapshotRetain    int
	// MaxAppendEntries bounds how many log entries travel (and are fsynced)
	// together; larger batches give more writes per fsync.
	MaxAppendEntries int
}

// HeartbeatConfig says when a silent proxy is judged.
type HeartbeatConfig struct {
	// UnhealthyAfter without a load sample marks a proxy UNHEALTHY.
	UnhealthyAfter time.Duration
	// DownAfter without a load sample marks it DOWN and drops its
	// connections.
	DownAfter time.Duration
	// Grace is how long a new leader waits before judging anyone: it has no
	// samples yet.
	Grace time.Duration
	// Interval between judgements.
	Interval time.Duration
}

// ApplyConfig bounds writes.
type ApplyConfig struct {
	// Timeout for one proposal to commit and apply.
	Timeout time.Duration
}

// Default returns a configuration that runs one node on loopback.
func Default() Config {
	return Config{
		ID:              "",
		DataDir:         "",
		RaftAddr:        "127.0.0.1:7001",
		GRPCAddr:        "127.0.0.1:7000",
		HTTPAddr:        "127.0.0.1:7002",
		Discovery:       discovery.Default(),
		RemoveDeadAfter: 0,
		MinVoters:       3,
		Raft: RaftConfig{
			// Tuned for a LAN control plane: a dead leader is replaced
			// in about a second (deploy/local/failover; docs/BENCHMARKS.md).
			// Across regions, raise all three together.
			HeartbeatTimeout:   500 * time.Millisecond,
			ElectionTimeout:    500 * time.Millisecond,
			LeaderLeaseTimeout: 250 * time.Millisecond,
			CommitTimeout:      5 * time.Millisecond,
			SnapshotInterval:   120 * time.Second,
			SnapshotThreshold:  16384,
			TrailingLogs:       10240,
			SnapshotRetain:     2,
			MaxAppendEntries:   512,
		},
		Heartbeat: HeartbeatConfig{
			UnhealthyAfter: 5 * time.Second,
			DownAfter:      30 * time.Second,
			Grace:          10 * time.Second,
			Interval:       time.Second,
		},
		Broker:     DefaultBrokerConfig(),
		ApplyLimit: ApplyConfig{Timeout: 10 * time.Second},
		Rebalance:  DefaultRebalanceConfig(),
	}
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if err := fsm.ValidateID("node id", c.ID); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	if c.DataDir == "" {
		return errors.New("data-dir: required")
	}
	for name, addr := range map[string]string{"raft-addr": c.RaftAddr, "grpc-addr": c.GRPCAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return fmt.Errorf("http-addr: %w", err)
		}
	}
	if c.Insecure && c.TLS.Enabled() {
		return errors.New("insecure and tls-* exclude each other")
	}
	if !c.Insecure {
		if !c.TLS.Enabled() {
			return errors.New("tls: --tls-ca, --tls-cert and --tls-key are required (or --insecure for plaintext, development only)")
		}
		if err := c.TLS.Validate(); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
	}
	if c.BootstrapExpect < 0 {
		return fmt.Errorf("bootstrap-expect: %d is negative", c.BootstrapExpect)
	}
	if c.Bootstrap && c.BootstrapExpect > 0 {
		return errors.New("bootstrap and bootstrap-expect exclude each other")
	}
	if c.BootstrapExpect > 0 && c.Discovery.Mode == "" {
		return errors.New("bootstrap-expect needs a discovery mode")
	}
	if c.Discovery.Mode != "" {
		if err := c.Discovery.Validate(); err != nil {
			return fmt.Errorf("discovery: %w", err)
		}
	}
	if err := c.Raft.Validate(); err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	if err := c.Heartbeat.Validate(); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if err := c.Broker.Validate(); err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	if c.ApplyLimit.Timeout <= 0 {
		return errors.New("apply-timeout: must be positive")
	}
	// A write is resent under its request id only while the FSM still
	// remembers the id; half the window leaves room for clock skew.
	if window := time.Duration(fsm.RequestWindow) * time.Millisecond / 2; c.ApplyLimit.Timeout > window {
		return fmt.Errorf("apply-timeout %s: at most %s (half the FSM's request window)", c.ApplyLimit.Timeout, window)
	}
	if err := c.Rebalance.Validate(); err != nil {
		return fmt.Errorf("rebalance: %w", err)
	}
	return nil
}

// Validate checks the Raft timings against each other.
func (c RaftConfig) Validate() error {
	switch {
	case c.HeartbeatTimeout < 5*time.Millisecond:
		return fmt.Errorf("heartbeat-timeout %s: at least 5ms", c.HeartbeatTimeout)
	case c.ElectionTimeout < c.HeartbeatTimeout:
		return fmt.Errorf("election-timeout %s: below heartbeat-timeout %s", c.ElectionTimeout, c.HeartbeatTimeout)
	case c.LeaderLeaseTimeout <= 0 || c.LeaderLeaseTimeout > c.HeartbeatTimeout:
		return fmt.Errorf("leader-lease-timeout %s: must be in (0, heartbeat-timeout]", c.LeaderLeaseTimeout)
	case c.CommitTimeout <= 0:
		return errors.New("commit-timeout: must be positive")
	case c.SnapshotRetain < 1:
		return errors.New("snapshot-retain: at least 1")
	case c.MaxAppendEntries < 1 || c.MaxAppendEntries > 1024:
		return fmt.Errorf("max-append-entries %d: must be in [1, 1024]", c.MaxAppendEntries)
	}
	return nil
}

// Validate checks the heartbeat timings against each other.
func (c HeartbeatConfig) Validate() error {
	switch {
	case c.Interval <= 0:
		return errors.New("interval: must be positive")
	case c.UnhealthyAfter <= c.Interval:
		return fmt.Errorf("unhealthy-after %s: must exceed the interval %s", c.UnhealthyAfter, c.Interval)
	case c.DownAfter <= c.UnhealthyAfter:
		return fmt.Errorf("down-after %s: must exceed unhealthy-after %s", c.DownAfter, c.UnhealthyAfter)
	case c.Grace < 0:
		return errors.New("grace: negative")
	}
	return nil
}

// RegisterFlags binds c's fields to fs; values already in c are the
// defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ID, "id", c.ID, "node ID, stable across restarts (required)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the Raft log, stable store and snapshots (required)")
	fs.StringVar(&c.RaftAddr, "raft-addr", c.RaftAddr, "Raft transport listen address")
	fs.StringVar(&c.RaftAdvertise, "raft-advertise", c.RaftAdvertise, "Raft address peers dial (default: raft-addr)")
	fs.StringVar(&c.GRPCAddr, "grpc-addr", c.GRPCAddr, "gRPC listen address")
	fs.StringVar(&c.GRPCAdvertise, "grpc-advertise", c.GRPCAdvertise, "gRPC address peers, proxies and tools dial (default: grpc-addr)")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "address for /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&c.TLS.CA, "tls-ca", c.TLS.CA, "PEM bundle of the CA(s) that sign Berth certificates")
	fs.StringVar(&c.TLS.Cert, "tls-cert", c.TLS.Cert, "this node's certificate (role server), reloaded when it changes")
	fs.StringVar(&c.TLS.Key, "tls-key", c.TLS.Key, "this node's private key")
	fs.BoolVar(&c.Insecure, "insecure", c.Insecure, "plaintext everywhere, without TLS (development only)")
	fs.BoolVar(&c.AdminAuth, "admin-auth", c.AdminAuth, "require admin tokens (read or operate) on every admin call")
	fs.StringVar(&c.AdminBootstrapTokenFile, "admin-bootstrap-token-file", c.AdminBootstrapTokenFile, "file with an operate admin token that is always accepted (to create the first tokens)")
	fs.IntVar(&c.BootstrapExpect, "bootstrap-expect", c.BootstrapExpect, "bootstrap a new cluster once this many fresh nodes see each other")
	fs.BoolVar(&c.Bootstrap, "bootstrap", c.Bootstrap, "bootstrap a single-node cluster if this node has no Raft state")
	fs.DurationVar(&c.RemoveDeadAfter, "remove-dead-after", c.RemoveDeadAfter, "remove a voter unreachable this long, while quorum stays safe (0: never)")
	fs.IntVar(&c.MinVoters, "min-voters", c.MinVoters, "never remove dead servers below this many voters")
	fs.DurationVar(&c.Raft.HeartbeatTimeout, "raft-heartbeat-timeout", c.Raft.HeartbeatTimeout, "Raft heartbeat timeout")
	fs.DurationVar(&c.Raft.ElectionTimeout, "raft-election-timeout", c.Raft.ElectionTimeout, "Raft election timeout")
	fs.DurationVar(&c.Raft.LeaderLeaseTimeout, "raft-leader-lease-timeout", c.Raft.LeaderLeaseTimeout, "Raft leader lease timeout")
	fs.DurationVar(&c.Raft.SnapshotInterval, "raft-snapshot-interval", c.Raft.SnapshotInterval, "how often to check whether to snapshot")
	fs.Uint64Var(&c.Raft.SnapshotThreshold, "raft-snapshot-threshold", c.Raft.SnapshotThreshold, "log entries since the last snapshot that trigger a new one")
	fs.Uint64Var(&c.Raft.TrailingLogs, "raft-trailing-logs", c.Raft.TrailingLogs, "log entries kept after a snapshot")
	fs.DurationVar(&c.Heartbeat.UnhealthyAfter, "proxy-unhealthy-after", c.Heartbeat.UnhealthyAfter, "mark a silent proxy UNHEALTHY after this long")
	fs.DurationVar(&c.Heartbeat.DownAfter, "proxy-down-after", c.Heartbeat.DownAfter, "mark a silent proxy DOWN (dropping its connections) after this long")
	fs.DurationVar(&c.Heartbeat.Grace, "proxy-grace", c.Heartbeat.Grace, "how long a new leader waits before judging proxies")
	fs.DurationVar(&c.ApplyLimit.Timeout, "apply-timeout", c.ApplyLimit.Timeout, "how long one write may take to commit")
	c.Discovery.RegisterFlags(fs)
	c.Broker.RegisterFlags(fs)
	c.Rebalance.RegisterFlags(fs)
}

func (c *Config) raftAdvertise() string {
	if c.RaftAdvertise != "" {
		return c.RaftAdvertise
	}
	return c.RaftAddr
}

func (c *Config) grpcAdvertise() string {
	if c.GRPCAdvertise != "" {
		return c.GRPCAdvertise
	}
	return c.GRPCAddr
}
