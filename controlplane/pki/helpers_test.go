package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testLogger sends logs to t.Log and also keeps them for assertions.
type testLogger struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func newTestLogger(t *testing.T) (*slog.Logger, *testLogger) {
	t.Helper()
	l := &testLogger{t: t}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug})), l
}

func (l *testLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (l *testLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// newCA creates a CA in a fresh directory and returns the directory.
func newCA(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := CreateCA(dir, name, 0); err != nil {
		t.Fatalf("CreateCA: %v", err)
	}
	return dir
}

// issue creates a certificate for role/name (hosts localhost and 127.0.0.1)
// in a fresh directory and returns Files pointing at it and caFile.
func issue(t *testing.T, caDir string, role Role, name string, caFile string) Files {
	t.Helper()
	out := t.TempDir()
	if err := CreateCert(caDir, out, role, name, []string{"localhost", "127.0.0.1"}, 0); err != nil {
		t.Fatalf("CreateCert %s/%s: %v", role, name, err)
	}
	cert, key := CertFiles(out, name)
	return Files{CA: caFile, Cert: cert, Key: key}
}

func caFile(caDir string) string { return filepath.Join(caDir, CACertFile) }

// bundle concatenates CA files into a new file and returns its path.
func bundle(t *testing.T, caDirs ...string) string {
	t.Helper()
	var all []byte
	for _, d := range caDirs {
		b, err := os.ReadFile(caFile(d))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	p := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(p, all, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// replace atomically replaces dst with the contents of src, the way a
// deployment tool rotates a file.
func replace(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, dst, b)
}

func writeAtomic(t *testing.T, dst string, b []byte) {
	t.Helper()
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// installFiles copies a Files set to stable paths in a new directory, so
// tests can later replace them in place.
func installFiles(t *testing.T, f Files) Files {
	t.Helper()
	dir := t.TempDir()
	out := Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	replace(t, f.CA, out.CA)
	replace(t, f.Cert, out.Cert)
	replace(t, f.Key, out.Key)
	return out
}

// rotate replaces the files of dst with those of src.
func rotate(t *testing.T, src, dst Files) {
	t.Helper()
	if src.CA != "" {
		replace(t, src.CA, dst.CA)
	}
	if src.Cert != "" {
		replace(t, src.Cert, dst.Cert)
		replace(t, src.Key, dst.Key)
	}
}

func newTestReloader(t *testing.T, f Files) (*Reloader, *testLogger) {
	t.Helper()
	logger, logs := newTestLogger(t)
	r, err := NewReloader(f, logger)
	if err != nil {
		t.Fatalf("NewReloader: %v", err)
	}
	t.Cleanup(r.Close)
	return r, logs
}

func serialOf(t *testing.T, certFile string) *big.Int {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certFile, strings.TrimSuffix(certFile, ".pem")+"-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	return pair.Leaf.SerialNumber
}

// signCustom signs tmpl with the CA in caDir, for certificates CreateCert
// would refuse to make (no identity, several identities...). It returns a
// certificate file and key file.
func signCustom(t *testing.T, caDir string, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	}
	if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "custom.pem"), filepath.Join(dir, "custom-key.pem")
	if err := writePair(certFile, der, keyFile, key); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("url %q: %v", s, err)
	}
	return u
}

// tlsServer accepts connections on 127.0.0.1, runs the server handshake
// with cfg, answers "ok" on success, and reports each outcome on results.
type tlsServer struct {
	addr    string
	results chan serverResult
}

type serverResult struct {
	state tls.ConnectionState
	err   error
}

func startServer(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsServer{addr: ln.Addr().String(), results: make(chan serverResult, 64)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := tls.Server(c, cfg)
				err := tc.Handshake()
				if err == nil {
					_, err = tc.Write([]byte("ok"))
				}
				s.results <- serverResult{state: tc.ConnectionState(), err: err}
				if err == nil {
					// Wait for the client to hang up so "ok" is read, not reset.
					_, _ = io.Copy(io.Discard, tc)
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return s
}

// dial connects with cfg, completes the handshake and reads the server's
// "ok" (in TLS 1.3 the server's verdict on the client certificate arrives
// only after the client's handshake returns). It returns the client's state
// and error and the server's outcome.
func (s *tlsServer) dial(t *testing.T, cfg *tls.Config) (tls.ConnectionState, error, serverResult) {
	t.Helper()
	var state tls.ConnectionState
	raw, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, cfg)
	err = c.Handshake()
	if err == nil {
		buf := make([]byte, 2)
		_, err = io.ReadFull(c, buf)
		if err == nil && string(buf) != "ok" {
			err = errors.New("unexpected reply " + string(buf))
		}
		state = c.ConnectionState()
	}
	_ = c.Close()
	select {
	case res := <-s.results:
		return state, err, res
	case <-time.After(10 * time.Second):
		t.Fatal("no server result")
		return state, err, serverResult{}
	}
}

// expectAccepted dials and requires both sides to succeed; it returns the
// server certificate the client saw and the server's state.
func (s *tlsServer) expectAccepted(t *testing.T, cfg *tls.Config) (*x509.Certificate, tls.ConnectionState) {
	t.Helper()
	state, err, res := s.dial(t, cfg)
	if err != nil || res.err != nil {
		t.Fatalf("handshake: client error %v, server error %v", err, res.err)
	}
	return state.PeerCertificates[0], res.state
}

// expectRejected dials and requires the handshake to fail on both sides; it
// returns the server's error.
func (s *tlsServer) expectRejected(t *testing.T, cfg *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	_, err, res := s.dial(t, cfg)
	if err == nil || res.err == nil {
		t.Fatalf("handshake should fail: client error %v, server error %v", err, res.err)
	}
	t.Logf("rejected as expected: client: %v; server: %v", err, res.err)
	return err, res.err
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pemCert is the first certificate in a PEM file.
func pemCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
