package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// cluster is one CA with a server-side reloader listening on 127.0.0.1.
type cluster struct {
	caDir  string
	server *Reloader
	files  Files // the server's files, at stable paths
	logs   *testLogger
}

func newCluster(t *testing.T, serverRole Role, allowed ...Role) (*cluster, *tlsServer) {
	t.Helper()
	caDir := newCA(t, "Cluster CA")
	files := installFiles(t, issue(t, caDir, serverRole, "cp0", caFile(caDir)))
	r, logs := newTestReloader(t, files)
	return &cluster{caDir: caDir, server: r, files: files, logs: logs}, startServer(t, r.ServerConfig(allowed...))
}

// client returns a reloader-backed client config for role/name from caDir
// that trusts trust (a CA file or bundle).
func client(t *testing.T, caDir string, role Role, name, trust string, allowed ...Role) *tls.Config {
	t.Helper()
	r, _ := newTestReloader(t, issue(t, caDir, role, name, trust))
	return r.ClientConfig("", allowed...)
}

func TestServerConfigAdmitsOnlyAllowedRole(t *testing.T) {
	c, srv := newCluster(t, RoleServer, RoleServer)

	t.Run("server accepted", func(t *testing.T) {
		_, st := srv.expectAccepted(t, client(t, c.caDir, RoleServer, "cp1", caFile(c.caDir), RoleServer))
		id, err := PeerIdentity(st)
		if err != nil || id != (Identity{RoleServer, "cp1"}) {
			t.Fatalf("PeerIdentity = %v, %v", id, err)
		}
	})
	t.Run("proxy rejected", func(t *testing.T) {
		_, serverErr := srv.expectRejected(t, client(t, c.caDir, RoleProxy, "edge-1", caFile(c.caDir)))
		if !errors.Is(serverErr, ErrWrongRole) {
			t.Fatalf("server error %v, want ErrWrongRole", serverErr)
		}
		for _, want := range []string{`role "proxy"`, "berth://proxy/edge-1", "allowed: server"} {
			if !strings.Contains(serverErr.Error(), want) {
				t.Errorf("server error %q does not mention %q", serverErr, want)
			}
		}
	})
	t.Run("other CA rejected", func(t *testing.T) {
		other := newCA(t, "Other CA")
		// The intruder trusts our CA so the rejection is the server's doing.
		_, serverErr := srv.expectRejected(t, client(t, other, RoleServer, "cp9", bundle(t, c.caDir, other)))
		var unknown x509.UnknownAuthorityError
		if !errors.As(serverErr, &unknown) {
			t.Fatalf("server error %v, want x509.UnknownAuthorityError", serverErr)
		}
	})
	t.Run("no client certificate rejected", func(t *testing.T) {
		pool := x509.NewCertPool()
		pool.AddCert(pemCert(t, caFile(c.caDir)))
		_, serverErr := srv.expectRejected(t, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if !strings.Contains(serverErr.Error(), "certificate") {
			t.Fatalf("server error %v", serverErr)
		}
	})
	t.Run("certificate without identity rejected", func(t *testing.T) {
		certFile, keyFile := signCustom(t, c.caDir, &x509.Certificate{DNSNames: []string{"localhost"}})
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		_, serverErr := srv.expectRejected(t, &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true})
		if !errors.Is(serverErr, ErrNoIdentity) {
			t.Fatalf("server error %v, want ErrNoIdentity", serverErr)
		}
	})
	t.Run("plaintext rejected", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", srv.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		reply, _ := io.ReadAll(conn)
		res := <-srv.results
		if res.err == nil || strings.Contains(string(reply), "ok") {
			t.Fatalf("plaintext accepted: server error %v, reply %q", res.err, reply)
		}
		t.Logf("server: %v", res.err)
	})
}

func TestServerConfigAnyRole(t *testing.T) {
	c, srv := newCluster(t, RoleServer)
	for _, role := range Roles() {
		_, st := srv.expectAccepted(t, client(t, c.caDir, role, "n-"+string(role), caFile(c.caDir)))
		if id, err := PeerIdentity(st); err != nil || id.Role != role {
			t.Fatalf("PeerIdentity = %v, %v", id, err)
		}
	}
}

