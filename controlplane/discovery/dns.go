package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
)

// DNS discovers addresses by DNS lookups on every Discover. It never caches:
// the answer follows the records (Go's resolver does not cache either).
type DNS struct {
	cfg      DNSConfig
	self     string
	resolver *net.Resolver
	logger   *slog.Logger
}

func newDNS(cfg DNSConfig, self string, logger *slog.Logger) *DNS {
	r := net.DefaultResolver
	if cfg.Server != "" {
		server := cfg.Server
		r = &net.Resolver{
			PreferGo: true,
			// The Go resolver still picks UDP or TCP (TCP after a
			// truncated answer); only the destination is replaced.
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, server)
			},
		}
	}
	return &DNS{cfg: cfg, self: self, resolver: r, logger: logger}
}

// Discover looks the name up. With SRV, targets that fail to resolve are
// skipped (and logged) as long as at least one resolves, so one stale record
// does not hide the rest of the cluster.
func (d *DNS) Discover(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	if d.cfg.SRV {
		return d.discoverSRV(ctx)
	}
	addrs, err := d.lookupHost(ctx, d.cfg.Name, d.cfg.Port)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	return finish(addrs, d.self), nil
}

func (d *DNS) discoverSRV(ctx context.Context) ([]string, error) {
	// Empty service and proto make LookupSRV query Name as given.
	_, srvs, err := d.resolver.LookupSRV(ctx, "", "", d.cfg.Name)
	if err != nil && len(srvs) == 0 {
		return nil, fmt.Errorf("dns: %w", err)
	}
	if err != nil {
		// Go returns the valid records alongside an error for the rest.
		d.logger.Warn("some SRV records ignored", "name", d.cfg.Name, "err", err)
	}
	var (
		addrs []string
		errs  []error
	)
	for _, srv := range srvs {
		target := strings.TrimSuffix(srv.Target, ".")
		if target == "" || srv.Port == 0 {
			continue // "." means the service is decidedly not available
		}
		// A target named like self (a StatefulSet pod's own DNS name) is
		// self whatever it resolves to.
		if named, err := normalizeAddr(net.JoinHostPort(target, strconv.Itoa(int(srv.Port)))); err == nil && named == d.self {
			continue
		}
		a, err := d.lookupHost(ctx, target, int(srv.Port))
		if err != nil {
			errs = append(errs, err)
			d.logger.Debug("SRV target did not resolve", "target", target, "err", err)
			continue
		}
		addrs = append(addrs, a...)
	}
	if len(addrs) == 0 && len(errs) > 0 {
		return nil, fmt.Errorf("dns: srv %s: no target resolved: %w", d.cfg.Name, errors.Join(errs...))
	}
	return finish(addrs, d.self), nil
}

// lookupHost returns ip:port for every A and AAAA record of host.
func (d *DNS) lookupHost(ctx context.Context, host string, port int) ([]string, error) {
	ips, err := d.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err // a *net.DNSError, which names the host
	}
	p := strconv.Itoa(port)
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip.Unmap().String(), p))
	}
	return out, nil
}

// Close does nothing; it exists so every Discoverer from New can be closed.
func (d *DNS) Close() error { return nil }
