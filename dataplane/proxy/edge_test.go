package proxy

import (
	"strings"
	"testing"
	"time"
)

func TestEdgeConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*EdgeConfig)
		want string // "" for valid
	}{
		{"default", func(*EdgeConfig) {}, ""},
		{"header list", func(c *EdgeConfig) { c.AccessLogHeaders = []string{"User-Agent", "x-request-id"} }, ""},
		{"bad header", func(c *EdgeConfig) { c.AccessLogHeaders = []string{"User Agent"} }, "access-log-headers"},
		{"no header timeout", func(c *EdgeConfig) { c.ReadHeaderTimeout = 0 }, "read-header-timeout"},
		{"no idle timeout", func(c *EdgeConfig) { c.IdleTimeout = -time.Second }, "idle-timeout"},
		{"negative upstream timeout", func(c *EdgeConfig) { c.UpstreamHeaderTimeout = -1 }, "upstream-header-timeout"},
		{"tls without files", func(c *EdgeConfig) { c.TLSAddr = "127.0.0.1:0" }, "downstream-tls-cert"},
		{"tls files without addr", func(c *EdgeConfig) { c.TLSCert, c.TLSKey = "c", "k" }, "downstream-tls-addr"},
		{"tls bad addr", func(c *EdgeConfig) { c.TLSAddr, c.TLSCert, c.TLSKey = "nope", "c", "k" }, "downstream-tls-addr"},
		{"tls", func(c *EdgeConfig) { c.TLSAddr, c.TLSCert, c.TLSKey = "127.0.0.1:0", "c", "k" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultEdge()
			tt.edit(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error about %s, got %v", tt.want, err)
			}
		})
	}
}

func TestSNIEndpoint(t *testing.T) {
	for sni, want := range map[string]string{"web.example.com": "web", "WEB.example.com": "web", "api": "api", "": "", "-bad.example.com": ""} {
		got, err := sniEndpoint(sni)
		if want == "" {
			if err == nil {
				t.Errorf("%q: got %q, want an error", sni, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: got %q %v, want %q", sni, got, err, want)
		}
	}
}

// A bad edge setting fails New with a clear error, never a crash.
func TestNewRefusesBadEdgeFiles(t *testing.T) {
	base := func() Config {
		c := Default()
		c.ID = "p"
		c.ControlPlane.TLS.Insecure = true
		c.TunnelAddr, c.DownstreamAddr, c.PeerAddr, c.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
		return c
	}
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"missing certificate": {func(c *Config) {
			c.Edge.TLSAddr, c.Edge.TLSCert, c.Edge.TLSKey = "127.0.0.1:0", dir+"/nope.crt", dir+"/nope.key"
		}, "downstream tls"},
		"empty auth keyring": {func(c *Config) { c.Edge.AuthKeys = dir }, "downstream auth keys"},
	} {
		t.Run(name, func(t *testing.T) {
			c := base()
			tc.edit(&c)
			p, err := New(c, nil)
			if err == nil {
				_ = p.Close()
				t.Fatal("New accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one about %s", err, tc.want)
			}
		})
	}
}
