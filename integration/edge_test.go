package integration

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
)

// waitRoutes waits until every proxy of e answers for endpoint.
func waitRoutes(t *testing.T, e *dataplanetest.Env, c *http.Client, endpoint string) {
	t.Helper()
	for p := range e.Len() {
		controlplanetest.Eventually(t, 20*time.Second, func() error {
			code, _, _, err := e.Get(c, p, endpoint, "/")
			if err != nil || code != 200 {
				return fmt.Errorf("proxy %d: %d %v", p, code, err)
			}
			return nil
		})
	}
}

// closedWithin reports how long until the server closes c (reads are
// discarded), failing past limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

func TestEdgeTimeoutsCutSlowClientsNotLongStreams(t *testing.T) {
	const d = 300 * time.Millisecond
	e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 2, ConfigureProxy: func(_ int, cfg *proxy.Config) {
		cfg.Edge.ReadHeaderTimeout, cfg.Edge.IdleTimeout, cfg.Edge.UpstreamHeaderTimeout = d, d, d
	}})
	demo := startDemo(t)
	gated, release, _ := gatedUpstream(t)
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"ws": demo, "live": gated})
	e.WaitConnections("ws", 1)
	c := httpClient(t)
	waitRoutes(t, e, c, "ws")

	// A WebSocket (through the holder and through a peer) and a streamed
	// body stay open for several times every timeout.
	ws0 := dialWebSocket(t, "ws://"+e.DownstreamAddr(0)+"/ws", "ws.berth.test")
	ws1 := dialWebSocket(t, "ws://"+e.DownstreamAddr(1)+"/ws", "ws.berth.test")
	req, _ := http.NewRequest("GET", "http://"+e.DownstreamAddr(1)+"/stream", nil)
	req.Host = "live.berth.test"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "first\n" {
		t.Fatalf("stream: %q %v", line, err)
	}

	// Meanwhile a slowloris client, a header line every 100 ms, is cut.
	slow, err := net.Dial("tcp", e.DownstreamAddr(0))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	stopDrip := make(chan struct{})
	go func() {
		_, _ = io.WriteString(slow, "GET / HTTP/1.1\r\nHost: ws.berth.test\r\n")
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopDrip:
				return
			case <-tick.C:
				if _, err := io.WriteString(slow, "X-Slow: 1\r\n"); err != nil {
					return
				}
			}
		}
	}()
	took := closedWithin(t, slow, 5*time.Second)
	close(stopDrip)
	t.Logf("slowloris client cut after %v", took)

	// An idle keep-alive connection is closed too.
	idle, err := net.Dial("tcp", e.DownstreamAddr(0))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := io.WriteString(idle, "GET / HTTP/1.1\r\nHost: ws.berth.test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	ir := bufio.NewReader(idle)
	ir2, err := http.ReadResponse(ir, nil)
	if err != nil || ir2.StatusCode != 200 {
		t.Fatalf("idle connection's request: %v %v", ir2, err)
	}
	_, _ = io.Copy(io.Discard, ir2.Body)
	t.Logf("idle keep-alive connection closed after %v", closedWithin(t, idle, 5*time.Second))

	// An upstream that never answers gets a 504 after the header timeout.
	start := time.Now()
	code, _, hdr, err := e.Get(c, 0, "live", "/hang")
	if err != nil || code != http.StatusGatewayTimeout || hdr.Get(proxy.ErrorHeader) != "upstream-timeout" {
		t.Fatalf("hanging upstream: %d %q %v", code, hdr.Get(proxy.ErrorHeader), err)
	}
	t.Logf("hanging upstream answered 504 after %v", time.Since(start))

	// Hold on past every timeout several times over.
	hold := time.NewTimer(5 * d)
	<-hold.C
	for i, ws := range []func(string) string{ws0, ws1} {
		if got := ws("still here"); got != "still here" {
			t.Fatalf("websocket %d after the hold: %q", i, got)
		}
	}
	release <- struct{}{}
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "second\n" {
		t.Fatalf("stream after the hold: %q %v", rest, err)
	}
}

