package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReloadInterval is how often a Reloader checks its files for change.
const DefaultReloadInterval = 5 * time.Second

// Files names a component's PEM files.
type Files struct {
	// CA is a bundle of one or more CA certificates; peers must chain to
	// one of them. During a CA rotation it holds the old and the new CA.
	CA string
	// Cert is the component's certificate (optionally followed by
	// intermediates) and Key its private key.
	Cert string
	Key  string
}

// Enabled reports whether any file is set; all empty means TLS is off.
func (f Files) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Validate accepts all three files set, or none (TLS off).
func (f Files) Validate() error {
	if !f.Enabled() {
		return nil
	}
	var missing []string
	if f.CA == "" {
		missing = append(missing, "CA")
	}
	if f.Cert == "" {
		missing = append(missing, "certificate")
	}
	if f.Key == "" {
		missing = append(missing, "key")
	}
	if len(missing) > 0 {
		return fmt.Errorf("CA, certificate and key go together; missing %v: %w", missing, ErrInvalidFiles)
	}
	return nil
}

// material is one consistent load of the three files.
type material struct {
	cert     *tls.Certificate // Leaf set
	identity Identity
	pool     *x509.CertPool
	cas      int
}

// Reloader serves a component's current certificate and CA pool from disk.
// A background goroutine checks the files' modification times (and sizes and
// inodes) every interval and reloads when they change; Reload forces a
// reload. A new set of files is taken only whole and only if it is good: the
// certificate and key parse and match, the certificate carries a berth
// identity and chains to the CA bundle. Otherwise the error is logged and the
// previous material stays in use, so a half-finished copy never takes a
// component off the network.
//
// The *tls.Config values from ServerConfig and ClientConfig read the current
// material on every handshake; existing connections are not affected.
type Reloader struct {
	files  Files
	logger *slog.Logger

	cur atomic.Pointer[material]

	mu      sync.Mutex // serialises checks; guards seen and lastErr
	seen    [3]os.FileInfo
	lastErr string

	poll *poller
}

// NewReloader loads f (all three files must be set and good) and starts
// watching them. Close stops the watch. logger may be nil.
func NewReloader(f Files, logger *slog.Logger) (*Reloader, error) {
	return newReloader(f, logger, DefaultReloadInterval)
}

func newReloader(f Files, logger *slog.Logger, interval time.Duration) (*Reloader, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if !f.Enabled() {
		return nil, fmt.Errorf("no CA, certificate or key given: %w", ErrInvalidFiles)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{
		files:  f,
		logger: logger.With("subsystem", "tls"),
	}
	seen, err := r.stat()
	if err != nil {
		return nil, err
	}
	m, err := load(f)
	if err != nil {
		return nil, err
	}
	r.seen = seen
	r.cur.Store(m)
	r.logger.Info("TLS material loaded", r.attrs(m)...)
	r.poll = startPoller(interval, func() { _ = r.check(false) })
	return r, nil
}

// Close stops watching the files. Configs already handed out keep serving
// the last material.
func (r *Reloader) Close() { r.poll.Close() }

// Reload re-reads the files now, changed or not. On error the previous
// material stays in use and the error is returned (and logged).
func (r *Reloader) Reload() error { return r.check(true) }

// Certificate returns the certificate currently presented.
func (r *Reloader) Certificate() *x509.Certificate { return r.cur.Load().cert.Leaf }

// Identity returns the identity of the certificate currently presented.
func (r *Reloader) Identity() Identity { return r.cur.Load().identity }

func (r *Reloader) check(force bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen, err := r.stat()
	if err != nil {
		return r.failed(err)
	}
	if !force && r.unchanged(seen) {
		return nil
	}
	// Remember what was looked at even if it fails to load, so a bad file
	// is reported once, not every interval, and retried when it changes.
	r.seen = seen
	m, err := load(r.files)
	if err != nil {
		return r.failed(err)
	}
	r.lastErr = ""
	old := r.cur.Swap(m)
	if force && old.cert.Leaf.Equal(m.cert.Leaf) && old.cas == m.cas && old.pool.Equal(m.pool) {
		return nil
	}
	r.logger.Info("TLS material reloaded", r.attrs(m)...)
	return nil
}

func (r *Reloader) failed(err error) error {
	if msg := err.Error(); msg != r.lastErr {
		r.lastErr = msg
		r.logger.Error("TLS reload failed; keeping the previous certificate and CA", "err", err)
	}
	return err
}

func (r *Reloader) attrs(m *material) []any {
	return []any{
		"identity", m.identity.String(),
		"serial", m.cert.Leaf.SerialNumber.String(),
		"not_after", m.cert.Leaf.NotAfter,
		"cas", m.cas,
	}
}

func (r *Reloader) stat() ([3]os.FileInfo, error) {
	var out [3]os.FileInfo
	for i, p := range []string{r.files.CA, r.files.Cert, r.files.Key} {
		fi, err := os.Stat(p)
		if err != nil {
			return out, err
		}
		out[i] = fi
	}
	return out, nil
}

func (r *Reloader) unchanged(now [3]os.FileInfo) bool {
	for i, fi := range now {
		old := r.seen[i]
		if old == nil || !os.SameFile(old, fi) || !old.ModTime().Equal(fi.ModTime()) || old.Size() != fi.Size() {
			return false
		}
	}
	return true
}

// load reads and checks one set of files.
func load(f Files) (*material, error) {
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, err
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", f.CA, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("CA %s: %s is not a CA certificate: %w", f.CA, subject(c), ErrBadMaterial)
		}
		pool.AddCert(c)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("certificate %s, key %s: %w: %w", f.Cert, f.Key, ErrBadMaterial, err)
	}
	leaf := cert.Leaf
	id, err := IdentityOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", f.Cert, err)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w: %w", f.Cert, ErrBadMaterial, err)
		}
		inter.AddCert(c)
	}
	// Our own certificate must chain to our CA bundle: in a cluster with one
	// CA, anything else is a half-done rotation that peers would refuse.
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("certificate %s does not verify against CA %s: %w: %w", f.Cert, f.CA, ErrBadMaterial, err)
	}
	return &material{cert: &cert, identity: id, pool: pool, cas: len(cas)}, nil
}

