package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"
)

// FuzzIdentity feeds arbitrary URI SAN text to the identity parser, directly
// and through a real certificate (x509 encoding and parsing included). An
// accepted identity must be valid and have exactly one spelling; nothing may
// panic.
func FuzzIdentity(f *testing.F) {
	for _, s := range []string{
		"berth://server/cp0", "berth://proxy/edge-1", "berth://client/alice", "berth://agent/a.b_c:d",
		"BERTH://server/cp0", "berth://SERVER/cp0", "berth://server", "berth://server/", "berth://server/a/b",
		"berth://server/a%2Fb", "berth://server:1/x", "berth://u@server/x", "berth://server/x?", "berth://server/x#",
		"berth:server/x", "berth:///x", "spiffe://example.org/x", "berth://server/..", "berth://server/%2e%2e",
		"berth://[::1]/x", "berth://server/x%00", "",
	} {
		f.Add(s)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err == nil {
			checkAccepted(t, id)
		} else if !errors.Is(err, ErrMalformedIdentity) {
			t.Fatalf("ParseIdentity(%q) = %v, not ErrMalformedIdentity", s, err)
		}

		u, err := url.Parse(s)
		if err != nil {
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			NotBefore:    now,
			NotAfter:     now.Add(time.Hour),
			URIs:         []*url.URL{u},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			return
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return // x509 refuses some URIs it will encode
		}
		got, err := IdentityOf(cert)
		if err != nil {
			if !errors.Is(err, ErrNoIdentity) && !errors.Is(err, ErrMalformedIdentity) {
				t.Fatalf("IdentityOf(%q) = %v", cert.URIs[0], err)
			}
			return
		}
		checkAccepted(t, got)
		if got.String() != cert.URIs[0].String() {
			t.Fatalf("IdentityOf accepted %q as %q", cert.URIs[0], got)
		}
	})
}

func checkAccepted(t *testing.T, id Identity) {
	t.Helper()
	if err := id.Validate(); err != nil {
		t.Fatalf("accepted invalid identity %#v: %v", id, err)
	}
	again, err := ParseIdentity(id.String())
	if err != nil || again != id {
		t.Fatalf("%q does not round-trip: %v, %v", id, again, err)
	}
	if id.URI().String() != id.String() {
		t.Fatalf("URI() %q != String() %q", id.URI(), id)
	}
}
