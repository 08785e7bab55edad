// Package proxy is berth-proxy: the stateless edge. It accepts agent
// tunnels and commits them to the control plane, serves downstream HTTP
// (and TCP through an upgrade) by routing each request to a local
// connection or, one hop away, to a peer proxy holding one, and keeps a
// session with the control plane for its assignments and the peer
// directory. With the control plane gone it goes on serving from what it
// last knew, and reconciles with a full sync when it comes back.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/dataplane/peer"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Proxy is one running berth-proxy.
type Proxy struct {
	cfg    Config
	logger *slog.Logger

	cp       *client.Client
	registry berthv1.RegistryServiceClient
	link     *cpLink
	dir      *directory
	conns    *connTable
	peers    *peer.Pool
	load     *loadSampler
	metrics  *metrics
	notified idSet
	keys     atomic.Pointer[token.Keyring] // nil: agents are not authenticated
	tls      *pki.Reloader                 // nil in insecure mode
	sources  *sourceLimiter
	perToken tokenTunnels

	tunnelLn, downLn, peerLn, httpLn     net.Listener
	tunnelAddr, downstreamAddr, peerAddr string
	downstream                           *h1Server
	admin                                *http.Server
	copyBufs                             copyBuffers
	bodies                               bodyBuffers
	access                               *accessLog      // nil: off
	downAuth                             *downstreamAuth // nil: off
	downTLSLn                            net.Listener    // nil: no TLS listener
	downstreamTLS                        *http.Server
	downCert                             *pki.KeyPair
	wsTunnels                            *wsTunnels
	pools                                *streamPools
	peerHTTP                             *peerHTTP
	started                              time.Time
	ctx                                  context.Context
	cancel                               context.CancelFunc
	wg                                   sync.WaitGroup
	closeOnce                            sync.Once
}

