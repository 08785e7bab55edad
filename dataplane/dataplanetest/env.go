// Package dataplanetest runs Berth's data plane inside a test process: a
// real control-plane cluster (controlplanetest), proxies on 127.0.0.1
// ports, agents forwarding to upstream servers the test starts. Proxies can
// be stopped and started again on the same ports.
package dataplanetest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/proxy"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Options shape an environment.
type Options struct {
	ControlPlaneNodes int // default 3
	Proxies           int // default 2
	// ConfigureProxy adjusts proxy i's config before it starts.
	ConfigureProxy func(i int, cfg *proxy.Config)
	// ConfigureNode adjusts control-plane node i's config.
	ConfigureNode func(i int, cfg *controlplane.Config)
	// ConfigureAgent adjusts every agent's config.
	ConfigureAgent func(cfg *agent.Config)
	// TLS runs everything with certificates: the control plane with mutual
	// TLS, proxies with proxy certificates on every link, agents over TLS
	// with signed tokens for their endpoints.
	TLS  bool
	Logs bool
}

// Env is a running data plane with its control plane.
type Env struct {
	t    testing.TB
	opts Options
	CP   *controlplanetest.Cluster

	mu      sync.Mutex
	proxies []*proxy.Proxy
	cfgs    []proxy.Config

	keysDir string         // agent token keys (TLS only)
	keys    *token.Keyring // signs agents' tokens (TLS only)
}

// Start brings up the control plane and the proxies, and waits until every
// proxy has a control-plane session.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	if opts.ControlPlaneNodes == 0 {
		opts.ControlPlaneNodes = 3
	}
	if opts.Proxies == 0 {
		opts.Proxies = 2
	}
	// CI runs the whole suite a second time with TLS everywhere.
	if os.Getenv("BERTH_TEST_TLS") == "1" {
		opts.TLS = true
	}
	// BERTH_TEST_LOGS=1 shows every node's, proxy's and agent's logs.
	if os.Getenv("BERTH_TEST_LOGS") == "1" {
		opts.Logs = true
	}
	e := &Env{t: t, opts: opts}
	e.CP = controlplanetest.MakeCluster(t, opts.ControlPlaneNodes, controlplanetest.Options{Logs: opts.Logs, Configure: opts.ConfigureNode, TLS: opts.TLS})
	if opts.TLS {
		e.keysDir = t.TempDir()
		k, err := token.GenerateKey(token.AlgEdDSA, "test")
		if err != nil {
			t.Fatal(err)
		}
		if err := token.WriteKey(e.keysDir, k); err != nil {
			t.Fatal(err)
		}
		if e.keys, err = token.LoadKeyring(e.keysDir); err != nil {
			t.Fatal(err)
		}
	}
	var addrs []string
	for i := range opts.ControlPlaneNodes {
		addrs = append(addrs, e.CP.Addr(i))
	}
	for range opts.Proxies {
		e.addProxyConfig(addrs)
	}
	for i := range opts.Proxies {
		e.StartProxy(i)
	}
	for i := range opts.Proxies {
		e.WaitControlPlane(i)
	}
	t.Cleanup(e.Close)
	return e
}

// AddProxy starts one more proxy and returns its index.
func (e *Env) AddProxy() int {
	e.t.Helper()
	var addrs []string
	for i := range e.opts.ControlPlaneNodes {
		addrs = append(addrs, e.CP.Addr(i))
	}
	i := e.addProxyConfig(addrs)
	e.StartProxy(i)
	e.WaitControlPlane(i)
	return i
}

func (e *Env) addProxyConfig(addrs []string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	i := len(e.cfgs)
	{
		cfg := proxy.Default()
		cfg.ID = fmt.Sprintf("proxy-%d", i)
		cfg.Region, cfg.Zone = "local", fmt.Sprintf("zone-%d", i%2)
		cfg.TunnelAddr, cfg.DownstreamAddr, cfg.PeerAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		cfg.ControlPlane.Addrs = addrs
		cfg.ControlPlane.TLS.Insecure = !e.opts.TLS
		if e.opts.TLS {
			f := e.CP.Files(pki.RoleProxy, cfg.ID)
			cfg.ControlPlane.TLS.CAFile, cfg.ControlPlane.TLS.CertFile, cfg.ControlPlane.TLS.KeyFile = f.CA, f.Cert, f.Key
			cfg.AgentKeys = e.keysDir
		}
		cfg.ControlPlane.DialTimeout = time.Second
		cfg.LoadInterval = 200 * time.Millisecond
		cfg.CommitTimeout = 2 * time.Second
		// Tests open many tunnels from one address, quickly.
		cfg.TunnelRate, cfg.TunnelBurst = 1e6, 1_000_000
		cfg.DrainTimeout = 5 * time.Second
		if e.opts.ConfigureProxy != nil {
			e.opts.ConfigureProxy(i, &cfg)
		}
		e.cfgs = append(e.cfgs, cfg)
		e.proxies = append(e.proxies, nil)
	}
	return i
}

