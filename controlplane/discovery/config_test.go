package discovery

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestDefaultValidates(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		// wantIn are substrings the error must contain: the section and
		// the offending value, so an operator can fix it.
		wantIn  []string
		invalid bool // errors.Is(err, ErrInvalidAddress)
	}{
		{name: "static ok", edit: func(c *Config) { c.Static.Addrs = []string{"a:1", "[::1]:2"} }},
		{name: "static bad entry", edit: func(c *Config) { c.Static.Addrs = []string{"a:1", "b"} },
			wantIn: []string{"static: ", "entry 2", `"b"`, "missing port"}, invalid: true},
		{name: "static bad port", edit: func(c *Config) { c.Static.Addrs = []string{"a:99999"} },
			wantIn: []string{"static: ", `"a:99999"`, "port must be 1-65535"}, invalid: true},
		{name: "unknown mode", edit: func(c *Config) { c.Mode = "consul" }, wantIn: []string{`"consul"`}},
		{name: "poll interval", edit: func(c *Config) { c.PollInterval = 0 }, wantIn: []string{"poll interval"}},
		{name: "dns ok", edit: func(c *Config) { c.Mode, c.DNS.Name, c.DNS.Port = ModeDNS, "berth.ns.svc", 7000 }},
		{name: "dns srv ok", edit: func(c *Config) {
			c.Mode, c.DNS.Name, c.DNS.SRV = ModeDNS, "_grpc._tcp.berth.ns.svc.cluster.local", true
		}},
		{name: "dns no name", edit: func(c *Config) { c.Mode, c.DNS.Port = ModeDNS, 7000 }, wantIn: []string{"dns: ", "name is required"}},
		{name: "dns bad name", edit: func(c *Config) { c.Mode, c.DNS.Name, c.DNS.Port = ModeDNS, "a..b", 7000 }, wantIn: []string{"dns: name: ", `"a..b"`}},
		{name: "dns no port", edit: func(c *Config) { c.Mode, c.DNS.Name = ModeDNS, "berth" }, wantIn: []string{"dns: port must be 1-65535"}},
		{name: "dns srv with port", edit: func(c *Config) { c.Mode, c.DNS.Name, c.DNS.SRV, c.DNS.Port = ModeDNS, "_grpc._tcp.berth", true, 7000 },
			wantIn: []string{"dns: port must not be set with SRV"}},
		{name: "dns bad server", edit: func(c *Config) { c.Mode, c.DNS.Name, c.DNS.Port, c.DNS.Server = ModeDNS, "berth", 1, "127.0.0.1" },
			wantIn: []string{"dns: server: ", `"127.0.0.1"`}, invalid: true},
		{name: "dns timeout", edit: func(c *Config) { c.Mode, c.DNS.Name, c.DNS.Port, c.DNS.Timeout = ModeDNS, "berth", 1, 0 },
			wantIn: []string{"dns: timeout"}},
		{name: "gossip ok", edit: func(c *Config) { c.Mode, c.Gossip.SecretFile = ModeGossip, "/etc/berth/gossip" }},
		{name: "gossip no secret", edit: func(c *Config) { c.Mode = ModeGossip }, wantIn: []string{"gossip: ", "secret is required"}},
		{name: "gossip two secrets", edit: func(c *Config) { c.Mode, c.Gossip.Secret, c.Gossip.SecretFile = ModeGossip, "s", "f" },
			wantIn: []string{"gossip: ", "not both"}},
		{name: "gossip blank secret", edit: func(c *Config) { c.Mode, c.Gossip.Secret = ModeGossip, "  " }, wantIn: []string{"gossip: secret is blank"}},
		{name: "gossip bind name", edit: func(c *Config) { c.Mode, c.Gossip.Secret, c.Gossip.Bind = ModeGossip, "s", "host:7946" },
			wantIn: []string{"gossip: bind: ", `"host:7946"`, "IP:port"}, invalid: true},
		{name: "gossip bind v6 any", edit: func(c *Config) { c.Mode, c.Gossip.Secret, c.Gossip.Bind = ModeGossip, "s", "[::]:7946" },
			wantIn: []string{"gossip: advertise is required"}},
		{name: "gossip advertise port 0", edit: func(c *Config) { c.Mode, c.Gossip.Secret, c.Gossip.Advertise = ModeGossip, "s", "10.0.0.1:0" },
			wantIn: []string{"gossip: advertise: "}, invalid: true},
		{name: "gossip bad join", edit: func(c *Config) { c.Mode, c.Gossip.Secret, c.Gossip.Join = ModeGossip, "s", []string{"a:1", "b:x"} },
			wantIn: []string{"gossip: join: entry 2", `"b:x"`}, invalid: true},
		{name: "gossip bad profile", edit: func(c *Config) { c.Mode, c.Gossip.Secret, c.Gossip.Profile = ModeGossip, "s", "moon" },
			wantIn: []string{"gossip: ", `"moon"`}},
		{name: "other modes not validated", edit: func(c *Config) { c.DNS.Port = -1; c.Gossip.Bind = "x" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			err := c.Validate()
			if len(tt.wantIn) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate() = nil, want an error")
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Validate() = %q, want it to contain %q", err, s)
				}
			}
			if got := errors.Is(err, ErrInvalidAddress); got != tt.invalid {
				t.Errorf("errors.Is(%v, ErrInvalidAddress) = %v, want %v", err, got, tt.invalid)
			}
		})
	}
}

