package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// Role is what a certificate's holder may do in a Berth cluster.
type Role string

// The roles a certificate can carry.
const (
	RoleServer Role = "server"
	RoleProxy  Role = "proxy"
	RoleClient Role = "client"
	RoleAgent  Role = "agent"
)

// Roles lists every role, in the order help texts show them.
func Roles() []Role { return []Role{RoleServer, RoleProxy, RoleClient, RoleAgent} }

// ParseRole returns the role spelled s (exactly, lower case).
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !slices.Contains(Roles(), r) {
		return "", fmt.Errorf("role %q: valid roles are %s: %w", s, roleList(Roles()), ErrUnknownRole)
	}
	return r, nil
}

func roleList(roles []Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

// Scheme is the URI scheme of identity SANs.
const Scheme = "berth"

// MaxNameLen bounds a certificate name; it matches fsm.MaxIDLen so any node
// or proxy id fits.
const MaxNameLen = 128

// Identity is who a certificate says its holder is.
type Identity struct {
	Role Role
	Name string
}

// String returns the identity's URI, berth://<role>/<name>.
func (id Identity) String() string { return Scheme + "://" + string(id.Role) + "/" + id.Name }

// URI returns the identity as the URI SAN to put in a certificate.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: Scheme, Host: string(id.Role), Path: "/" + id.Name}
}

// Validate reports whether id has a known role and a valid name.
func (id Identity) Validate() error {
	if _, err := ParseRole(string(id.Role)); err != nil {
		return err
	}
	return ValidateName(id.Name)
}

// ValidateName checks a certificate name: 1 to MaxNameLen characters from
// A-Z a-z 0-9 . _ : - (the characters of node and proxy ids), and not "." or
// "..", since the name also names the certificate's files.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty: %w", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name has %d characters, at most %d: %w", len(name), MaxNameLen, ErrInvalidName)
	case name == "." || name == "..":
		return fmt.Errorf("name %q: %w", name, ErrInvalidName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '-'
		if !ok {
			return fmt.Errorf("name %q has %q at %d (allowed: A-Z a-z 0-9 . _ : -): %w", name, c, i, ErrInvalidName)
		}
	}
	return nil
}

// IdentityOf reads the identity from cert's berth:// URI SAN. URI SANs of
// other schemes are ignored. It fails with ErrNoIdentity when there is none,
// ErrAmbiguousIdentity when there are several and ErrMalformedIdentity when
// the one there is not exactly berth://<role>/<name>.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, ErrNoIdentity
	}
	var found *url.URL
	for _, u := range cert.URIs {
		if !strings.EqualFold(u.Scheme, Scheme) {
			continue
		}
		if found != nil {
			return Identity{}, fmt.Errorf("%s: %q and %q: %w", subject(cert), found, u, ErrAmbiguousIdentity)
		}
		found = u
	}
	if found == nil {
		return Identity{}, fmt.Errorf("%s: %w", subject(cert), ErrNoIdentity)
	}
	id, err := parseIdentityURI(found)
	if err != nil {
		return Identity{}, fmt.Errorf("%s: %w", subject(cert), err)
	}
	return id, nil
}

func subject(cert *x509.Certificate) string {
	if cn := cert.Subject.CommonName; cn != "" {
		return fmt.Sprintf("certificate %q", cn)
	}
	return "certificate serial " + cert.SerialNumber.String()
}

// ParseIdentity parses the text of an identity URI, berth://<role>/<name>.
func ParseIdentity(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Identity{}, fmt.Errorf("%q: %w", s, ErrMalformedIdentity)
	}
	return parseIdentityURI(u)
}

// parseIdentityURI accepts only the canonical form: anything else (a port,
// user info, query, fragment, escapes, extra path segments, upper-case role)
// is refused rather than normalised, so one identity has one spelling.
func parseIdentityURI(u *url.URL) (Identity, error) {
	bad := func(why string) (Identity, error) {
		return Identity{}, fmt.Errorf("%q: %s: %w", u.String(), why, ErrMalformedIdentity)
	}
	if u.Scheme != Scheme {
		return bad("scheme must be " + Scheme)
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery ||
		u.Fragment != "" || u.RawFragment != "" || u.RawPath != "" || u.OmitHost {
		return bad("want exactly " + Scheme + "://<role>/<name>")
	}
	role, err := ParseRole(u.Host)
	if err != nil {
		return bad(err.Error())
	}
	name, ok := strings.CutPrefix(u.Path, "/")
	if !ok {
		return bad("missing name")
	}
	if err := ValidateName(name); err != nil {
		return bad(err.Error())
	}
	id := Identity{Role: role, Name: name}
	if id.String() != u.String() {
		return bad("not in canonical form " + id.String())
	}
	return id, nil
}

// PeerIdentity returns the identity of the peer of a connection whose peer
// certificate crypto/tls verified against a CA: on a server made with
// ServerConfig, or in a gRPC interceptor via peer.FromContext and
// credentials.TLSInfo.State. It fails with ErrUnverified otherwise, which
// includes the client side of ClientConfig (that config verifies the server
// itself and already enforced its role; use IdentityOf on
// cs.PeerCertificates[0] there).
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if !cs.HandshakeComplete {
		return Identity{}, ErrUnverified
	}
	return verifiedIdentity(cs)
}

// verifiedIdentity is PeerIdentity during the handshake (VerifyConnection
// runs before HandshakeComplete is set).
func verifiedIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, ErrUnverified
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}

// checkRole admits id when its role is in allowed, or when allowed is empty.
func checkRole(id Identity, allowed []Role) error {
	if len(allowed) == 0 || slices.Contains(allowed, id.Role) {
		return nil
	}
	return fmt.Errorf("peer %s has role %q, allowed: %s: %w", id, id.Role, roleList(allowed), ErrWrongRole)
}