// ServerConfig returns a config for the accepting side of a link. Every
// handshake presents the current certificate, requires a client certificate
// that verifies against the current CA bundle, and admits only identities
// whose role is in allowed (empty: any role, but the certificate must still
// carry a berth identity). A refused role fails the handshake with an error
// wrapping ErrWrongRole that names the role seen and the roles allowed.
//
// Set NextProtos on the returned config before use if the protocol needs
// ALPN (gRPC's credentials.NewTLS does this itself).
func (r *Reloader) ServerConfig(allowed ...Role) *tls.Config {
	allowed = append([]Role(nil), allowed...)
	verify := func(cs tls.ConnectionState) error {
		id, err := verifiedIdentity(cs)
		if err != nil {
			return err
		}
		return checkRole(id, allowed)
	}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.cur.Load().cert, nil }
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCert,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		// Empty, not nil (which would mean the system roots): clients are
		// verified only by the per-handshake config below.
		ClientCAs:        x509.NewCertPool(),
		VerifyConnection: verify,
		// A resumed session skips certificate verification; without tickets
		// every handshake is checked against the CA in effect.
		SessionTicketsDisabled: true,
	}
	nextProtos := func() []string { return cfg.NextProtos }
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := r.cur.Load()
		return &tls.Config{
			MinVersion:             tls.VersionTLS13,
			Certificates:           []tls.Certificate{*m.cert},
			ClientAuth:             tls.RequireAndVerifyClientCert,
			ClientCAs:              m.pool,
			VerifyConnection:       verify,
			SessionTicketsDisabled: true,
			NextProtos:             nextProtos(),
		}, nil
	}
	return cfg
}

// ClientConfig returns a config for the dialling side of a link. Every
// handshake presents the current certificate and verifies the server's
// certificate against the current CA bundle (in VerifyConnection, since the
// static RootCAs would not follow reloads), checks that the server's role is
// in allowed (empty: any role) and, when serverName is not empty, that the
// certificate is valid for that host name. With serverName empty only the CA
// and the role are checked, which suits peers dialled by address.
func (r *Reloader) ClientConfig(serverName string, allowed ...Role) *tls.Config {
	allowed = append([]Role(nil), allowed...)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// Verification happens in VerifyConnection against the current CA;
		// the built-in check would use a fixed RootCAs.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.cur.Load().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("server sent no certificate: %w", ErrUnverified)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots:         r.cur.Load().pool,
				Intermediates: inter,
				DNSName:       serverName,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}); err != nil {
				return fmt.Errorf("server certificate: %w", err)
			}
			id, err := IdentityOf(leaf)
			if err != nil {
				return err
			}
			return checkRole(id, allowed)
		},
	}
}

// ServerConfigAnyClient returns a config that presents the current
// certificate and asks for no client certificate: for links whose clients
// authenticate otherwise (agents present signed tokens on the tunnel).
func (r *Reloader) ServerConfigAnyClient() *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true}
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{
			MinVersion:             tls.VersionTLS13,
			Certificates:           []tls.Certificate{*r.cur.Load().cert},
			SessionTicketsDisabled: true,
			NextProtos:             cfg.NextProtos,
		}, nil
	}
	return cfg
}