func TestRegisterFlags(t *testing.T) {
	c := Default()
	fs := pflag.NewFlagSet("berthd", pflag.ContinueOnError)
	c.RegisterFlags(fs)
	err := fs.Parse([]string{
		"--discovery=dns",
		"--discovery-poll-interval=2s",
		"--discovery-static=a:1, b:2",
		"--discovery-dns-name=_grpc._tcp.berth.ns.svc.cluster.local",
		"--discovery-dns-srv",
		"--discovery-dns-server=127.0.0.1:5353",
		"--discovery-dns-timeout=1s",
		"--gossip-bind=127.0.0.1:7000",
		"--gossip-advertise=10.0.0.1:7000",
		"--gossip-join=10.0.0.2:7000,10.0.0.3:7000",
		"--gossip-secret-file=/run/secret",
		"--gossip-secret=hunter2",
		"--gossip-profile=wan",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Mode:         ModeDNS,
		PollInterval: 2 * time.Second,
		Static:       StaticConfig{Addrs: []string{"a:1", "b:2"}},
		DNS: DNSConfig{
			Name: "_grpc._tcp.berth.ns.svc.cluster.local", SRV: true,
			Server: "127.0.0.1:5353", Timeout: time.Second,
		},
		Gossip: GossipConfig{
			Bind: "127.0.0.1:7000", Advertise: "10.0.0.1:7000",
			Join:       []string{"10.0.0.2:7000", "10.0.0.3:7000"},
			SecretFile: "/run/secret", Secret: "hunter2", Profile: ProfileWAN,
		},
	}
	if c.Mode != want.Mode || c.PollInterval != want.PollInterval || c.DNS != want.DNS ||
		!slices.Equal(c.Static.Addrs, want.Static.Addrs) ||
		c.Gossip.Bind != want.Gossip.Bind || c.Gossip.Advertise != want.Gossip.Advertise ||
		!slices.Equal(c.Gossip.Join, want.Gossip.Join) || c.Gossip.SecretFile != want.Gossip.SecretFile ||
		c.Gossip.Secret != want.Gossip.Secret || c.Gossip.Profile != want.Gossip.Profile {
		t.Fatalf("parsed config\n%+v\nwant\n%+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
}

func TestSecretNotInUsage(t *testing.T) {
	c := Default()
	c.Gossip.Secret = "hunter2"
	fs := pflag.NewFlagSet("berthd", pflag.ContinueOnError)
	var out strings.Builder
	fs.SetOutput(&out)
	c.RegisterFlags(fs)
	fs.PrintDefaults()
	if strings.Contains(out.String(), "hunter2") {
		t.Fatalf("usage shows the secret:\n%s", out.String())
	}
}

func TestLoadSecret(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	if err := os.WriteFile(file, []byte("  correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := loadSecret(GossipConfig{SecretFile: file}); err != nil || s != "correct horse" {
		t.Errorf("secret file: %q, %v", s, err)
	}
	if s, err := loadSecret(GossipConfig{Secret: "correct horse\n"}); err != nil || s != "correct horse" {
		t.Errorf("secret value: %q, %v", s, err)
	}
	if _, err := loadSecret(GossipConfig{SecretFile: empty}); err == nil {
		t.Error("empty secret file accepted")
	}
	if _, err := loadSecret(GossipConfig{SecretFile: filepath.Join(dir, "missing")}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing secret file: %v, want ErrNotExist", err)
	}
}
