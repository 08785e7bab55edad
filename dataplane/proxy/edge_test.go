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