// New starts a proxy: it listens, begins accepting tunnels, peer links and
// downstream requests, and connects to the control plane in the
// background (it serves whether or not that succeeds).
func New(cfg Config, logger *slog.Logger) (p *Proxy, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("proxy", cfg.ID)
	ctx, cancel := context.WithCancel(context.Background())
	p = &Proxy{
		cfg:     cfg,
		logger:  logger.With("subsystem", "proxy"),
		link:    newCPLink(),
		dir:     newDirectory(cfg.ID, cfg.Ring),
		conns:   newConnTable(),
		ctx:     ctx,
		cancel:  cancel,
		started: time.Now(),
		sources: newSourceLimiter(cfg.TunnelRate, cfg.TunnelBurst),
		access:  newAccessLog(cfg.Edge, logger),
	}
	var closers []func()
	defer func() {
		if err != nil {
			cancel()
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i]()
			}
		}
	}()
	listen := func(name, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s listen: %w", name, err)
		}
		closers = append(closers, func() { _ = ln.Close() })
		return ln, nil
	}
	if !cfg.ControlPlane.TLS.Insecure {
		if p.tls, err = pki.NewReloader(cfg.pkiFiles(), logger.With("subsystem", "tls")); err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		closers = append(closers, p.tls.Close)
	}
	if p.tunnelLn, err = listen("tunnel", cfg.TunnelAddr); err != nil {
		return nil, err
	}
	if p.downLn, err = listen("downstream", cfg.DownstreamAddr); err != nil {
		return nil, err
	}
	if p.peerLn, err = listen("peer", cfg.PeerAddr); err != nil {
		return nil, err
	}
	if p.tls != nil {
		// Agents prove themselves with tokens (peers, with proxy
		// certificates: the peer pool runs that handshake).
		p.tunnelLn = tls.NewListener(p.tunnelLn, p.tls.ServerConfigAnyClient())
	}
	if cfg.Edge.TLSAddr != "" {
		if err := p.setupDownstreamTLS(listen, func(f func()) { closers = append(closers, f) }); err != nil {
			return nil, err
		}
	}
	p.tunnelAddr = advertise(cfg.TunnelAdvertise, p.tunnelLn.Addr())
	p.downstreamAddr = advertise(cfg.DownstreamAdvertise, p.downLn.Addr())
	p.peerAddr = advertise(cfg.PeerAdvertise, p.peerLn.Addr())

	if cfg.AgentKeys != "" {
		ring, err := token.LoadKeyring(cfg.AgentKeys)
		if err != nil {
			return nil, fmt.Errorf("agent keys: %w", err)
		}
		p.keys.Store(ring)
		px := p // not p itself: a New that fails later sets it to nil
		p.goRun(func() { px.reloadKeyring("agent", cfg.AgentKeys, &px.keys) })
	}
	if insecure := insecureParts(cfg); len(insecure) > 0 {
		p.logger.Warn("INSECURE: " + strings.Join(insecure, "; ") + " (development only)")
	}
	if cfg.Edge.AuthKeys != "" {
		ring, err := token.LoadKeyring(cfg.Edge.AuthKeys)
		if err != nil {
			return nil, fmt.Errorf("downstream auth keys: %w", err)
		}
		p.downAuth = &downstreamAuth{}
		p.downAuth.keys.Store(ring)
		px := p
		p.goRun(func() { px.reloadKeyring("downstream", cfg.Edge.AuthKeys, &px.downAuth.keys) })
	}
	if p.cp, err = client.New(cfg.ControlPlane, logger); err != nil {
		return nil, fmt.Errorf("control-plane client: %w", err)
	}
	closers = append(closers, func() { _ = p.cp.Close() })
	p.registry = berthv1.NewRegistryServiceClient(p.cp)

	reg := prometheus.NewRegistry()
	p.metrics = newMetrics(reg, p)
	for _, c := range cfg.Collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	p.load = newLoadSampler(p)
	peerCfg := cfg.Peer
	peerCfg.SelfID = cfg.ID
	if p.tls != nil {
		peerCfg.TLS = p.tls.ClientConfig("", pki.RoleProxy)
		peerCfg.ServerTLS = p.tls.ServerConfig(pki.RoleProxy)
	}
	p.peers = peer.NewPool(peerCfg, p.dir.peerAddress, logger)

	if cfg.HTTPAddr != "" {
		if p.httpLn, err = listen("http", cfg.HTTPAddr); err != nil {
			return nil, err
		}
		p.admin = &http.Server{Handler: p.adminHandler(reg), ReadHeaderTimeout: 5 * time.Second}
		p.goRun(func() { serveHTTP(p.admin, p.httpLn, p.logger) })
	}
	p.pools = newStreamPools(p)
	p.peerHTTP = newPeerHTTP(p)
	if p.downstreamTLS != nil {
		p.goRun(p.serveDownstreamTLS)
	}
	// No ReadTimeout or WriteTimeout: they would cut WebSockets and
	// streamed bodies (timeouts.go).
	p.downstream = newH1Server(p, p.logger, cfg.Edge.ReadHeaderTimeout, cfg.Edge.IdleTimeout)
	p.goRun(func() {
		if err := p.downstream.Serve(p.downLn); err != nil && !errors.Is(err, net.ErrClosed) {
			p.logger.Error("downstream listener stopped", "err", err)
		}
	})
	p.wsTunnels = newWSTunnels(p)
	p.goRun(func() { serveHTTP(p.wsTunnels.srv, p.wsTunnels.ln, p.logger) })
	p.goRun(p.acceptTunnels)
	p.goRun(func() {
		if err := p.peers.Serve(p.peerLn, p.servePeerStream); err != nil && !errors.Is(err, net.ErrClosed) {
			p.logger.Error("peer listener stopped", "err", err)
		}
	})
	p.goRun(func() { p.runControlPlane(p.ctx) })
	p.logger.Info("proxy started", "tunnel", p.tunnelAddr, "downstream", p.downstreamAddr, "downstream_tls", p.DownstreamTLSAddr(), "peer", p.peerAddr)
	return p, nil
}

func serveHTTP(s *http.Server, ln net.Listener, logger *slog.Logger) {
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("http server stopped", "err", err)
	}
}