func TestServerConfigSeveralRoles(t *testing.T) {
	c, srv := newCluster(t, RoleServer, RoleServer, RoleProxy)
	srv.expectAccepted(t, client(t, c.caDir, RoleProxy, "p1", caFile(c.caDir)))
	_, serverErr := srv.expectRejected(t, client(t, c.caDir, RoleClient, "alice", caFile(c.caDir)))
	if !errors.Is(serverErr, ErrWrongRole) || !strings.Contains(serverErr.Error(), "allowed: server, proxy") {
		t.Fatalf("server error %v", serverErr)
	}
}

func TestClientConfigChecksServer(t *testing.T) {
	// The listener holds a proxy certificate and admits any role.
	c, srv := newCluster(t, RoleProxy)
	r, _ := newTestReloader(t, issue(t, c.caDir, RoleProxy, "edge-2", caFile(c.caDir)))

	got, _ := srv.expectAccepted(t, r.ClientConfig("", RoleProxy))
	if id, err := IdentityOf(got); err != nil || id != (Identity{RoleProxy, "cp0"}) {
		t.Fatalf("server identity %v, %v", id, err)
	}
	srv.expectAccepted(t, r.ClientConfig("localhost", RoleProxy))
	srv.expectAccepted(t, r.ClientConfig("127.0.0.1"))

	clientErr, _ := srv.expectRejected(t, r.ClientConfig("", RoleServer))
	if !errors.Is(clientErr, ErrWrongRole) || !strings.Contains(clientErr.Error(), `role "proxy"`) ||
		!strings.Contains(clientErr.Error(), "allowed: server") {
		t.Fatalf("client error %v, want ErrWrongRole naming the roles", clientErr)
	}
	clientErr, _ = srv.expectRejected(t, r.ClientConfig("cp0.elsewhere.example", RoleProxy))
	var host x509.HostnameError
	if !errors.As(clientErr, &host) {
		t.Fatalf("client error %v, want x509.HostnameError", clientErr)
	}

	// A server from another CA is refused even though its role fits.
	_, otherSrv := newCluster(t, RoleProxy)
	clientErr, _ = otherSrv.expectRejected(t, r.ClientConfig("", RoleProxy))
	var unknown x509.UnknownAuthorityError
	if !errors.As(clientErr, &unknown) {
		t.Fatalf("client error %v, want x509.UnknownAuthorityError", clientErr)
	}
}

func TestReloadNewCertificate(t *testing.T) {
	c, srv := newCluster(t, RoleServer, RoleServer)
	cli := client(t, c.caDir, RoleServer, "cp1", caFile(c.caDir), RoleServer)

	before, _ := srv.expectAccepted(t, cli)
	if before.SerialNumber.Cmp(c.server.Certificate().SerialNumber) != 0 {
		t.Fatal("served certificate is not the reloader's")
	}
	next := issue(t, c.caDir, RoleServer, "cp0", caFile(c.caDir))
	rotate(t, Files{Cert: next.Cert, Key: next.Key}, c.files)
	if err := c.server.Reload(); err != nil {
		t.Fatal(err)
	}
	after, _ := srv.expectAccepted(t, cli)
	want := serialOf(t, next.Cert)
	if after.SerialNumber.Cmp(want) != 0 || after.SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Fatalf("after rotation the server presents serial %s, want %s (was %s)", after.SerialNumber, want, before.SerialNumber)
	}
	// The client side rotates the same way.
	cr, _ := newTestReloader(t, installFiles(t, issue(t, c.caDir, RoleServer, "cp1", caFile(c.caDir))))
	cfg := cr.ClientConfig("")
	_, st := srv.expectAccepted(t, cfg)
	first := st.PeerCertificates[0].SerialNumber
	nextClient := issue(t, c.caDir, RoleServer, "cp1", caFile(c.caDir))
	rotate(t, Files{Cert: nextClient.Cert, Key: nextClient.Key}, cr.files)
	if err := cr.Reload(); err != nil {
		t.Fatal(err)
	}
	_, st = srv.expectAccepted(t, cfg)
	if got := st.PeerCertificates[0].SerialNumber; got.Cmp(serialOf(t, nextClient.Cert)) != 0 || got.Cmp(first) == 0 {
		t.Fatalf("client presents serial %s after rotation", got)
	}
}

