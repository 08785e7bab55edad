package client

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/berthhq/berth/controlplane/pki"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// With a Berth identity the client accepts only control-plane (server)
// certificates: a proxy certificate posing as the control plane is refused.
func TestClientChecksTheServerRole(t *testing.T) {
	dir := t.TempDir()
	if err := pki.CreateCA(dir, "test", time.Hour); err != nil {
		t.Fatal(err)
	}
	files := func(role pki.Role, name string) pki.Files {
		out := filepath.Join(dir, name)
		if err := pki.CreateCert(dir, out, role, name, []string{"127.0.0.1"}, time.Hour); err != nil {
			t.Fatal(err)
		}
		cert, key := pki.CertFiles(out, name)
		return pki.Files{CA: filepath.Join(dir, pki.CACertFile), Cert: cert, Key: key}
	}
	serve := func(f pki.Files) string {
		r, err := pki.NewReloader(f, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Close)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(r.ServerConfig())))
		berthv1.RegisterAdminServiceServer(srv, &testAdmin{name: "role"})
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(srv.Stop)
		return ln.Addr().String()
	}
	me := files(pki.RoleProxy, "edge")
	call := func(addr string) error {
		cfg := Default()
		cfg.Addrs, cfg.Retries = []string{addr}, 0
		cfg.TLS = TLSConfig{CAFile: me.CA, CertFile: me.Cert, KeyFile: me.Key}
		c, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = c.Admin().ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
		return err
	}
	if err := call(serve(files(pki.RoleServer, "cp0"))); err != nil {
		t.Fatalf("server certificate: %v", err)
	}
	if err := call(serve(files(pki.RoleProxy, "impostor"))); err == nil || !strings.Contains(err.Error(), "role") {
		t.Fatalf("a proxy certificate posing as the control plane: want a role error, got %v", err)
	}
}
