package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
)

// The data-plane suite's core paths with TLS everywhere: mutual TLS in
// the control plane, proxies holding proxy certificates on their control
// plane sessions and peer links, agents on TLS tunnels with tokens.
func TestDataPlaneWithTLSEverywhere(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{TLS: true})
	up := dataplanetest.Upstream(t, "svc")
	demo := startDemo(t)
	echo := startTCPEcho(t)
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"web": up, "ws": demo, "tcp": echo})
	e.WaitConnections("web", 1)
	c := httpClient(t)
	expectBody(t, e, c, 0, "web", "/local", "svc /local")
	expectBody(t, e, c, 1, "web", "/forwarded", "svc /forwarded") // over a TLS peer link
	ws := dialWebSocket(t, "ws://"+e.DownstreamAddr(1)+"/ws", "ws.berth.test")
	if got := ws("over tls"); got != "over tls" {
		t.Fatalf("websocket: %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := agent.DialEndpoint(ctx, e.DownstreamAddr(1), "tcp", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "ping\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("tcp: %q %v", buf, err)
	}

	// Only proxy certificates open peer links.
	t.Run("client certificate on the peer port", func(t *testing.T) {
		r, err := pki.NewReloader(e.CP.Files(pki.RoleClient, "mallory"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		conn, err := tls.Dial("tcp", e.Proxy(0).PeerAddr(), r.ClientConfig("", pki.RoleProxy))
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("want the handshake refused, got %v", err)
		}
	})
	// An agent without TLS cannot speak to the tunnel port.
	t.Run("plaintext agent on the TLS tunnel port", func(t *testing.T) {
		a := e.Agent("plain", e.TunnelAddrs()[:1], map[string]string{"web": up}, func(cfg *agent.Config) { cfg.TLS = nil })
		controlplanetest.Eventually(t, 10*time.Second, func() error {
			if a.Status().LastError == "" {
				return fmt.Errorf("no dial has failed yet")
			}
			return nil
		})
		if a.Status().Connected {
			t.Fatal("a plaintext agent got a tunnel on a TLS port")
		}
	})
}

// presentedSerial is the serial of the certificate addr presents now.
func presentedSerial(t *testing.T, addr string, roots *x509.CertPool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestCertificateRotationUnderTraffic(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{TLS: true})
	up := dataplanetest.Upstream(t, "svc")
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"web": up})
	e.WaitConnections("web", 1)
	c := httpClient(t)
	expectBody(t, e, c, 1, "web", "/warm", "svc /warm")
	caPEM, err := os.ReadFile(filepath.Join(e.CP.PKIDir, pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	before := presentedSerial(t, e.TunnelAddrs()[1], roots)

	tr := startTraffic(t, e, "web", 4)
	// Reissue proxy-1's certificate and swap the files in place.
	files := e.CP.Files(pki.RoleProxy, "proxy-1")
	fresh := t.TempDir()
	if err := pki.CreateCert(e.CP.PKIDir, fresh, pki.RoleProxy, "proxy-1", []string{"127.0.0.1", "localhost"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	cert, key := pki.CertFiles(fresh, "proxy-1")
	if err := os.Rename(key, files.Key); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(cert, files.Cert); err != nil {
		t.Fatal(err)
	}
	// New handshakes present the new certificate, without a restart.
	controlplanetest.Eventually(t, 30*time.Second, func() error {
		if now := presentedSerial(t, e.TunnelAddrs()[1], roots); now == before {
			return fmt.Errorf("still serial %s", now)
		}
		return nil
	})
	// A tunnel opened after the rotation works, and so does everything
	// that was running across it.
	e.Agent("a2", e.TunnelAddrs()[1:], map[string]string{"api": up})
	e.WaitConnections("api", 1)
	expectBody(t, e, c, 0, "api", "/after", "svc /after")
	tr.finish(t)
}