func TestDownstreamAuthentication(t *testing.T) {
	dir, ring := agentKeys(t)
	e := dataplanetest.Start(t, dataplanetest.Options{ConfigureProxy: func(_ int, cfg *proxy.Config) { cfg.Edge.AuthKeys = dir }})
	// The upstream tells whether the edge's credential reached it.
	up := startHeaderEcho(t, "Authorization")
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"web": up, "api": up})
	e.WaitConnections("web", 1)
	now := time.Now()
	sign := func(endpoints []string, issued time.Time, ttl time.Duration) string {
		tok, err := ring.SignAgent(token.AgentClaims{Endpoints: endpoints, ExpiresAt: issued.Add(ttl)}, issued)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	c := httpClient(t)
	get := func(p int, endpoint, auth string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+e.DownstreamAddr(p)+"/", nil)
		req.Host = endpoint + ".berth.test"
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	web := "Bearer " + sign([]string{"web"}, now, time.Hour)
	// Accepted on the holder and on the proxy that forwards to it; the
	// token stays at the edge.
	for p := range 2 {
		controlplanetest.Eventually(t, 20*time.Second, func() error {
			if code, body, _ := get(p, "web", web); code != 200 || body != "Authorization=" {
				return fmt.Errorf("proxy %d: %d %q", p, code, body)
			}
			return nil
		})
	}
	for _, tt := range []struct{ name, endpoint, auth, reason string }{
		{"wrong endpoint", "api", web, `token does not cover endpoint "api"`},
		{"expired", "web", "Bearer " + sign([]string{"web"}, now.Add(-2*time.Hour), time.Hour), "token expired"},
		{"missing", "web", "", "no bearer token"},
		{"forged", "web", "Bearer " + web[len("Bearer "):len(web)-4] + "AAAA", "invalid token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for p := range 2 {
				code, body, hdr := get(p, tt.endpoint, tt.auth)
				if code != http.StatusUnauthorized || hdr.Get(proxy.ErrorHeader) != "unauthorized" ||
					!strings.Contains(body, tt.reason) || !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
					t.Fatalf("proxy %d: %d %q %v, want 401 saying %q", p, code, body, hdr, tt.reason)
				}
			}
		})
	}
}

