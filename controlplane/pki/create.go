package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names in a CA directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// Default validities.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
	DefaultCAName       = "Berth CA"
)

// backdate is how far NotBefore lies in the past, so a peer whose clock is a
// little behind still accepts a fresh certificate.
const backdate = 5 * time.Minute

// CertFiles returns the paths CreateCert writes for name in outDir.
func CertFiles(outDir, name string) (cert, key string) {
	return filepath.Join(outDir, name+".pem"), filepath.Join(outDir, name+"-key.pem")
}

// CreateCA writes a new self-signed CA (ECDSA P-256) to dir/ca.pem and
// dir/ca-key.pem, creating dir if needed. name is the CA's common name
// (empty: DefaultCAName); validity 0 means DefaultCAValidity. It never
// overwrites: if either file exists it fails with ErrExists and writes
// nothing.
func CreateCA(dir string, name string, validity time.Duration) error {
	if name == "" {
		name = DefaultCAName
	}
	validity, err := checkValidity(validity, DefaultCAValidity)
	if err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if err := absent(certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Berth"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// The CA signs leaf certificates only.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("sign CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("CA directory: %w", err)
	}
	return writePair(certPath, der, keyPath, key)
}

// CreateCert issues a certificate for role/name signed by the CA in caDir and
// writes it to outDir/<name>.pem and outDir/<name>-key.pem (see CertFiles),
// creating outDir if needed. The certificate carries the identity URI
// berth://<role>/<name> and one DNS or IP SAN per entry of hosts, is good for
// both server and client auth, and has an ECDSA P-256 key. validity 0 means
// DefaultCertValidity; the certificate never outlives the CA (NotAfter is cut
// to the CA's). It fails with ErrNoCA when caDir holds no CA and ErrExists,
// writing nothing, when either output file exists.
func CreateCert(caDir, outDir string, role Role, name string, hosts []string, validity time.Duration) error {
	id := Identity{Role: role, Name: name}
	if err := id.Validate(); err != nil {
		return err
	}
	validity, err := checkValidity(validity, DefaultCertValidity)
	if err != nil {
		return err
	}
	var dnsNames []string
	var ips []net.IP
	for _, h := range hosts {
		ip, dns, err := parseHost(h)
		if err != nil {
			return err
		}
		if ip != nil {
			ips = append(ips, ip)
		} else {
			dnsNames = append(dnsNames, dns)
		}
	}
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return err
	}
	certPath, keyPath := CertFiles(outDir, name)
	if err := absent(certPath, keyPath); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{string(role)}, Organization: []string{"Berth"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Every component is a server on one link and a client on another.
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URI()},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("sign certificate: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	return writePair(certPath, der, keyPath, key)
}

func checkValidity(v, def time.Duration) (time.Duration, error) {
	switch {
	case v == 0:
		return def, nil
	case v < 0:
		return 0, fmt.Errorf("validity must be positive, got %s", v)
	}
	return v, nil
}

func newSerial() (*big.Int, error) {
	// 128 random bits, as CAs use, so serials never collide.
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

// parseHost returns h as an IP or as a lower-cased DNS name (a leading "*."
// wildcard label allowed).
func parseHost(h string) (net.IP, string, error) {
	h = strings.TrimSpace(h)
	if h == "" {
		return nil, "", fmt.Errorf("host is empty: %w", ErrInvalidHost)
	}
	if ip := net.ParseIP(h); ip != nil {
		return ip, "", nil
	}
	name := strings.ToLower(strings.TrimSuffix(h, "."))
	rest, _ := strings.CutPrefix(name, "*.")
	if len(name) > 253 || rest == "" {
		return nil, "", fmt.Errorf("host %q: not an IP address or DNS name: %w", h, ErrInvalidHost)
	}
	for _, label := range strings.Split(rest, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return nil, "", fmt.Errorf("host %q: bad DNS label %q: %w", h, label, ErrInvalidHost)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return nil, "", fmt.Errorf("host %q: %q is not allowed in a DNS name: %w", h, c, ErrInvalidHost)
			}
		}
	}
	return nil, name, nil
}

// loadCA reads the CA certificate and key from dir. ca.pem may be a bundle
// (during a CA rotation); the certificate used is the one matching the key.
func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("%w in %s: %w", ErrNoCA, dir, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("%w in %s: %w", ErrNoCA, dir, err)
	}
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	for _, c := range certs {
		if c.IsCA && publicKeyEqual(c.PublicKey, key.Public()) {
			return c, key, nil
		}
	}
	return nil, nil, fmt.Errorf("%s: no CA certificate matches the key in %s: %w", certPath, keyPath, ErrBadMaterial)
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// parseCerts decodes a PEM bundle of one or more certificates. Anything but
// CERTIFICATE blocks, or stray text after the last block, is an error: a
// truncated or mixed-up file must not half-load.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q: %w", block.Type, ErrBadMaterial)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadMaterial, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("no PEM certificate: %w", ErrBadMaterial)
	}
	if len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("stray data after the last PEM block: %w", ErrBadMaterial)
	}
	return certs, nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM key: %w", ErrBadMaterial)
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q: %w", block.Type, ErrBadMaterial)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadMaterial, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign: %w", key, ErrBadMaterial)
	}
	return s, nil
}

// absent fails with ErrExists if any of paths exists.
func absent(paths ...string) error {
	for _, p := range paths {
		_, err := os.Lstat(p)
		switch {
		case err == nil:
			return fmt.Errorf("%s: %w (refusing to overwrite)", p, ErrExists)
		case !errors.Is(err, fs.ErrNotExist):
			return err
		}
	}
	return nil
}

// writePair writes the key (mode 0600) then the certificate (0644), each
// under a temporary name linked into place, so no reader sees a partial file
// and an existing file is never replaced. If the certificate cannot be
// written the key is removed again.
func writePair(certPath string, der []byte, keyPath string, key crypto.Signer) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		_ = os.Remove(keyPath)
		return err
	}
	return nil
}

func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Link, unlike rename, fails when the target exists.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w (refusing to overwrite)", path, ErrExists)
		}
		return err
	}
	return nil
}
