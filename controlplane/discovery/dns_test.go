package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dnsServer is an authoritative DNS server on 127.0.0.1 (UDP and TCP on one
// port) whose records tests change at will.
type dnsServer struct {
	addr string

	mu          sync.Mutex
	records     map[string][]dns.RR // by lower-case FQDN; present = name exists
	truncateUDP bool

	udpQueries, tcpQueries atomic.Int64
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	s := &dnsServer{records: map[string][]dns.RR{}}
	var (
		pc  net.PacketConn
		l   net.Listener
		err error
	)
	// Take a free UDP port, then TCP on the same one; retry if another
	// process holds that TCP port.
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatalf("no port free for both UDP and TCP: %v", err)
	}
	s.addr = pc.LocalAddr().String()

	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: l, Handler: s}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		served := make(chan error, 1)
		go func() { served <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-served:
			t.Fatalf("dns server: %v", err)
		}
		t.Cleanup(func() {
			if err := srv.Shutdown(); err != nil {
				t.Errorf("dns shutdown: %v", err)
			}
			<-served
		})
	}
	return s
}

// set replaces the records of name with rrs, in zone-file syntax without the
// owner name ("A 127.0.0.1", "SRV 0 0 7000 a.test."). No rrs means the name
// exists with no records (NODATA).
func (s *dnsServer) set(t *testing.T, name string, rrs ...string) {
	t.Helper()
	var parsed []dns.RR
	for _, r := range rrs {
		rr, err := dns.NewRR(fmt.Sprintf("%s 1 IN %s", name, r))
		if err != nil {
			t.Fatalf("record %q: %v", r, err)
		}
		parsed = append(parsed, rr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[strings.ToLower(dns.Fqdn(name))] = parsed
}

// remove makes name answer NXDOMAIN.
func (s *dnsServer) remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, strings.ToLower(dns.Fqdn(name)))
}

