package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := CreateCA(dir, "Test CA", 0); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	ca := pair.Leaf
	if !ca.IsCA || !ca.BasicConstraintsValid || ca.MaxPathLen != 0 || !ca.MaxPathLenZero {
		t.Errorf("not a leaf-only CA: IsCA %v, MaxPathLen %d", ca.IsCA, ca.MaxPathLen)
	}
	if ca.Subject.CommonName != "Test CA" || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("subject %q, key usage %v", ca.Subject.CommonName, ca.KeyUsage)
	}
	if pub, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("key %T, want ECDSA P-256", ca.PublicKey)
	}
	if d := time.Until(ca.NotAfter) - DefaultCAValidity; d > time.Minute || d < -time.Minute {
		t.Errorf("NotAfter %s, want about %s from now", ca.NotAfter, DefaultCAValidity)
	}
	if fi, err := os.Stat(filepath.Join(dir, CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v", fi.Mode(), err)
	}
	if err := ca.CheckSignatureFrom(ca); err != nil {
		t.Errorf("not self-signed: %v", err)
	}

	before, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err := CreateCA(dir, "Other", 0); !errors.Is(err, ErrExists) {
		t.Fatalf("second CreateCA = %v, want ErrExists", err)
	}
	// Only one of the two files present still refuses, and writes nothing.
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	if err := CreateCA(dir, "Other", 0); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateCA over a key = %v, want ErrExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if !bytes.Equal(before, after) {
		t.Fatal("CA key was overwritten")
	}
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("refused CreateCA wrote a certificate: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("stray files left: %v", entries)
	}
	if err := CreateCA(t.TempDir(), "", -time.Hour); err == nil {
		t.Fatal("negative validity accepted")
	}
}

func TestCreateCertEveryRole(t *testing.T) {
	caDir := newCA(t, "")
	caCert := pemCert(t, caFile(caDir))
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	for _, role := range Roles() {
		t.Run(string(role), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			name := string(role) + "-1"
			hosts := []string{"node.example.com", "localhost", "127.0.0.1", "::1"}
			if err := CreateCert(caDir, out, role, name, hosts, 0); err != nil {
				t.Fatal(err)
			}
			certFile, keyFile := CertFiles(out, name)
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				t.Fatal(err)
			}
			leaf := pair.Leaf
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "node.example.com", KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
					t.Errorf("verify for %v: %v", usage, err)
				}
			}
			if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
				t.Error(err)
			}
			if err := leaf.VerifyHostname("::1"); err != nil {
				t.Error(err)
			}
			id, err := IdentityOf(leaf)
			if err != nil || id != (Identity{Role: role, Name: name}) {
				t.Errorf("IdentityOf = %v, %v", id, err)
			}
			if !slices.Equal(leaf.DNSNames, []string{"node.example.com", "localhost"}) || len(leaf.IPAddresses) != 2 ||
				!leaf.IPAddresses[1].Equal(net.ParseIP("::1")) {
				t.Errorf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
			}
			if leaf.IsCA {
				t.Error("leaf is a CA")
			}
			if d := time.Until(leaf.NotAfter) - DefaultCertValidity; d > time.Minute || d < -time.Minute {
				t.Errorf("NotAfter %s", leaf.NotAfter)
			}
			if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode: %v %v", fi.Mode(), err)
			}

			before, _ := os.ReadFile(certFile)
			if err := CreateCert(caDir, out, role, name, nil, 0); !errors.Is(err, ErrExists) {
				t.Fatalf("second CreateCert = %v, want ErrExists", err)
			}
			after, _ := os.ReadFile(certFile)
			if !bytes.Equal(before, after) {
				t.Fatal("certificate was overwritten")
			}
		})
	}
}

func TestCreateCertNeverOutlivesCA(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := CreateCA(caDir, "", 48*time.Hour); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := CreateCert(caDir, out, RoleProxy, "p1", nil, 1000*time.Hour); err != nil {
		t.Fatal(err)
	}
	cert, _ := CertFiles(out, "p1")
	if got, ca := pemCert(t, cert).NotAfter, pemCert(t, caFile(caDir)).NotAfter; got.After(ca) {
		t.Fatalf("certificate valid until %s, CA until %s", got, ca)
	}
}

func TestCreateCertErrors(t *testing.T) {
	caDir := newCA(t, "")
	out := t.TempDir()
	tests := []struct {
		name  string
		role  Role
		cname string
		hosts []string
		ca    string
		valid time.Duration
		err   error
	}{
		{name: "unknown role", role: "admin", cname: "x", err: ErrUnknownRole},
		{name: "empty role", role: "", cname: "x", err: ErrUnknownRole},
		{name: "empty name", role: RoleServer, cname: "", err: ErrInvalidName},
		{name: "path in name", role: RoleServer, cname: "../evil", err: ErrInvalidName},
		{name: "dot-dot name", role: RoleServer, cname: "..", err: ErrInvalidName},
		{name: "empty host", role: RoleServer, cname: "x", hosts: []string{""}, err: ErrInvalidHost},
		{name: "bad host", role: RoleServer, cname: "x", hosts: []string{"not a host"}, err: ErrInvalidHost},
		{name: "host with port", role: RoleServer, cname: "x", hosts: []string{"a.example:7000"}, err: ErrInvalidHost},
		{name: "missing CA", role: RoleServer, cname: "x", ca: t.TempDir(), err: ErrNoCA},
		{name: "CA dir absent", role: RoleServer, cname: "x", ca: filepath.Join(t.TempDir(), "nope"), err: ErrNoCA},
		{name: "negative validity", role: RoleServer, cname: "x", valid: -time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := tt.ca
			if ca == "" {
				ca = caDir
			}
			err := CreateCert(ca, out, tt.role, tt.cname, tt.hosts, tt.valid)
			if err == nil || (tt.err != nil && !errors.Is(err, tt.err)) {
				t.Fatalf("CreateCert = %v, want %v", err, tt.err)
			}
			t.Log(err)
		})
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Fatalf("failed calls wrote files: %v", entries)
	}
}

func TestCreateCertWildcardAndCase(t *testing.T) {
	caDir := newCA(t, "")
	out := t.TempDir()
	if err := CreateCert(caDir, out, RoleProxy, "edge", []string{"*.Edge.Example.", " 10.0.0.1 "}, 0); err != nil {
		t.Fatal(err)
	}
	cert, _ := CertFiles(out, "edge")
	leaf := pemCert(t, cert)
	if !slices.Equal(leaf.DNSNames, []string{"*.edge.example"}) || len(leaf.IPAddresses) != 1 {
		t.Fatalf("SANs %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if err := leaf.VerifyHostname("p1.edge.example"); err != nil {
		t.Fatal(err)
	}
}
