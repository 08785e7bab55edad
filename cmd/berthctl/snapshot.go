package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/berthhq/berth/controlplane/backup"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func (a *app) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Back up the registry to a file, or restore it into a cluster",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(a.snapshotSaveCmd(), a.snapshotRestoreCmd())
	return cmd
}

func (a *app) snapshotSaveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "save <file>",
		Short: "Save a consistent copy of the registry to a file",
		Long: `Save a copy of the whole registry (proxies, connections, moves, endpoints,
admin token records, every object with its version) taken at a
linearizable read point: it holds every write acknowledged before the
command started. The file is written next to <file> and renamed into place
once complete and checked, so <file> is never half written. Needs an
operate token when admin auth is on (the copy holds admin token records).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				stream, err := admin.SaveSnapshot(ctx, &berthv1.SaveSnapshotRequest{})
				if err != nil {
					return callFailed("save snapshot", err)
				}
				h, err := writeBackup(args[0], func() (*berthv1.SaveSnapshotResponse, error) {
					c, err := stream.Recv()
					if err != nil && !errors.Is(err, io.EOF) {
						return nil, callFailed("save snapshot", err)
					}
					return c, err
				})
				if err != nil {
					return err
				}
				return a.printer.print(h, func(tw *tabwriter.Writer) {
					c := h.GetCounts()
					_, _ = fmt.Fprintf(tw, "saved the registry at index %d (served by %s) to %s\n", h.GetIndex(), h.GetServedBy(), args[0])
					row(tw, "PROXIES", "CONNECTIONS", "MOVES", "ADMIN TOKENS", "SIZE", "SHA-256")
					row(tw, uint64s(c.GetProxies()), uint64s(c.GetConnections()), uint64s(c.GetMoves()), uint64s(c.GetAdminTokens()),
						bytesIEC(h.GetSize()), fmt.Sprintf("%x", h.GetSha256()))
				})
			})
		},
	}
}

// writeBackup writes the chunks recv returns (header first, io.EOF after
// the last) to path through a temporary file in the same directory,
// checks length and checksum, and renames it into place.
func writeBackup(path string, recv func() (*berthv1.SaveSnapshotResponse, error)) (_ *berthv1.BackupHeader, err error) {
	first, err := recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("save snapshot: the server sent nothing")
		}
		return nil, err
	}
	h := first.GetHeader()
	if err := backup.CheckHeader(h); err != nil {
		return nil, fmt.Errorf("save snapshot: the server sent %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-*")
	if err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := backup.WriteHeader(tmp, h); err != nil {
		return nil, err
	}
	sum := sha256.New()
	w := io.MultiWriter(tmp, sum)
	var size uint64
	for chunk := first; ; {
		if _, err := w.Write(chunk.GetData()); err != nil {
			return nil, fmt.Errorf("save snapshot: %w", err)
		}
		size += uint64(len(chunk.GetData()))
		if chunk, err = recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, err
		}
	}
	if err := backup.Verify(h, size, sum.Sum(nil)); err != nil {
		return nil, fmt.Errorf("save snapshot: what arrived is not what the server described: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	return h, nil
}

func (a *app) snapshotRestoreCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "restore <file>",
		Short: "Restore a saved registry into a cluster (disaster recovery)",
		Long: `Restore a registry saved with 'snapshot save' into the cluster: every
proxy, connection, move, endpoint and admin token record comes back with
its version. The cluster keeps its own control-plane members. The file is
checked first (magic, length, checksum) and again by the leader (every
record); a refused file changes nothing. Only a cluster whose registry is
empty accepts it, unless --force: then the registry is replaced. Needs an
operate token when admin auth is on.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			h, err := checkBackupFile(args[0])
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			defer f.Close()
			if _, err := backup.ReadHeader(f); err != nil {
				return fmt.Errorf("restore: %s: %w", args[0], err)
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				stream, err := admin.RestoreSnapshot(ctx)
				if err != nil {
					return callFailed("restore snapshot", err)
				}
				buf := make([]byte, 1<<20)
				chunk := &berthv1.RestoreSnapshotRequest{Header: h, Force: force}
				for {
					n, rerr := io.ReadFull(f, buf)
					if n > 0 || chunk.Header != nil {
						chunk.Data = buf[:n]
						if err := stream.Send(chunk); err != nil {
							break // the server ended the call; CloseAndRecv says why
						}
						chunk = &berthv1.RestoreSnapshotRequest{}
					}
					if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
						break
					}
					if rerr != nil {
						return fmt.Errorf("restore: %w", rerr)
					}
				}
				resp, err := stream.CloseAndRecv()
				if err != nil {
					return callFailed("restore snapshot", err)
				}
				return a.printer.print(resp, func(tw *tabwriter.Writer) {
					c := resp.GetCounts()
					saved := time.UnixMilli(h.GetCreatedUnixMs()).UTC().Format(time.RFC3339)
					_, _ = fmt.Fprintf(tw, "restored %s (saved %s at index %d); the registry now starts at index %d (served by %s)\n",
						args[0], saved, h.GetIndex(), resp.GetIndex(), resp.GetServedBy())
					row(tw, "PROXIES", "CONNECTIONS", "MOVES", "ADMIN TOKENS")
					row(tw, uint64s(c.GetProxies()), uint64s(c.GetConnections()), uint64s(c.GetMoves()), uint64s(c.GetAdminTokens()))
				})
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace a registry that is not empty")
	return cmd
}

// checkBackupFile reads the whole file and checks its header, length and
// checksum, so a damaged copy is refused before anything is sent.
func checkBackupFile(path string) (*berthv1.BackupHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	h, err := backup.VerifyFile(f)
	if err != nil {
		return nil, fmt.Errorf("restore: %s: %w (nothing was sent)", path, err)
	}
	return h, nil
}