func (s *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	udp := w.RemoteAddr().Network() == "udp"
	if udp {
		s.udpQueries.Add(1)
	} else {
		s.tcpQueries.Add(1)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	// Go's resolver treats a non-authoritative answer without recursion
	// as a lame referral.
	m.Authoritative, m.RecursionAvailable = true, true
	if len(r.Question) == 1 {
		q := r.Question[0]
		s.mu.Lock()
		rrs, ok := s.records[strings.ToLower(q.Name)]
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
		truncate := s.truncateUDP
		s.mu.Unlock()
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		if udp && truncate {
			m.Truncate(dns.MinMsgSize)
		}
	}
	_ = w.WriteMsg(m)
}

func newTestDNS(t *testing.T, srv *dnsServer, self string, edit func(*DNSConfig)) Discoverer {
	t.Helper()
	cfg := Default()
	cfg.Mode = ModeDNS
	cfg.DNS.Server = srv.addr
	cfg.DNS.Timeout = 5 * time.Second
	edit(&cfg.DNS)
	d, err := New(cfg, self, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func discover(t *testing.T, d Discoverer) []string {
	t.Helper()
	got, err := d.Discover(context.Background())
	if err != nil {
		t.Fatalf("Discover() error: %v", err)
	}
	return got
}

func TestDNSAddresses(t *testing.T) {
	srv := startDNS(t)
	srv.set(t, "berth.test.", "A 127.0.0.3", "A 127.0.0.1", "A 127.0.0.2", "AAAA ::1", "AAAA ::1")
	d := newTestDNS(t, srv, "127.0.0.2:7000", func(c *DNSConfig) { c.Name, c.Port = "berth.test.", 7000 })

	want := []string{"127.0.0.1:7000", "127.0.0.3:7000", "[::1]:7000"}
	if got := discover(t, d); !slices.Equal(got, want) {
		t.Fatalf("Discover() = %q, want %q", got, want)
	}

	// The answer follows the records: nothing is cached.
	srv.set(t, "berth.test.", "A 127.0.0.4", "A 127.0.0.2")
	if got, want := discover(t, d), []string{"127.0.0.4:7000"}; !slices.Equal(got, want) {
		t.Fatalf("after change: Discover() = %q, want %q", got, want)
	}

	// Only self left: no peers, no error.
	srv.set(t, "berth.test.", "A 127.0.0.2")
	if got := discover(t, d); len(got) != 0 {
		t.Fatalf("only self: Discover() = %q, want none", got)
	}
}

func TestDNSNXDOMAIN(t *testing.T) {
	srv := startDNS(t)
	d := newTestDNS(t, srv, "", func(c *DNSConfig) { c.Name, c.Port = "missing.test.", 7000 })
	got, err := d.Discover(context.Background())
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound {
		t.Fatalf("Discover() = %q, %v; want a not-found *net.DNSError", got, err)
	}
	if got != nil {
		t.Fatalf("Discover() returned %q with an error", got)
	}
}

func TestDNSSRV(t *testing.T) {
	srv := startDNS(t)
	const name = "_grpc._tcp.berth.ns.svc.cluster.test."
	srv.set(t, name,
		"SRV 0 10 7001 a.berth.test.",
		"SRV 0 10 7002 b.berth.test.",
		"SRV 0 10 7003 c.berth.test.",
		"SRV 1 10 7004 gone.berth.test.", // stale: its target is NXDOMAIN
	)
	srv.set(t, "a.berth.test.", "A 127.0.0.1")
	srv.set(t, "b.berth.test.", "AAAA ::1")
	srv.set(t, "c.berth.test.", "A 127.0.0.3", "AAAA ::3")
	srvCfg := func(c *DNSConfig) { c.Name, c.SRV = name, true }

	t.Run("all", func(t *testing.T) {
		d := newTestDNS(t, srv, "", srvCfg)
		want := []string{"127.0.0.1:7001", "127.0.0.3:7003", "[::1]:7002", "[::3]:7003"}
		if got := discover(t, d); !slices.Equal(got, want) {
			t.Fatalf("Discover() = %q, want %q", got, want)
		}
	})
	t.Run("self by name", func(t *testing.T) {
		d := newTestDNS(t, srv, "C.berth.test:7003", srvCfg)
		want := []string{"127.0.0.1:7001", "[::1]:7002"}
		if got := discover(t, d); !slices.Equal(got, want) {
			t.Fatalf("Discover() = %q, want %q", got, want)
		}
	})
	t.Run("self by address", func(t *testing.T) {
		d := newTestDNS(t, srv, "127.0.0.1:7001", srvCfg)
		want := []string{"127.0.0.3:7003", "[::1]:7002", "[::3]:7003"}
		if got := discover(t, d); !slices.Equal(got, want) {
			t.Fatalf("Discover() = %q, want %q", got, want)
		}
	})
	t.Run("records change", func(t *testing.T) {
		d := newTestDNS(t, srv, "", srvCfg)
		srv.set(t, name, "SRV 0 10 8000 a.berth.test.")
		t.Cleanup(func() {
			srv.set(t, name, "SRV 0 10 7001 a.berth.test.", "SRV 0 10 7002 b.berth.test.", "SRV 0 10 7003 c.berth.test.", "SRV 1 10 7004 gone.berth.test.")
		})
		if got, want := discover(t, d), []string{"127.0.0.1:8000"}; !slices.Equal(got, want) {
			t.Fatalf("Discover() = %q, want %q", got, want)
		}
	})
	t.Run("no target resolves", func(t *testing.T) {
		const only = "_grpc._tcp.stale.test."
		srv.set(t, only, "SRV 0 10 7004 gone.berth.test.")
		d := newTestDNS(t, srv, "", func(c *DNSConfig) { c.Name, c.SRV = only, true })
		var de *net.DNSError
		if got, err := d.Discover(context.Background()); !errors.As(err, &de) {
			t.Fatalf("Discover() = %q, %v; want a *net.DNSError", got, err)
		}
	})
	t.Run("nxdomain", func(t *testing.T) {
		d := newTestDNS(t, srv, "", func(c *DNSConfig) { c.Name, c.SRV = "_grpc._tcp.missing.test.", true })
		var de *net.DNSError
		if got, err := d.Discover(context.Background()); !errors.As(err, &de) || !de.IsNotFound {
			t.Fatalf("Discover() = %q, %v; want not found", got, err)
		}
	})
}

// TestDNSTruncatedFallsBackToTCP serves an answer too big for a 512-byte UDP
// message; the resolver must retry over TCP, to the configured server too.
func TestDNSTruncatedFallsBackToTCP(t *testing.T) {
	srv := startDNS(t)
	srv.mu.Lock()
	srv.truncateUDP = true
	srv.mu.Unlock()
	var rrs, want []string
	for i := 1; i <= 100; i++ {
		rrs = append(rrs, fmt.Sprintf("A 127.0.1.%d", i))
		want = append(want, fmt.Sprintf("127.0.1.%d:7000", i))
	}
	slices.Sort(want)
	srv.set(t, "big.test.", rrs...)
	d := newTestDNS(t, srv, "", func(c *DNSConfig) { c.Name, c.Port = "big.test.", 7000 })
	if got := discover(t, d); !slices.Equal(got, want) {
		t.Fatalf("Discover() = %d addresses %q, want %d", len(got), got, len(want))
	}
	if srv.tcpQueries.Load() == 0 {
		t.Fatal("no query over TCP")
	}
}

// TestDNSWatch runs Watch against a name that does not exist yet, appears,
// disappears and changes: failures are retried and never reported as an
// empty set.
func TestDNSWatch(t *testing.T) {
	srv := startDNS(t)
	d := newTestDNS(t, srv, "127.0.0.1:7000", func(c *DNSConfig) { c.Name, c.Port = "late.test.", 7000 })

	updates := make(chan []string, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watch(ctx, d, 10*time.Millisecond, func(a []string) { updates <- a }, testLogger(t))
	}()
	t.Cleanup(func() { cancel(); <-done })

	// NXDOMAIN for a while: Watch keeps polling and reports nothing.
	before := srv.udpQueries.Load()
	eventually(t, 5*time.Second, func() bool { return srv.udpQueries.Load() >= before+6 }, "Watch stopped polling after NXDOMAIN")
	assertNoUpdate(t, updates)

	srv.set(t, "late.test.", "A 127.0.0.1", "A 127.0.0.2")
	expectUpdate(t, updates, []string{"127.0.0.2:7000"})

	srv.remove("late.test.")
	before = srv.udpQueries.Load()
	eventually(t, 5*time.Second, func() bool { return srv.udpQueries.Load() >= before+6 }, "Watch stopped polling")
	assertNoUpdate(t, updates)

	srv.set(t, "late.test.", "A 127.0.0.2", "AAAA ::2")
	expectUpdate(t, updates, []string{"127.0.0.2:7000", "[::2]:7000"})
}

func expectUpdate(t *testing.T, updates <-chan []string, want []string) {
	t.Helper()
	select {
	case got := <-updates:
		if !slices.Equal(got, want) {
			t.Fatalf("update %q, want %q", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no update; want %q", want)
	}
}

func assertNoUpdate(t *testing.T, updates <-chan []string) {
	t.Helper()
	select {
	case got := <-updates:
		t.Fatalf("unexpected update %q", got)
	default:
	}
}
