package controlplane_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/discovery"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// formingNode is a node started outside the harness, as berthd would: it
// knows only its discovery settings.
type formingNode struct {
	cfg  controlplane.Config
	node *controlplane.Node
}

func newFormingNodes(t *testing.T, n int, disc func(addrs []string) discovery.Config) []*formingNode {
	t.Helper()
	var (
		out   []*formingNode
		addrs []string
		lns   []net.Listener
	)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for i := range n {
		cfg := controlplane.Default()
		cfg.ID = fmt.Sprintf("cp%d", i)
		cfg.DataDir = t.TempDir()
		cfg.RaftAddr = "127.0.0.1:0"
		cfg.GRPCAddr = addrs[i]
		cfg.HTTPAddr = ""
		cfg.Insecure = true
		cfg.BootstrapExpect = 3
		cfg.Discovery = disc(addrs)
		controlplanetest.FastRaft(&cfg)
		out = append(out, &formingNode{cfg: cfg})
	}
	for i, fn := range out {
		fn.start(t, lns[i])
	}
	t.Cleanup(func() {
		for _, fn := range out {
			fn.stop()
		}
	})
	return out
}

func (f *formingNode) start(t *testing.T, ln net.Listener) {
	t.Helper()
	var err error
	if ln == nil {
		controlplanetest.Eventually(t, 10*time.Second, func() error {
			ln, err = net.Listen("tcp", f.cfg.GRPCAddr)
			return err
		})
	}
	f.node, err = controlplane.New(f.cfg, nil, controlplane.Deps{GRPCListener: ln})
	if err != nil {
		t.Fatal(err)
	}
	f.cfg.RaftAddr = f.node.RaftAddr() // come back on the same port
}

func (f *formingNode) stop() {
	if f.node != nil {
		_ = f.node.Close()
		f.node = nil
	}
}

// waitFormed waits for one leader whose configuration holds want voters,
// every one of them registered with its gRPC address.
func waitFormed(t *testing.T, nodes []*formingNode, want int) *controlplane.Node {
	t.Helper()
	var leader *controlplane.Node
	conns := map[string]berthv1.AdminServiceClient{}
	admin := func(addr string) berthv1.AdminServiceClient {
		if conns[addr] == nil {
			conns[addr] = berthv1.NewAdminServiceClient(dialT(t, addr))
		}
		return conns[addr]
	}
	controlplanetest.Eventually(t, 30*time.Second, func() error {
		leader = nil
		for _, fn := range nodes {
			if fn.node != nil && fn.node.IsLeader() {
				if leader != nil {
					return fmt.Errorf("two leaders")
				}
				leader = fn.node
			}
		}
		if leader == nil {
			return fmt.Errorf("no leader")
		}
		f := leader.Raft().GetConfiguration()
		if err := f.Error(); err != nil {
			return err
		}
		if got := len(f.Configuration().Servers); got != want {
			return fmt.Errorf("%d servers, want %d", got, want)
		}
		st, err := admin(leader.GRPCAddr()).ClusterStatus(context.Background(), &berthv1.ClusterStatusRequest{})
		if err != nil {
			return err
		}
		for _, s := range st.Servers {
			if !s.Healthy {
				return fmt.Errorf("server %s not healthy: %s", s.Id, s.Error)
			}
		}
		return nil
	})
	return leader
}

func TestStaticDiscoveryBootstrapsExactlyOnce(t *testing.T) {
	nodes := newFormingNodes(t, 3, func(addrs []string) discovery.Config {
		d := discovery.Default()
		d.Mode, d.Static.Addrs, d.PollInterval = discovery.ModeStatic, addrs, 100*time.Millisecond
		return d
	})
	leader := waitFormed(t, nodes, 3)
	if _, err := berthv1.NewRegistryServiceClient(dialT(t, leader.GRPCAddr())).RegisterProxy(ctxT(t), &berthv1.RegisterProxyRequest{Proxy: testProxy("p1")}); err != nil {
		t.Fatal(err)
	}
	term := leader.Raft().CurrentTerm()
	// A full restart rejoins from Raft state: no second bootstrap, the
	// registry survives, and the term only moves forward.
	for _, fn := range nodes {
		fn.stop()
	}
	for _, fn := range nodes {
		fn.start(t, nil)
	}
	leader = waitFormed(t, nodes, 3)
	if leader.Raft().CurrentTerm() <= term {
		t.Fatalf("term went from %d to %d: the cluster was bootstrapped anew", term, leader.Raft().CurrentTerm())
	}
	resp, err := berthv1.NewAdminServiceClient(dialT(t, leader.GRPCAddr())).GetProxy(ctxT(t), &berthv1.GetProxyRequest{ProxyId: "p1", Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil || resp.Proxy.Id != "p1" {
		t.Fatalf("registry lost across restart: %v %v", resp, err)
	}
}

// dnsServer answers SRV and A queries from records the test controls.
type dnsServer struct {
	mu   sync.Mutex
	srv  map[string][]*dns.SRV
	a    map[string]net.IP
	addr string
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	d := &dnsServer{srv: map[string][]*dns.SRV{}, a: map[string]net.IP{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.addr = pc.LocalAddr().String()
	server := &dns.Server{PacketConn: pc, Handler: d}
	go func() { _ = server.ActivateAndServe() }()
	t.Cleanup(func() { _ = server.Shutdown() })
	return d
}

func (d *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	for _, q := range r.Question {
		switch q.Qtype {
		case dns.TypeSRV:
			for _, rr := range d.srv[q.Name] {
				m.Answer = append(m.Answer, rr)
			}
		case dns.TypeA:
			if ip, ok := d.a[q.Name]; ok {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: ip})
			}
		}
	}
	if len(m.Answer) == 0 && len(d.srv[r.Question[0].Name]) == 0 && d.a[r.Question[0].Name] == nil {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

func (d *dnsServer) set(name string, addrs []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srv[name] = nil
	for i, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(port)
		target := fmt.Sprintf("cp%d.berth.test.", i)
		d.a[target] = net.ParseIP(host).To4()
		d.srv[name] = append(d.srv[name], &dns.SRV{
			Hdr:    dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1},
			Target: target, Port: uint16(p), Priority: 10, Weight: 10,
		})
	}
}

func TestDNSDiscoveryFormsCluster(t *testing.T) {
	resolver := startDNS(t)
	const name = "_grpc._tcp.berth.test."
	nodes := newFormingNodes(t, 3, func(addrs []string) discovery.Config {
		resolver.set(name, addrs)
		d := discovery.Default()
		d.Mode, d.PollInterval = discovery.ModeDNS, 100*time.Millisecond
		d.DNS.Name, d.DNS.SRV, d.DNS.Server = name, true, resolver.addr
		return d
	})
	waitFormed(t, nodes, 3)
}