// startHeaderEcho runs an upstream answering "<name>=<value>" for one
// request header.
func startHeaderEcho(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s=%s", name, r.Header.Get(name))
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// testCA signs leaf certificates for downstream TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// writeLeaf writes a certificate for *.berth.test and 127.0.0.1 with the
// given serial to certFile and keyFile, each replaced whole (rename).
func (ca *testCA) writeLeaf(t *testing.T, serial int64, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "edge"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"*.berth.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(path string, block *pem.Block) {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(keyFile, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	write(certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestDownstreamTLSWithSNIAndRotationUnderLoad(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "edge.crt"), filepath.Join(dir, "edge.key")
	ca.writeLeaf(t, 100, certFile, keyFile)
	e := dataplanetest.Start(t, dataplanetest.Options{ConfigureProxy: func(_ int, cfg *proxy.Config) {
		cfg.Edge.TLSAddr, cfg.Edge.TLSCert, cfg.Edge.TLSKey = "127.0.0.1:0", certFile, keyFile
		cfg.Edge.CertReload = 50 * time.Millisecond
	}})
	up := dataplanetest.Upstream(t, "svc")
	echo := startTCPEcho(t)
	demo := startDemo(t)
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"web": up, "tcp": echo, "ws": demo})
	e.WaitConnections("web", 1)
	waitRoutes(t, e, httpClient(t), "web")

	// h2 names the endpoint by SNI only (the URL's host is an address);
	// HTTP/1.1 by Host. Fresh connections each time, so rotation shows.
	clientFor := func(h2 bool) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: "web.berth.test"}, ForceAttemptHTTP2: h2, DisableKeepAlives: true}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	h2, h1 := clientFor(true), clientFor(false)
	get := func(c *http.Client, p int) (int, string, int, error) {
		req, _ := http.NewRequest("GET", "https://"+e.Proxy(p).DownstreamTLSAddr()+"/x", nil)
		if c == h1 {
			req.Host = "web.berth.test"
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.ProtoMajor, err
	}
	for p := range 2 {
		for _, c := range []*http.Client{h2, h1} {
			code, body, proto, err := get(c, p)
			if err != nil || code != 200 || body != "svc /x" || (c == h2) != (proto == 2) {
				t.Fatalf("proxy %d: %d %q HTTP/%d %v", p, code, body, proto, err)
			}
		}
	}

	// TCP through TLS: the berth-tcp ALPN protocol (endpoint by SNI) and
	// the berth-tcp upgrade over TLS.
	for p := range 2 {
		conn, err := tls.Dial("tcp", e.Proxy(p).DownstreamTLSAddr(), &tls.Config{RootCAs: ca.pool, ServerName: "tcp.berth.test", NextProtos: []string{proxy.ALPNTCP}})
		if err != nil {
			t.Fatal(err)
		}
		checkEcho(t, conn, fmt.Sprintf("alpn %d\n", p))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn2, err := agent.DialEndpoint(ctx, e.Proxy(p).DownstreamTLSAddr(), "tcp", &tls.Config{RootCAs: ca.pool})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		checkEcho(t, conn2, fmt.Sprintf("upgrade %d\n", p))
	}

	// A WebSocket through the TLS listener, named by SNI (HTTP/1.1: the
	// upgrade does not ride on HTTP/2).
	for p := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		wsc, _, err := websocket.Dial(ctx, "wss://"+e.Proxy(p).DownstreamTLSAddr()+"/ws", &websocket.DialOptions{HTTPClient: &http.Client{
			Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, ServerName: "ws.berth.test"}}}})
		if err != nil {
			cancel()
			t.Fatalf("proxy %d: wss: %v", p, err)
		}
		if err := wsc.Write(ctx, websocket.MessageText, []byte("over tls")); err != nil {
			t.Fatal(err)
		}
		if _, b, err := wsc.Read(ctx); err != nil || string(b) != "over tls" {
			t.Fatalf("proxy %d: wss echo %q %v", p, b, err)
		}
		_ = wsc.Close(websocket.StatusNormalClosure, "")
		cancel()
	}

	// Rotate under load: no request fails, and new handshakes get the new
	// certificate.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := []*http.Client{h2, h1}[w%2]
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				code, body, _, err := get(c, (w+n)%2)
				if err != nil || code != 200 || body != "svc /x" {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
					continue
				}
				ok.Add(1)
			}
		}()
	}
	serial := func(p int) int64 {
		conn, err := tls.Dial("tcp", e.Proxy(p).DownstreamTLSAddr(), &tls.Config{RootCAs: ca.pool, ServerName: "web.berth.test"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	atLeast := func(n int64) func() error {
		return func() error {
			if got := ok.Load(); got < n {
				return fmt.Errorf("%d requests so far, waiting for %d (%d failed)", got, n, failed.Load())
			}
			return nil
		}
	}
	controlplanetest.Eventually(t, 20*time.Second, atLeast(50))
	ca.writeLeaf(t, 200, certFile, keyFile)
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		for p := range 2 {
			if s := serial(p); s != 200 {
				return fmt.Errorf("proxy %d still presents serial %d", p, s)
			}
		}
		return nil
	})
	controlplanetest.Eventually(t, 20*time.Second, atLeast(ok.Load()+50))
	close(done)
	wg.Wait()
	t.Logf("%d HTTPS requests across the rotation, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("%d requests failed, first: %v", failed.Load(), firstErr.Load())
	}
}

func checkEcho(t *testing.T, conn net.Conn, line string) {
	t.Helper()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, line); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(line))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != line {
		t.Fatalf("tcp echo: %q %v", buf, err)
	}
}
