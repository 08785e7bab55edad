package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/token"
)

// tokenCLI runs berthctl with no --addr and nothing listening: the token
// commands must work offline.
func tokenCLI(t *testing.T, args ...string) result {
	t.Helper()
	return berthctlEnv(t, nil, args...)
}

func TestTokenKeygenCreateVerify(t *testing.T) {
	for _, alg := range []string{"HS256", "EdDSA", "ES256", "eddsa"} {
		t.Run(alg, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys")
			r := tokenCLI(t, "token", "keygen", "--dir", dir, "--alg", alg, "--kid", "k1")
			if r.code != 0 || !strings.Contains(r.stdout, "k1") {
				t.Fatalf("keygen: exit %d: %s", r.code, r.stderr)
			}
			r = tokenCLI(t, "token", "create", "--keys", dir, "--endpoint", "web,api", "--endpoint", "db",
				"--ttl", "24h", "--agent-id", "edge-1")
			if r.code != 0 {
				t.Fatalf("create: exit %d: %s", r.code, r.stderr)
			}
			tok := strings.TrimSpace(r.stdout)
			kr, err := token.LoadKeyring(dir)
			if err != nil {
				t.Fatal(err)
			}
			c, err := kr.VerifyAgent(tok, time.Now())
			if err != nil {
				t.Fatalf("VerifyAgent: %v", err)
			}
			if c.AgentID != "edge-1" || !slices.Equal(c.Endpoints, []string{"web", "api", "db"}) ||
				time.Until(c.ExpiresAt) < 23*time.Hour || time.Until(c.ExpiresAt) > 25*time.Hour {
				t.Fatalf("claims %+v", c)
			}
			if _, err := kr.VerifyAgent(tok, time.Now().Add(25*time.Hour)); err == nil {
				t.Fatal("token outlives its ttl")
			}
		})
	}
}

func TestTokenCreateJSONAndRotation(t *testing.T) {
	dir := t.TempDir()
	if r := tokenCLI(t, "token", "keygen", "--dir", dir, "--kid", "k1"); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	create := func() tokenOutput {
		t.Helper()
		r := tokenCLI(t, "token", "create", "--keys", dir, "--endpoint", "*", "--ttl", "1h", "-o", "json")
		if r.code != 0 {
			t.Fatalf("create: exit %d: %s", r.code, r.stderr)
		}
		var out tokenOutput
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("%v\n%s", err, r.stdout)
		}
		return out
	}
	first := create()
	if first.KID != "k1" || first.ID == "" || !slices.Equal(first.Endpoints, []string{"*"}) || first.Token == "" {
		t.Fatalf("output %+v", first)
	}
	if r := tokenCLI(t, "token", "keygen", "--dir", dir, "--kid", "k2", "--alg", "ES256"); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	second := create()
	if second.KID != "k2" {
		t.Fatalf("after keygen k2, signed with %q", second.KID)
	}
	kr, err := token.LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []tokenOutput{first, second} {
		if _, err := kr.VerifyAgent(o.Token, time.Now()); err != nil {
			t.Fatalf("%s: %v", o.KID, err)
		}
	}
	// Retire k1: its tokens stop verifying.
	if err := os.Remove(filepath.Join(dir, "k1.json")); err != nil {
		t.Fatal(err)
	}
	if kr, err = token.LoadKeyring(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.VerifyAgent(first.Token, time.Now()); err == nil {
		t.Fatal("token of a removed key verifies")
	}
}

func TestTokenErrors(t *testing.T) {
	dir := t.TempDir()
	if r := tokenCLI(t, "token", "keygen", "--dir", dir, "--kid", "k1"); r.code != 0 {
		t.Fatalf("keygen: %s", r.stderr)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown alg", []string{"token", "keygen", "--dir", dir, "--kid", "k9", "--alg", "RS256"},
			`unknown algorithm "RS256": valid values are HS256, EdDSA, ES256`},
		{"bad kid", []string{"token", "keygen", "--dir", dir, "--kid", "a/b"}, "key ID"},
		{"kid taken", []string{"token", "keygen", "--dir", dir, "--kid", "k1"}, "already exists"},
		{"keygen without kid", []string{"token", "keygen", "--dir", dir}, `required flag(s) "kid" not set`},
		{"upper case endpoint", []string{"token", "create", "--keys", dir, "--endpoint", "web,Api"}, `"Api" has 'A' at 0`},
		{"endpoint with underscore", []string{"token", "create", "--keys", dir, "--endpoint", "my_app"}, "allowed: a-z 0-9 -"},
		{"empty endpoint", []string{"token", "create", "--keys", dir, "--endpoint", ""}, "endpoints: none given"},
		{"no endpoint flag", []string{"token", "create", "--keys", dir}, `required flag(s) "endpoint" not set`},
		{"zero ttl", []string{"token", "create", "--keys", dir, "--endpoint", "web", "--ttl", "0s"}, "--ttl: must be positive, got 0s"},
		{"negative ttl", []string{"token", "create", "--keys", dir, "--endpoint", "web", "--ttl", "-1h"}, "--ttl: must be positive, got -1h0m0s"},
		{"missing key dir", []string{"token", "create", "--keys", filepath.Join(dir, "nope"), "--endpoint", "web"}, "no such file"},
		{"empty key dir", []string{"token", "create", "--keys", t.TempDir(), "--endpoint", "web"}, "no key files"},
		{"bad agent id", []string{"token", "create", "--keys", dir, "--endpoint", "web", "--agent-id", "a b"}, "agent id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tokenCLI(t, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want an error with %q", r.code, r.stderr, tc.want)
			}
			if r.stdout != "" {
				t.Fatalf("stdout %q", r.stdout)
			}
		})
	}
}
