package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/token"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func bearer(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// adminAuthCluster starts three nodes with admin auth on and returns them
// with their bootstrap token; configure, if set, adjusts each config.
func adminAuthCluster(t *testing.T, configure func(*controlplane.Config)) (*controlplanetest.Cluster, string) {
	t.Helper()
	boot, _, err := token.NewAdminToken("bootstrap", token.RoleOperate, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bootFile := filepath.Join(t.TempDir(), "bootstrap")
	if err := os.WriteFile(bootFile, []byte(boot+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.AdminAuth = true
		cfg.AdminBootstrapTokenFile = bootFile
		if configure != nil {
			configure(cfg)
		}
	}})
	return c, boot
}

func TestAdminTokensReadOperateAndRevoke(t *testing.T) {
	c, boot := adminAuthCluster(t, nil)
	f := follower(c)
	register(t, c, f, "p1")
	admin := c.Admin(f)
	ctx := ctxT(t)

	if _, err := admin.ClusterStatus(ctx, &berthv1.ClusterStatusRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no token: want Unauthenticated, got %v", err)
	}
	viewer, err := admin.CreateAdminToken(bearer(ctx, boot), &berthv1.CreateAdminTokenRequest{Name: "viewer", Role: "read"})
	if err != nil {
		t.Fatal(err)
	}
	ops, err := admin.CreateAdminToken(bearer(ctx, boot), &berthv1.CreateAdminTokenRequest{Name: "ops", Role: "operate", TtlSeconds: 3600})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitApplied()

	// read: status yes, drain no.
	if _, err := admin.ListProxies(bearer(ctx, viewer.Token), &berthv1.ListProxiesRequest{}); err != nil {
		t.Fatalf("read token listing: %v", err)
	}
	if _, err := admin.DrainProxy(bearer(ctx, viewer.Token), &berthv1.DrainProxyRequest{ProxyId: "p1"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("read token draining: want PermissionDenied, got %v", err)
	}
	// operate: drain yes (on another node: tokens are in the registry).
	if _, err := c.Admin(c.Leader()).DrainProxy(bearer(ctx, ops.Token), &berthv1.DrainProxyRequest{ProxyId: "p1"}); err != nil {
		t.Fatalf("operate token draining: %v", err)
	}
	// A token with the right id and a wrong secret is refused.
	forged := viewer.Token[:len(viewer.Token)-4] + "AAAA"
	if _, err := admin.ListProxies(bearer(ctx, forged), &berthv1.ListProxiesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("forged token: want Unauthenticated, got %v", err)
	}
	// The registry keeps no secrets: listing shows no hash.
	list, err := admin.ListAdminTokens(bearer(ctx, ops.Token), &berthv1.ListAdminTokensRequest{Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil || len(list.Tokens) != 2 {
		t.Fatalf("list: %v %v", list, err)
	}
	for _, tk := range list.Tokens {
		if tk.Hash != "" {
			t.Fatalf("hash exposed: %v", tk)
		}
	}
	// Revoked: refused once this node has applied the revocation.
	if _, err := admin.RevokeAdminToken(bearer(ctx, ops.Token), &berthv1.RevokeAdminTokenRequest{TokenId: viewer.Record.Id}); err != nil {
		t.Fatal(err)
	}
	c.WaitApplied()
	if _, err := admin.ListProxies(bearer(ctx, viewer.Token), &berthv1.ListProxiesRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("revoked token: want Unauthenticated, got %v", err)
	}
}

// TestRevokedAdminTokenRefusedByACutOffNode: a node that cannot learn of a
// revocation (cut off from the others) must not go on accepting the token
// from its own replica. It cannot check the token at all, so it answers
// Unavailable; the bootstrap token still works there.
func TestRevokedAdminTokenRefusedByACutOffNode(t *testing.T) {
	c, boot := adminAuthCluster(t, func(cfg *controlplane.Config) { cfg.ApplyLimit.Timeout = 3 * time.Second })
	ctx := ctxT(t)
	leader := c.Leader()
	ops, err := c.Admin(leader).CreateAdminToken(bearer(ctx, boot), &berthv1.CreateAdminTokenRequest{Name: "ops", Role: "operate"})
	if err != nil {
		t.Fatal(err)
	}
	c.WaitApplied()
	f := follower(c)
	if _, err := c.Admin(f).ListProxies(bearer(ctx, ops.Token), &berthv1.ListProxiesRequest{}); err != nil {
		t.Fatalf("token before the revoke: %v", err)
	}

	c.Isolate(f)
	if _, err := c.Admin(leader).RevokeAdminToken(bearer(ctx, boot), &berthv1.RevokeAdminTokenRequest{TokenId: ops.Record.Id}); err != nil {
		t.Fatal(err)
	}
	for i := range c.Len() {
		_, err := c.Admin(i).ListProxies(bearer(ctx, ops.Token), &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_STALE})
		if err == nil {
			t.Fatalf("node %d (cut off: %v) accepted the revoked token", i, i == f)
		}
		want := codes.Unauthenticated
		if i == f {
			want = codes.Unavailable
		}
		if status.Code(err) != want {
			t.Fatalf("node %d: want %v, got %v", i, want, err)
		}
	}
	if _, err := c.Admin(f).ListProxies(bearer(ctx, boot), &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_STALE}); err != nil {
		t.Fatalf("bootstrap token on the cut-off node: %v", err)
	}

	// Healed, the node learns of the revocation and says so.
	c.Heal(f)
	controlplanetest.Eventually(t, 30*time.Second, func() error {
		_, err := c.Admin(f).ListProxies(bearer(ctx, ops.Token), &berthv1.ListProxiesRequest{})
		if status.Code(err) != codes.Unauthenticated {
			return fmt.Errorf("healed node: want Unauthenticated, got %v", err)
		}
		return nil
	})
}
