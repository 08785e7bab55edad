// Package discovery finds the gRPC addresses of control-plane nodes.
//
// It answers one question, "which control-plane addresses exist now?", with
// one of three strategies chosen by Config.Mode:
//
//   - static: a fixed list of host:port;
//   - dns: A/AAAA records of a name plus a configured port, or SRV records
//     (a headless Kubernetes service) whose targets are resolved to A/AAAA;
//   - gossip: a memberlist (SWIM) agent whose members carry their gRPC
//     address in their node meta; traffic is encrypted with a key derived
//     from a shared secret, so nodes with another secret never join.
//
// berthd polls a Discoverer (Watch) to form and grow its Raft cluster; proxies
// and berthctl use it to find the control plane. What to do with the
// addresses (ask each for its node info, bootstrap, join) is the caller's
// business. A node never discovers itself: the self address given to New is
// left out of every answer.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

// Errors returned by this package. They are wrapped; test with errors.Is.
var (
	// ErrInvalidAddress means an address is not a valid host:port (or
	// IP:port where an IP is required).
	ErrInvalidAddress = errors.New("invalid address")
	// ErrClosed means Discover was called on a Gossip after Close.
	ErrClosed = errors.New("discoverer closed")
)

// Discoverer answers which control-plane gRPC addresses (host:port) exist
// now. Implementations are safe for concurrent use.
type Discoverer interface {
	// Discover returns the addresses, sorted and de-duplicated, never
	// including the caller's own address. An empty list with a nil error
	// is a valid answer (no peers yet). On error the list is nil; callers
	// retry on their next round.
	Discover(ctx context.Context) ([]string, error)
}

// Compile-time checks that every strategy can be closed, which New promises.
var (
	_ interface {
		Discoverer
		io.Closer
	} = (*Static)(nil)
	_ interface {
		Discoverer
		io.Closer
	} = (*DNS)(nil)
	_ interface {
		Discoverer
		io.Closer
	} = (*Gossip)(nil)
)

// New validates cfg and starts the strategy it selects. self is this node's
// own gRPC address as peers see it; it is never returned. Proxies and
// berthctl, which have no gRPC address of their own, pass "".
//
// The result is a *Static, *DNS or *Gossip, and always an io.Closer: callers
// should close it when done. Only Gossip holds resources (sockets, goroutines,
// cluster membership: its Close leaves the cluster gracefully), but closing
// the others is harmless, so code need not know which mode it runs.
func New(cfg Config, self string, logger *slog.Logger) (Discoverer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if self != "" {
		n, err := normalizeAddr(self)
		if err != nil {
			return nil, fmt.Errorf("self: %w", err)
		}
		self = n
	}
	logger = orDiscard(logger).With("subsystem", "discovery", "mode", cfg.Mode)
	switch cfg.Mode {
	case ModeStatic:
		return newStatic(cfg.Static, self)
	case ModeDNS:
		return newDNS(cfg.DNS, self, logger), nil
	default: // ModeGossip, as Validate checked
		g, err := newGossip(cfg.Gossip, cfg.PollInterval, self, logger)
		if err != nil {
			return nil, fmt.Errorf("gossip: %w", err)
		}
		return g, nil
	}
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
