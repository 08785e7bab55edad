package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
)

func TestParseRole(t *testing.T) {
	for _, r := range Roles() {
		got, err := ParseRole(string(r))
		if err != nil || got != r {
			t.Errorf("ParseRole(%q) = %q, %v", r, got, err)
		}
	}
	for _, s := range []string{"", "Server", "admin", " server", "proxy "} {
		_, err := ParseRole(s)
		if !errors.Is(err, ErrUnknownRole) {
			t.Errorf("ParseRole(%q) = %v, want ErrUnknownRole", s, err)
			continue
		}
		if !strings.Contains(err.Error(), "server, proxy, client, agent") {
			t.Errorf("ParseRole(%q) error %q does not list the roles", s, err)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"cp0", "edge-1", "alice", "a.b_c:d-E9", strings.Repeat("x", MaxNameLen)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "../etc", "a b", "é", strings.Repeat("x", MaxNameLen+1), "a%2f"} {
		if err := ValidateName(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
}

// certWithURIs signs a throwaway certificate carrying uris, through the
// x509 encoder and parser, so IdentityOf sees what a peer would send.
func certWithURIs(t *testing.T, caDir string, uris ...string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{}
	for _, s := range uris {
		tmpl.URIs = append(tmpl.URIs, mustURL(t, s))
	}
	certFile, _ := signCustom(t, caDir, tmpl)
	return pemCert(t, certFile)
}

func TestIdentityOf(t *testing.T) {
	caDir := newCA(t, "")
	tests := []struct {
		name string
		uris []string
		want Identity
		err  error
	}{
		{name: "server", uris: []string{"berth://server/cp0"}, want: Identity{RoleServer, "cp0"}},
		{name: "proxy", uris: []string{"berth://proxy/edge-1"}, want: Identity{RoleProxy, "edge-1"}},
		{name: "client", uris: []string{"berth://client/alice"}, want: Identity{RoleClient, "alice"}},
		{name: "agent", uris: []string{"berth://agent/a.b_c:d"}, want: Identity{RoleAgent, "a.b_c:d"}},
		{name: "other schemes ignored", uris: []string{"spiffe://example.org/x", "berth://proxy/p1", "https://example.com/"}, want: Identity{RoleProxy, "p1"}},
		{name: "upper-case scheme is the same scheme", uris: []string{"BERTH://server/cp0"}, want: Identity{RoleServer, "cp0"}},
		{name: "none", err: ErrNoIdentity},
		{name: "only other schemes", uris: []string{"spiffe://example.org/server/cp0"}, err: ErrNoIdentity},
		{name: "two identities", uris: []string{"berth://server/cp0", "berth://proxy/p1"}, err: ErrAmbiguousIdentity},
		{name: "same identity twice", uris: []string{"berth://server/cp0", "berth://server/cp0"}, err: ErrAmbiguousIdentity},
		{name: "two with different scheme case", uris: []string{"berth://server/cp0", "Berth://proxy/p1"}, err: ErrAmbiguousIdentity},
		{name: "unknown role", uris: []string{"berth://admin/root"}, err: ErrMalformedIdentity},
		{name: "upper-case role", uris: []string{"berth://SERVER/cp0"}, err: ErrMalformedIdentity},
		{name: "no name", uris: []string{"berth://server"}, err: ErrMalformedIdentity},
		{name: "empty name", uris: []string{"berth://server/"}, err: ErrMalformedIdentity},
		{name: "nested path", uris: []string{"berth://server/a/b"}, err: ErrMalformedIdentity},
		{name: "escaped slash", uris: []string{"berth://server/a%2Fb"}, err: ErrMalformedIdentity},
		{name: "needless escape", uris: []string{"berth://server/cp%30"}, err: ErrMalformedIdentity},
		{name: "port", uris: []string{"berth://server:7000/cp0"}, err: ErrMalformedIdentity},
		{name: "user info", uris: []string{"berth://root@server/cp0"}, err: ErrMalformedIdentity},
		{name: "query", uris: []string{"berth://server/cp0?admin=1"}, err: ErrMalformedIdentity},
		{name: "empty query", uris: []string{"berth://server/cp0?"}, err: ErrMalformedIdentity},
		{name: "fragment", uris: []string{"berth://server/cp0#x"}, err: ErrMalformedIdentity},
		{name: "opaque", uris: []string{"berth:server/cp0"}, err: ErrMalformedIdentity},
		{name: "dot-dot", uris: []string{"berth://server/.."}, err: ErrMalformedIdentity},
		{name: "bad character", uris: []string{"berth://server/a%20b"}, err: ErrMalformedIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := certWithURIs(t, caDir, tt.uris...)
			got, err := IdentityOf(cert)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("IdentityOf(%v) = %v, %v; want %v", tt.uris, got, err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("IdentityOf(%v) = %v, %v; want %v", tt.uris, got, err, tt.want)
			}
		})
	}
}

func TestIdentityRoundTrip(t *testing.T) {
	for _, r := range Roles() {
		id := Identity{Role: r, Name: "n-1.x_y:z"}
		if got := id.URI().String(); got != id.String() {
			t.Errorf("URI() = %q, String() = %q", got, id.String())
		}
		got, err := ParseIdentity(id.String())
		if err != nil || got != id {
			t.Errorf("ParseIdentity(%q) = %v, %v", id, got, err)
		}
	}
}

func TestPeerIdentityNeedsVerifiedChain(t *testing.T) {
	caDir := newCA(t, "")
	cert := certWithURIs(t, caDir, "berth://server/cp0")
	if _, err := PeerIdentity(tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{cert}}); !errors.Is(err, ErrUnverified) {
		t.Fatalf("unverified peer: %v", err)
	}
	if _, err := PeerIdentity(tls.ConnectionState{}); !errors.Is(err, ErrUnverified) {
		t.Fatalf("no handshake: %v", err)
	}
	got, err := PeerIdentity(tls.ConnectionState{HandshakeComplete: true, VerifiedChains: [][]*x509.Certificate{{cert}}})
	if err != nil || got != (Identity{RoleServer, "cp0"}) {
		t.Fatalf("verified peer: %v, %v", got, err)
	}
}

func TestFilesValidate(t *testing.T) {
	tests := []struct {
		f  Files
		ok bool
	}{
		{Files{}, true},
		{Files{CA: "a", Cert: "b", Key: "c"}, true},
		{Files{CA: "a"}, false},
		{Files{Cert: "b", Key: "c"}, false},
		{Files{CA: "a", Cert: "b"}, false},
	}
	for _, tt := range tests {
		err := tt.f.Validate()
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalidFiles)) {
			t.Errorf("%+v.Validate() = %v", tt.f, err)
		}
	}
	if _, err := NewReloader(Files{}, nil); !errors.Is(err, ErrInvalidFiles) {
		t.Errorf("NewReloader(no files) = %v", err)
	}
}