func TestReloaderWatchesFiles(t *testing.T) {
	caDir := newCA(t, "")
	files := installFiles(t, issue(t, caDir, RoleProxy, "p1", caFile(caDir)))
	logger, _ := newTestLogger(t)
	r, err := newReloader(files, logger, 10*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	srv := startServer(t, r.ServerConfig())
	cli := client(t, caDir, RoleClient, "alice", caFile(caDir))

	next := issue(t, caDir, RoleProxy, "p1", caFile(caDir))
	want := serialOf(t, next.Cert)
	rotate(t, next, files)
	eventually(t, 5*time.Second, func() bool { return r.Certificate().SerialNumber.Cmp(want) == 0 })
	if got, _ := srv.expectAccepted(t, cli); got.SerialNumber.Cmp(want) != 0 {
		t.Fatalf("serial %s, want %s", got.SerialNumber, want)
	}
}

func TestCARotationWithOverlap(t *testing.T) {
	c, srv := newCluster(t, RoleServer, RoleServer, RoleProxy)
	ca1 := c.caDir
	ca2 := newCA(t, "CA 2")

	// Client A: CA 1 certificate, trusts CA 1 only (for now).
	aFiles := installFiles(t, issue(t, ca1, RoleProxy, "a", caFile(ca1)))
	a, _ := newTestReloader(t, aFiles)
	aCfg := a.ClientConfig("localhost", RoleServer)
	// Client B: already on CA 2, trusts both.
	b, _ := newTestReloader(t, issue(t, ca2, RoleProxy, "b", bundle(t, ca1, ca2)))
	bCfg := b.ClientConfig("localhost", RoleServer)

	srv.expectAccepted(t, aCfg)
	srv.expectRejected(t, bCfg) // the server does not trust CA 2 yet

	// Step 1: the server trusts both CAs.
	rotate(t, Files{CA: bundle(t, ca1, ca2)}, c.files)
	if err := c.server.Reload(); err != nil {
		t.Fatal(err)
	}
	srv.expectAccepted(t, aCfg)
	srv.expectAccepted(t, bCfg)

	// Step 2: the server moves to a CA 2 certificate. A must trust CA 2
	// first; until it does, it refuses the server.
	next := issue(t, ca2, RoleServer, "cp0", "")
	rotate(t, Files{Cert: next.Cert, Key: next.Key}, c.files)
	if err := c.server.Reload(); err != nil {
		t.Fatal(err)
	}
	clientErr, _ := srv.expectRejected(t, aCfg)
	var unknown x509.UnknownAuthorityError
	if !errors.As(clientErr, &unknown) {
		t.Fatalf("client error %v, want x509.UnknownAuthorityError", clientErr)
	}
	rotate(t, Files{CA: bundle(t, ca1, ca2)}, aFiles)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	got, _ := srv.expectAccepted(t, aCfg) // old-CA peer, during the overlap
	if got.SerialNumber.Cmp(serialOf(t, next.Cert)) != 0 {
		t.Fatal("server does not present its CA 2 certificate")
	}
	srv.expectAccepted(t, bCfg) // new-CA peer, during the overlap

	// Step 3: the overlap ends; CA 1 certificates are refused.
	rotate(t, Files{CA: caFile(ca2)}, c.files)
	if err := c.server.Reload(); err != nil {
		t.Fatal(err)
	}
	_, serverErr := srv.expectRejected(t, aCfg)
	if !errors.As(serverErr, &unknown) {
		t.Fatalf("server error %v, want x509.UnknownAuthorityError", serverErr)
	}
	srv.expectAccepted(t, bCfg)
}

func TestBadFilesKeepOldMaterial(t *testing.T) {
	c, srv := newCluster(t, RoleServer)
	cli := client(t, c.caDir, RoleClient, "alice", caFile(c.caDir))
	want := c.server.Certificate().SerialNumber
	good := Files{}
	good.Cert, good.Key = c.files.Cert+".good", c.files.Key+".good"
	good.CA = c.files.CA + ".good"
	replace(t, c.files.Cert, good.Cert)
	replace(t, c.files.Key, good.Key)
	replace(t, c.files.CA, good.CA)

	other := newCA(t, "Other")
	foreign := issue(t, other, RoleServer, "cp0", "")
	noID, noIDKey := signCustom(t, c.caDir, &x509.Certificate{DNSNames: []string{"localhost"}})
	mismatched := issue(t, c.caDir, RoleServer, "cp0", "")
	leafAsCA := issue(t, c.caDir, RoleServer, "x", "")

	tests := []struct {
		name    string
		corrupt func(t *testing.T)
	}{
		{"garbage certificate", func(t *testing.T) { writeAtomic(t, c.files.Cert, []byte("not a certificate")) }},
		{"truncated certificate", func(t *testing.T) {
			b, _ := os.ReadFile(good.Cert)
			writeAtomic(t, c.files.Cert, b[:len(b)/2])
		}},
		{"garbage key", func(t *testing.T) {
			writeAtomic(t, c.files.Key, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
		}},
		{"key of another certificate", func(t *testing.T) { replace(t, mismatched.Cert, c.files.Cert) }},
		{"certificate from another CA", func(t *testing.T) { rotate(t, Files{Cert: foreign.Cert, Key: foreign.Key}, c.files) }},
		{"certificate without identity", func(t *testing.T) {
			replace(t, noID, c.files.Cert)
			replace(t, noIDKey, c.files.Key)
		}},
		{"garbage CA", func(t *testing.T) { writeAtomic(t, c.files.CA, []byte("junk")) }},
		{"CA with trailing junk", func(t *testing.T) {
			b, _ := os.ReadFile(good.CA)
			writeAtomic(t, c.files.CA, append(b, "-----BEGIN CERT"...))
		}},
		{"leaf in the CA file", func(t *testing.T) { replace(t, leafAsCA.Cert, c.files.CA) }},
		{"CA file removed", func(t *testing.T) {
			if err := os.Remove(c.files.CA); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.corrupt(t)
			if err := c.server.Reload(); err == nil {
				t.Fatal("Reload accepted bad files")
			} else {
				t.Log(err)
			}
			got, _ := srv.expectAccepted(t, cli)
			if got.SerialNumber.Cmp(want) != 0 {
				t.Fatalf("serial %s after a bad reload, want the old %s", got.SerialNumber, want)
			}
			rotate(t, good, c.files)
			if err := c.server.Reload(); err != nil {
				t.Fatalf("restoring good files: %v", err)
			}
		})
	}
	if !strings.Contains(c.logs.String(), "TLS reload failed") {
		t.Fatalf("bad files were not logged:\n%s", c.logs)
	}
}

func TestReloaderLogsABadFileOnce(t *testing.T) {
	caDir := newCA(t, "")
	files := installFiles(t, issue(t, caDir, RoleProxy, "p1", caFile(caDir)))
	logger, logs := newTestLogger(t)
	r, err := newReloader(files, logger, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	writeAtomic(t, files.Cert, []byte("junk"))
	eventually(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "TLS reload failed") })
	// Many ticks later: still one report, still the old certificate.
	next := issue(t, caDir, RoleProxy, "p1", caFile(caDir))
	for range 3 {
		_ = r.check(false)
	}
	if n := strings.Count(logs.String(), "TLS reload failed"); n != 1 {
		t.Fatalf("%d reports of one bad file", n)
	}
	rotate(t, next, files)
	want := serialOf(t, next.Cert)
	eventually(t, 5*time.Second, func() bool { return r.Certificate().SerialNumber.Cmp(want) == 0 })
}
