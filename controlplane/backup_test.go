package controlplane_test

import (
	"errors"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/controlplanetest"
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

func TestRestoreRefusesHeadersThatLie(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{})
	register(t, c, 0, "p1")
	stream, err := c.Admin(0).SaveSnapshot(ctxT(t), &berthv1.SaveSnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h, data, err := save(stream)
	if err != nil {
		t.Fatal(err)
	}
	send := func(h *berthv1.BackupHeader, data []byte) error {
		rs, err := c.Admin(0).RestoreSnapshot(ctxT(t))
		if err != nil {
			return err
		}
		_ = rs.Send(&berthv1.RestoreSnapshotRequest{Header: h, Data: data, Force: true})
		_, err = rs.CloseAndRecv()
		return err
	}
	for name, hdr := range map[string]*berthv1.BackupHeader{
		"a gigabyte promised": {FormatVersion: h.FormatVersion, Size: 1 << 30, Sha256: h.Sha256},
		"past the limit":      {FormatVersion: h.FormatVersion, Size: 1<<30 + 1, Sha256: h.Sha256},
		"shorter than sent":   {FormatVersion: h.FormatVersion, Size: h.Size - 1, Sha256: h.Sha256},
		"no checksum":         {FormatVersion: h.FormatVersion, Size: h.Size},
		"future format":       {FormatVersion: 9, Size: h.Size, Sha256: h.Sha256},
		"none":                nil,
	} {
		if err := send(hdr, data); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: want InvalidArgument, got %v", name, err)
		}
	}
	// Still serving, registry as it was.
	if p, err := getProxy(t, c, 0, "p1", berthv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || p.Id != "p1" {
		t.Fatalf("after the refusals: %v %v", p, err)
	}
}
