package controlplane_test

import (
	"errors"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// save reads a whole SaveSnapshot stream: the header and the data.
func save(stream berthv1.AdminService_SaveSnapshotClient) (*berthv1.BackupHeader, []byte, error) {
	var (
		h    *berthv1.BackupHeader
		data []byte
	)
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return h, data, nil
		}
		if err != nil {
			return nil, nil, err
		}
		if m.Header != nil {
			h = m.Header
		}
		data = append(data, m.Data...)
	}
}

func TestBackupAndProxyRemovalNeedTheOperateRole(t *testing.T) {
	c, boot := adminAuthCluster(t, nil)
	register(t, c, 0, "p1")
	ctx := ctxT(t)
	f := follower(c)
	admin := c.Admin(f)
	viewer, err := admin.CreateAdminToken(bearer(ctx, boot), &berthv1.CreateAdminTokenRequest{Name: "viewer", Role: "read"})
	if err != nil {
		t.Fatal(err)
	}

	stream, err := admin.SaveSnapshot(bearer(ctx, viewer.Token), &berthv1.SaveSnapshotRequest{})
	if err == nil {
		_, _, err = save(stream)
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("save with a read token: want PermissionDenied, got %v", err)
	}
	if _, err := admin.RemoveProxy(bearer(ctx, viewer.Token), &berthv1.RemoveProxyRequest{ProxyId: "p1"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("remove with a read token: want PermissionDenied, got %v", err)
	}

	stream, err = admin.SaveSnapshot(bearer(ctx, boot), &berthv1.SaveSnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h, data, err := save(stream)
	if err != nil || h == nil || uint64(len(data)) != h.Size || h.Counts.GetProxies() != 1 || h.Counts.GetAdminTokens() != 1 {
		t.Fatalf("save with an operate token: %v, %d bytes, %v", h, len(data), err)
	}

	restore := func(tok string, force bool) error {
		rs, err := admin.RestoreSnapshot(bearer(ctx, tok))
		if err != nil {
			return err
		}
		if err := rs.Send(&berthv1.RestoreSnapshotRequest{Header: h, Data: data, Force: force}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		_, err = rs.CloseAndRecv()
		return err
	}
	if err := restore(viewer.Token, true); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("restore with a read token: want PermissionDenied, got %v", err)
	}
	// Through a follower, without TLS: the leader sees the caller's token.
	if err := restore(boot, false); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("restore over a registry: want FailedPrecondition, got %v", err)
	}
	if err := restore(boot, true); err != nil {
		t.Fatalf("forced restore with an operate token: %v", err)
	}
	// The restored registry still knows the read token.
	if _, err := admin.ListProxies(bearer(ctx, viewer.Token), &berthv1.ListProxiesRequest{}); err != nil {
		t.Fatalf("read token after the restore: %v", err)
	}
}
