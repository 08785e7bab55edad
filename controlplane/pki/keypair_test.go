package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestKeyPairReloadsAndKeepsTheLastGood(t *testing.T) {
	caDir := newCA(t, "Public-ish CA")
	// A plain server certificate: no berth identity, which KeyPair does
	// not ask for.
	c1, k1 := signCustom(t, caDir, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge"}, DNSNames: []string{"edge.example.com"}})
	c2, k2 := signCustom(t, caDir, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "edge"}, DNSNames: []string{"edge.example.com"}})
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	replace(t, c1, cert)
	replace(t, k1, key)

	logger, logs := newTestLogger(t)
	kp, err := NewKeyPair(cert, key, 20*time.Millisecond, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kp.Close)
	serial := func() int64 {
		c, _ := kp.GetCertificate(nil)
		return c.Leaf.SerialNumber.Int64()
	}
	if serial() != 1 {
		t.Fatalf("serial %d, want 1", serial())
	}

	// Rotation: the watcher takes the new pair.
	replace(t, k2, key)
	replace(t, c2, cert)
	eventually(t, 5*time.Second, func() bool { return serial() == 2 })

	// A broken file is refused and the pair in use stays.
	writeAtomic(t, cert, []byte("not a certificate"))
	if err := kp.Reload(); !errors.Is(err, ErrBadMaterial) {
		t.Fatalf("reload of a broken file: %v, want ErrBadMaterial", err)
	}
	if serial() != 2 {
		t.Fatalf("serial %d after a bad reload, want 2", serial())
	}
	if logs.String() == "" {
		t.Fatal("a failed reload was not logged")
	}
}

func TestNewKeyPairRejects(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, files := range map[string][2]string{
		"no key":     {junk, ""},
		"missing":    {filepath.Join(dir, "nope"), filepath.Join(dir, "nope")},
		"not a cert": {junk, junk},
	} {
		if kp, err := NewKeyPair(files[0], files[1], time.Second, nil); err == nil {
			kp.Close()
			t.Errorf("%s: no error", name)
		}
	}
}
