package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berthhq/berth/controlplane/pki"
)

// tlsctl runs berthctl with args and no control plane anywhere: the tls
// commands must not need one.
func tlsctl(t *testing.T, args ...string) result {
	t.Helper()
	return berthctlEnv(t, map[string]string{"BERTH_ADDR": "127.0.0.1:1"}, args...)
}

func TestTLSCommandsCreateUsableFiles(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	out := filepath.Join(t.TempDir(), "certs")
	r := tlsctl(t, "tls", "ca", "create", "--dir", caDir, "--name", "Test CA", "--validity", "1000h")
	if r.code != 0 || !strings.Contains(r.stdout, "ca.pem") {
		t.Fatalf("ca create: exit %d: %s", r.code, r.stderr)
	}
	for _, role := range pki.Roles() {
		name := string(role) + "-0"
		r = tlsctl(t, "tls", "cert", "create", "--ca-dir", caDir, "--role", string(role), "--name", name,
			"--host", "localhost,127.0.0.1", "--host", "node.example", "--out", out)
		if r.code != 0 || !strings.Contains(r.stdout, "berth://"+string(role)+"/"+name) {
			t.Fatalf("cert create %s: exit %d: %s", role, r.code, r.stderr)
		}
	}

	caPEM, err := os.ReadFile(filepath.Join(caDir, pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.pem holds no certificate")
	}
	for _, role := range pki.Roles() {
		name := string(role) + "-0"
		certFile, keyFile := pki.CertFiles(out, name)
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		for _, host := range []string{"localhost", "127.0.0.1", "node.example"} {
			if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
				t.Errorf("%s: verify for %s: %v", role, host, err)
			}
		}
		id, err := pki.IdentityOf(pair.Leaf)
		if err != nil || id != (pki.Identity{Role: role, Name: name}) {
			t.Errorf("identity %v, %v", id, err)
		}
	}
	// And the files are what a component loads.
	certFile, keyFile := pki.CertFiles(out, "server-0")
	rl, err := pki.NewReloader(pki.Files{CA: filepath.Join(caDir, pki.CACertFile), Cert: certFile, Key: keyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rl.Close()
}

func TestTLSCommandsRefuseToOverwrite(t *testing.T) {
	caDir := t.TempDir()
	if r := tlsctl(t, "tls", "ca", "create", "--dir", caDir); r.code != 0 {
		t.Fatalf("ca create: %s", r.stderr)
	}
	caKey := filepath.Join(caDir, pki.CAKeyFile)
	before, _ := os.ReadFile(caKey)
	r := tlsctl(t, "tls", "ca", "create", "--dir", caDir)
	if r.code == 0 || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("second ca create: exit %d: %s", r.code, r.stderr)
	}
	if after, _ := os.ReadFile(caKey); !bytes.Equal(before, after) {
		t.Fatal("CA key overwritten")
	}

	out := t.TempDir()
	args := []string{"tls", "cert", "create", "--ca-dir", caDir, "--role", "proxy", "--name", "edge-1", "--out", out}
	if r := tlsctl(t, args...); r.code != 0 {
		t.Fatalf("cert create: %s", r.stderr)
	}
	certFile, _ := pki.CertFiles(out, "edge-1")
	before, _ = os.ReadFile(certFile)
	r = tlsctl(t, args...)
	if r.code == 0 || !strings.Contains(r.stderr, "already exists") || !strings.Contains(r.stderr, "edge-1") {
		t.Fatalf("second cert create: exit %d: %s", r.code, r.stderr)
	}
	if after, _ := os.ReadFile(certFile); !bytes.Equal(before, after) {
		t.Fatal("certificate overwritten")
	}
}

func TestTLSCommandErrors(t *testing.T) {
	caDir := t.TempDir()
	if r := tlsctl(t, "tls", "ca", "create", "--dir", caDir); r.code != 0 {
		t.Fatalf("ca create: %s", r.stderr)
	}
	noCA := t.TempDir()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"unknown role", []string{"tls", "cert", "create", "--ca-dir", caDir, "--role", "admin", "--name", "x", "--out", t.TempDir()},
			[]string{`role "admin"`, "server, proxy, client, agent"}},
		{"missing CA", []string{"tls", "cert", "create", "--ca-dir", noCA, "--role", "client", "--name", "alice", "--out", t.TempDir()},
			[]string{"no CA", "berthctl tls ca create --dir " + noCA}},
		{"bad name", []string{"tls", "cert", "create", "--ca-dir", caDir, "--role", "client", "--name", "../x", "--out", t.TempDir()},
			[]string{"invalid name"}},
		{"bad host", []string{"tls", "cert", "create", "--ca-dir", caDir, "--role", "client", "--name", "x", "--host", "a b", "--out", t.TempDir()},
			[]string{`host "a b"`}},
		{"no role", []string{"tls", "cert", "create", "--ca-dir", caDir, "--name", "x"},
			[]string{`"role" not set`}},
		{"no dir", []string{"tls", "ca", "create"}, []string{`"dir" not set`}},
		{"negative validity", []string{"tls", "ca", "create", "--dir", t.TempDir(), "--validity", "-1h"},
			[]string{"validity"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tlsctl(t, tt.args...)
			if r.code == 0 {
				t.Fatal("succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q does not mention %q", r.stderr, w)
				}
			}
		})
	}
}