func (p *Proxy) goRun(fn func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		fn()
	}()
}

// reloadKeyring re-reads the keyring in dir every KeysReload into dst, so
// keys can be added (rotation) or removed (retiring a key, and the tokens
// it signed) without a restart. A keyring that fails to load is logged and
// the last good one kept. what names the keyring in logs.
func (p *Proxy) reloadKeyring(what, dir string, dst *atomic.Pointer[token.Keyring]) {
	tick := time.NewTicker(p.cfg.KeysReload)
	defer tick.Stop()
	var lastErr string
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-tick.C:
		}
		ring, err := token.LoadKeyring(dir)
		if err != nil {
			if err.Error() != lastErr {
				p.logger.Warn(what+" keyring did not load; keeping the last good one", "err", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		if old := dst.Load(); !slices.Equal(old.KeyIDs(), ring.KeyIDs()) {
			p.logger.Info(what+" keyring changed", "keys", ring.KeyIDs())
		}
		dst.Store(ring)
	}
}

// ID is the proxy's id.
func (p *Proxy) ID() string { return p.cfg.ID }

// TunnelAddr is where agents reach this proxy.
func (p *Proxy) TunnelAddr() string { return p.tunnelAddr }

// DownstreamAddr is where clients reach this proxy.
func (p *Proxy) DownstreamAddr() string { return p.downstreamAddr }

// PeerAddr is where other proxies reach this proxy.
func (p *Proxy) PeerAddr() string { return p.peerAddr }

// HTTPAddr is where /metrics is served ("" when off).
func (p *Proxy) HTTPAddr() string {
	if p.httpLn == nil {
		return ""
	}
	return p.httpLn.Addr().String()
}

// Connections is the number of agent tunnels held now.
func (p *Proxy) Connections() int { return p.conns.count() }

// awaitDirectory holds a request that found no route while the proxy has
// not yet received its first directory (it just started), for at most the
// commit timeout: with the control plane unreachable the proxy serves from
// what it has.
func (p *Proxy) awaitDirectory(ctx context.Context) bool {
	if p.dir.isSynced() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CommitTimeout)
	defer cancel()
	p.dir.awaitSync(ctx)
	return true
}

// ControlPlaneConnected reports whether the session with the control plane
// is up.
func (p *Proxy) ControlPlaneConnected() bool { return p.link.isConnected() }

// Close stops accepting, closes every tunnel and peer link, and waits for
// the proxy's goroutines.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.cancel()
		_ = p.tunnelLn.Close()
		_ = p.peerLn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.downLn.Close()
		p.downstream.Shutdown(ctx)
		if p.downstreamTLS != nil {
			_ = p.downstreamTLS.Shutdown(ctx)
			_ = p.downstreamTLS.Close()
		}
		if p.admin != nil {
			_ = p.admin.Close()
		}
		for _, c := range p.conns.all() {
			if s := c.sess.Load(); s != nil {
				_ = s.Close()
			}
		}
		_ = p.peers.Close()
		p.peerHTTP.close()
		_ = p.wsTunnels.srv.Close()
		p.pools.closeAll()
		p.wg.Wait()
		_ = p.cp.Close()
		if p.tls != nil {
			p.tls.Close()
		}
		if p.downCert != nil {
			p.downCert.Close()
		}
	})
	return nil
}

func newConnectionID(proxyID string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := proxyID + "-" + hex.EncodeToString(b[:])
	if len(id) > 128 {
		id = id[len(id)-128:]
	}
	return id
}

// insecureParts lists what cfg leaves unprotected, for the one INSECURE
// line a proxy logs when it starts.
func insecureParts(cfg Config) []string {
	var out []string
	if cfg.ControlPlane.TLS.Insecure {
		out = append(out, "no TLS to the control plane, peers or agents (--insecure)")
	}
	if cfg.AgentKeys == "" {
		out = append(out, "agents are not authenticated (no --agent-keys); any agent may serve any endpoint")
	}
	return out
}
