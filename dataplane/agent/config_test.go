package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/fsm"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		want string // substring of the error; "" = valid
	}{
		{"ok", func(*Config) {}, ""},
		{"defaults filled later", func(c *Config) { c.AgentID, c.Slot = "", "" }, ""},
		{"no proxy", func(c *Config) { c.Proxies = nil }, "proxy"},
		{"bad proxy", func(c *Config) { c.Proxies = []string{"nohost"} }, "proxy"},
		{"bad port", func(c *Config) { c.Proxies = []string{"a:0"} }, "port must be 1..65535"},
		{"no endpoint", func(c *Config) { c.Endpoints = nil }, "endpoint"},
		{"bad endpoint", func(c *Config) { c.Endpoints = []string{"Web"} }, "endpoint"},
		{"duplicate endpoint", func(c *Config) { c.Endpoints = []string{"web", "web"} }, "twice"},
		{"too many endpoints", func(c *Config) {
			c.Endpoints = nil
			for i := range fsm.MaxEndpointsPerConnection + 1 {
				c.Endpoints = append(c.Endpoints, fmt.Sprintf("e%d", i))
			}
		}, "at most"},
		{"bad agent id", func(c *Config) { c.AgentID = "a b" }, "agent id"},
		{"bad slot", func(c *Config) { c.Slot = strings.Repeat("s", 200) }, "slot"},
		{"backoff", func(c *Config) { c.BackoffBase = 0 }, "backoff"},
		{"backoff max", func(c *Config) { c.BackoffMax = time.Millisecond }, "backoff max"},
		{"drain", func(c *Config) { c.DrainTimeout = 0 }, "drain"},
		{"tunnel", func(c *Config) { c.Tunnel.AcceptBacklog = 0 }, "tunnel"},
		{"websocket proxy", func(c *Config) { c.Proxies = []string{"wss://edge.example.com/berth/tunnel", "ws://10.0.0.1:8443"} }, ""},
		{"websocket without host", func(c *Config) { c.Proxies = []string{"wss:///berth/tunnel"} }, "no host"},
		{"websocket with user", func(c *Config) { c.Proxies = []string{"wss://u:p@edge.example.com/"} }, "user info"},
		{"http proxy", func(c *Config) { c.HTTPProxy = "http://user:pass@proxy.internal:3128" }, ""},
		{"no http proxy", func(c *Config) { c.HTTPProxy = NoHTTPProxy }, ""},
		{"bad http proxy", func(c *Config) { c.HTTPProxy = "socks5://proxy:1080" }, "http-proxy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig("127.0.0.1:7443")
			tc.mut(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid config refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one about %q", err, tc.want)
			}
		})
	}
}

func TestDefaultsAndFlags(t *testing.T) {
	if err := fsm.ValidateID("agent id", defaultAgentID()); err != nil {
		t.Fatalf("default agent id %q: %v", defaultAgentID(), err)
	}
	c := Default()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--proxy", "a:1,b:2", "--proxy", "c:3", "--slot", "s1", "--drain-timeout", "5s", "--handshake-timeout", "3s"}); err != nil {
		t.Fatal(err)
	}
	c.Endpoints = []string{"web"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Proxies, " ") != "a:1 b:2 c:3" || c.Slot != "s1" || c.DrainTimeout != 5*time.Second || c.Tunnel.HandshakeTimeout != 3*time.Second {
		t.Fatalf("config = %+v", c)
	}
	d := c.withDefaults()
	if d.AgentID == "" || d.Slot != "s1" {
		t.Fatalf("withDefaults = %+v", d)
	}
	c.Slot = ""
	if d := c.withDefaults(); d.Slot != d.AgentID {
		t.Fatalf("slot default = %q, want the agent id %q", d.Slot, d.AgentID)
	}
}

func TestBackoffFullJitter(t *testing.T) {
	b := backoff{base: 10 * time.Millisecond, max: 80 * time.Millisecond}
	ceilings := []time.Duration{10, 20, 40, 80, 80, 80}
	for i, c := range ceilings {
		c *= time.Millisecond
		for range 50 {
			saved := b.attempt
			if d := b.next(); d < 0 || d > c {
				t.Fatalf("attempt %d: wait %s outside [0, %s]", i, d, c)
			}
			b.attempt = saved
		}
		b.attempt++
	}
	b.attempt = 1 << 40 // no overflow however long the streak
	if d := b.next(); d < 0 || d > b.max {
		t.Fatalf("long streak: %s", d)
	}
	b.reset()
	if b.attempt != 0 {
		t.Fatal("reset")
	}
}

func TestTLSOptions(t *testing.T) {
	if cfg, err := (TLSOptions{}).Load(); cfg != nil || err != nil {
		t.Fatalf("no options = %v, %v; want plaintext", cfg, err)
	}
	if cfg, err := (TLSOptions{Enable: true}).Load(); cfg == nil || err != nil {
		t.Fatalf("--tls = %v, %v", cfg, err)
	}
	if _, err := (TLSOptions{CertFile: "x"}).Load(); err == nil {
		t.Fatal("certificate without key accepted")
	}
	if _, err := (TLSOptions{CAFile: filepath.Join(t.TempDir(), "missing")}).Load(); err == nil {
		t.Fatal("missing CA file accepted")
	}
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("  secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadToken(tok); got != "secret" || err != nil {
		t.Fatalf("ReadToken = %q, %v", got, err)
	}
}

// The agent fills ServerName from the address it dials, so one TLS config
// works across proxies; the tunnel then runs over TLS.
func TestTunnelOverTLS(t *testing.T) {
	certPEM, keyPEM := selfSigned(t)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProxyTLS(t, "a", &tls.Config{Certificates: []tls.Certificate{cert}})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := TLSOptions{CAFile: ca}.Load()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(p.addr())
	cfg.TLS = tlsCfg
	a := startAgent(t, cfg)
	p.next(t)
	eventually(t, 5*time.Second, func() bool { return a.Status().Connected }, "connected over TLS")
	if tlsCfg.ServerName != "" {
		t.Fatal("the caller's TLS config was modified")
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test proxy"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func TestStreamRemoteAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:80":           "192.0.2.1:80",
		"[2001:db8::1]:443":      "[2001:db8::1]:443",
		"192.0.2.1":              "192.0.2.1:0",
		"203.0.113.5, 192.0.2.1": "192.0.2.1:0",
		"":                       "pipe",
		"not an address":         "pipe",
	} {
		c, _ := net.Pipe()
		s := &Stream{ClientAddress: in, Conn: c}
		if got := s.RemoteAddr().String(); got != want {
			t.Errorf("RemoteAddr(%q) = %s, want %s", in, got, want)
		}
		_ = c.Close()
	}
}
