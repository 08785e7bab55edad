package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// authAdmin answers only calls that carry the expected bearer token.
type authAdmin struct {
	berthv1.UnimplementedAdminServiceServer
	token string
}

func (s *authAdmin) ClusterStatus(ctx context.Context, _ *berthv1.ClusterStatusRequest) (*berthv1.ClusterStatusResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+s.token {
		return nil, status.Errorf(codes.Unauthenticated, "authorization = %q", got)
	}
	return &berthv1.ClusterStatusResponse{ServedBy: "tls"}, nil
}

// testCA writes a CA certificate to dir and returns a server certificate
// for 127.0.0.1 signed by it.
func testCA(t *testing.T, dir string) (caFile string, serverCert tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "berth test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "berthd"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
}

func TestTLSAndToken(t *testing.T) {
	dir := t.TempDir()
	caFile, cert := testCA(t, dir)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})))
	berthv1.RegisterAdminServiceServer(srv, &authAdmin{token: "s3cret"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})

	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(lis.Addr().String())
	cfg.TLS = TLSConfig{CAFile: caFile}
	cfg.TokenFile = tokenFile
	c := newClient(t, cfg)
	if got := servedBy(t, c); got != "tls" {
		t.Fatalf("served by %q", got)
	}

	// Plaintext against a TLS server fails, and is not retried forever.
	cfg.TLS = TLSConfig{Insecure: true}
	cfg.Retries = 0
	plain := newClient(t, cfg)
	if _, err := plain.Admin().ClusterStatus(t.Context(), &berthv1.ClusterStatusRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext to TLS server: err = %v, want Unavailable", err)
	}
}
