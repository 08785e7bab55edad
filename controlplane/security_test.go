package controlplane_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/pki"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestMutualTLSClusterWithRoles(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{TLS: true})
	f := follower(c)
	ctx := ctxT(t)

	// A proxy certificate registers (forwarded to the leader over TLS); an
	// operator's client certificate reads it back linearizably elsewhere.
	asProxy := berthv1.NewRegistryServiceClient(c.DialAs(f, pki.RoleProxy, "edge-1"))
	if _, err := asProxy.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: testProxy("p1")}); err != nil {
		t.Fatalf("proxy register over mTLS: %v", err)
	}
	asClient := berthv1.NewAdminServiceClient(c.DialAs(c.Leader(), pki.RoleClient, "alice"))
	got, err := asClient.GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: "p1", Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil || got.Proxy.Id != "p1" {
		t.Fatalf("client read over mTLS: %v %v", got, err)
	}

	denied := []struct {
		name string
		call func() error
	}{
		{"proxy calls an internal RPC", func() error {
			_, err := berthv1.NewClusterServiceClient(c.DialAs(f, pki.RoleProxy, "edge-1")).NodeInfo(ctx, &berthv1.NodeInfoRequest{})
			return err
		}},
		{"proxy tries to join Raft through the API", func() error {
			_, err := berthv1.NewClusterServiceClient(c.DialAs(f, pki.RoleProxy, "edge-1")).Join(ctx, &berthv1.JoinRequest{Server: &berthv1.Server{Id: "evil", RaftAddress: "127.0.0.1:1", GrpcAddress: "127.0.0.1:2"}})
			return err
		}},
		{"client opens a proxy session", func() error {
			_, err := berthv1.NewRegistryServiceClient(c.DialAs(f, pki.RoleClient, "alice")).RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: testProxy("p2")})
			return err
		}},
		{"proxy drains another proxy", func() error {
			_, err := berthv1.NewAdminServiceClient(c.DialAs(f, pki.RoleProxy, "edge-1")).DrainProxy(ctx, &berthv1.DrainProxyRequest{ProxyId: "p1"})
			return err
		}},
	}
	for _, d := range denied {
		t.Run(d.name, func(t *testing.T) {
			err := d.call()
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "role") {
				t.Fatalf("want PermissionDenied naming the role, got %v", err)
			}
		})
	}

	// A proxy certificate cannot get into Raft at the transport either:
	// the Raft port admits server certificates only.
	t.Run("proxy certificate on the Raft port", func(t *testing.T) {
		r, err := pki.NewReloader(c.Files(pki.RoleProxy, "edge-1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		conn, err := tls.Dial("tcp", c.Node(f).RaftAddr(), r.ClientConfig("", pki.RoleServer))
		if err == nil {
			// TLS 1.3: the server's verdict on our certificate arrives
			// with the first read.
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("want the handshake refused, got %v", err)
		}
	})

	t.Run("certificate from another CA", func(t *testing.T) {
		other := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{TLS: true})
		r, err := pki.NewReloader(other.Files(pki.RoleClient, "mallory"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		conn, err := grpc.NewClient("passthrough:///"+c.Addr(f), grpc.WithTransportCredentials(credentials.NewTLS(r.ClientConfig("", pki.RoleServer))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := berthv1.NewAdminServiceClient(conn).ClusterStatus(cctx, &berthv1.ClusterStatusRequest{}); status.Code(err) != codes.Unavailable {
			t.Fatalf("want the connection refused, got %v", err)
		}
	})

	t.Run("plaintext to a TLS port", func(t *testing.T) {
		conn, err := grpc.NewClient("passthrough:///"+c.Addr(f), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := berthv1.NewAdminServiceClient(conn).ClusterStatus(cctx, &berthv1.ClusterStatusRequest{}); status.Code(err) != codes.Unavailable {
			t.Fatalf("want the connection refused, got %v", err)
		}
	})

	// Nothing denied changed the registry.
	list, err := asClient.ListProxies(ctx, &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil || len(list.Proxies) != 1 || list.Proxies[0].Status != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE {
		t.Fatalf("registry after refusals: %v %v", list, err)
	}
	st, err := asClient.ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
	if err != nil || len(st.Servers) != 3 {
		t.Fatalf("membership after refusals: %v %v", st, err)
	}
}