func (e *Env) logger(name string) *slog.Logger {
	if !e.opts.Logs {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", name)
}

// StartProxy starts proxy i (again, on the same ports after a stop).
func (e *Env) StartProxy(i int) *proxy.Proxy {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	var p *proxy.Proxy
	controlplanetest.Eventually(e.t, 10*time.Second, func() error {
		var err error
		p, err = proxy.New(e.cfgs[i], e.logger(e.cfgs[i].ID))
		return err
	})
	e.cfgs[i].TunnelAddr, e.cfgs[i].DownstreamAddr, e.cfgs[i].PeerAddr = p.TunnelAddr(), p.DownstreamAddr(), p.PeerAddr()
	e.cfgs[i].HTTPAddr = p.HTTPAddr()
	e.proxies[i] = p
	return p
}

// StopProxy stops proxy i as a crash would look to its peers and agents:
// every connection drops at once.
func (e *Env) StopProxy(i int) {
	e.mu.Lock()
	p := e.proxies[i]
	e.proxies[i] = nil
	e.mu.Unlock()
	if p != nil {
		_ = p.Close()
	}
}

// Proxy returns proxy i (nil while stopped).
func (e *Env) Proxy(i int) *proxy.Proxy {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.proxies[i]
}

// TunnelAddrs are every proxy's tunnel address, for agents.
func (e *Env) TunnelAddrs() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, c := range e.cfgs {
		out = append(out, c.TunnelAddr)
	}
	return out
}

// DownstreamAddr is proxy i's downstream address.
func (e *Env) DownstreamAddr(i int) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfgs[i].DownstreamAddr
}

// Close stops every proxy (the control plane stops in its own cleanup).
func (e *Env) Close() {
	e.mu.Lock()
	n := len(e.proxies)
	e.mu.Unlock()
	for i := range n {
		e.StopProxy(i)
	}
}

// Len is the number of proxy slots.
func (e *Env) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.cfgs)
}

// WaitControlPlane waits until proxy i's session with the control plane is up.
func (e *Env) WaitControlPlane(i int) {
	e.t.Helper()
	controlplanetest.Eventually(e.t, 30*time.Second, func() error {
		if p := e.Proxy(i); p == nil || !p.ControlPlaneConnected() {
			return fmt.Errorf("proxy %d has no control-plane session", i)
		}
		return nil
	})
}

// Agent runs an agent with endpoints forwarded to upstream addresses
// (endpoint -> host:port), dialing proxies in the order given.
// configure (if any) adjusts this agent's config last.
func (e *Env) Agent(slot string, proxies []string, upstreams map[string]string, configure ...func(*agent.Config)) *agent.Agent {
	e.t.Helper()
	cfg := agent.Default()
	cfg.Proxies = proxies
	cfg.AgentID = slot
	cfg.Slot = slot
	for ep := range upstreams {
		cfg.Endpoints = append(cfg.Endpoints, ep)
	}
	cfg.BackoffBase, cfg.BackoffMax = 20*time.Millisecond, 500*time.Millisecond
	if e.opts.TLS {
		caPEM, err := os.ReadFile(filepath.Join(e.CP.PKIDir, pki.CACertFile))
		if err != nil {
			e.t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		cfg.TLS = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
		if cfg.Token, err = e.keys.SignAgent(token.AgentClaims{AgentID: slot, Endpoints: cfg.Endpoints, ExpiresAt: time.Now().Add(time.Hour)}, time.Now()); err != nil {
			e.t.Fatal(err)
		}
	}
	if e.opts.ConfigureAgent != nil {
		e.opts.ConfigureAgent(&cfg)
	}
	for _, f := range configure {
		f(&cfg)
	}
	a, err := agent.New(cfg, e.logger("agent-"+slot))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = a.Run(ctx) }()
	go func() { defer wg.Done(); _ = agent.Forward(a, upstreams, e.logger("forward-"+slot)) }()
	e.t.Cleanup(func() {
		cancel()
		_ = a.Close()
		wg.Wait()
	})
	return a
}

// WaitConnections waits until the control plane lists want connections for
// endpoint (linearizable read).
func (e *Env) WaitConnections(endpoint string, want int) []*berthv1.Connection {
	e.t.Helper()
	var conns []*berthv1.Connection
	controlplanetest.Eventually(e.t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var all []*berthv1.Connection
		token := ""
		for {
			resp, err := e.CP.Admin(e.CP.Leader()).ListConnections(ctx, &berthv1.ListConnectionsRequest{Endpoint: endpoint,
				Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE, PageSize: controlplane.MaxPageSize, PageToken: token})
			if err != nil {
				return err
			}
			all = append(all, resp.Connections...)
			if token = resp.NextPageToken; token == "" {
				break
			}
		}
		if len(all) != want {
			return fmt.Errorf("%d connections for %s, want %d", len(all), endpoint, want)
		}
		conns = all
		return nil
	})
	return conns
}

// Get sends GET path for endpoint to proxy i and returns status and body.
func (e *Env) Get(client *http.Client, i int, endpoint, path string) (int, string, http.Header, error) {
	req, err := http.NewRequest("GET", "http://"+e.DownstreamAddr(i)+path, nil)
	if err != nil {
		return 0, "", nil, err
	}
	req.Host = endpoint + ".berth.test"
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

// Upstream is an HTTP server on 127.0.0.1 answering "<name> <path>" (and
// echoing POST bodies), standing for a service behind an agent.
func Upstream(t testing.TB, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			// Read it all first: HTTP/1 servers may not read a body
			// after the response has started.
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("X-Upstream", name)
			_, _ = w.Write(b)
			return
		}
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
