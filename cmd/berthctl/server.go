package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func (a *app) serverCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "server",
		Short: "List and change the control plane's Raft members",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(a.serverListCmd(), a.serverAddCmd(), a.serverRemoveCmd(), a.serverTransferCmd())
	return cmd
}

func (a *app) serverListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List every control-plane server with its Raft state and health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				resp, err := admin.ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
				if err != nil {
					return callFailed("list servers", err)
				}
				list := &berthv1.ClusterStatusResponse{LeaderId: resp.GetLeaderId(), Servers: resp.GetServers(), ServedBy: resp.GetServedBy()}
				return a.printer.print(list, func(tw *tabwriter.Writer) { serverTable(tw, resp) })
			})
		},
	}
}

func serverTable(tw *tabwriter.Writer, resp *berthv1.ClusterStatusResponse) {
	row(tw, "ID", "LEADER", "RAFT ADDRESS", "GRPC ADDRESS", "SUFFRAGE", "STATE", "HEALTHY", "APPLIED", "LAST CONTACT", "ERROR")
	for _, s := range resp.GetServers() {
		contact := "-"
		if s.GetState() != "Leader" && s.GetLastContactMs() > 0 {
			contact = shortDuration(time.Duration(s.GetLastContactMs())*time.Millisecond) + " ago"
		}
		lead := ""
		if s.GetId() == resp.GetLeaderId() {
			lead = "*"
		}
		row(tw, s.GetId(), lead, s.GetRaftAddress(), s.GetGrpcAddress(), enumName(s.GetSuffrage()), s.GetState(),
			yesNo(s.GetHealthy()), uint64s(s.GetAppliedIndex()), contact, s.GetError())
	}
}

func (a *app) serverAddCmd() *cobra.Command {
	var (
		raftAddr, grpcAddr string
		nonvoter           bool
	)
	cmd := &cobra.Command{
		Use:   "add <server-id> --raft-addr HOST:PORT --grpc-addr HOST:PORT",
		Short: "Add a server to the Raft configuration (the node must be running)",
		Long: `Add a server to the Raft configuration and record its addresses in the
registry. The new node must already run with an empty data dir and those
addresses; it catches up from the leader. Adding a member that exists with
the same addresses only refreshes its record; a member with the same id or
Raft address is replaced.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.TrimSpace(args[0])
			if id == "" {
				return errors.New("server id must not be empty")
			}
			if raftAddr == "" || grpcAddr == "" {
				return errors.New("--raft-addr and --grpc-addr are required")
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				req := &berthv1.AddServerRequest{Server: &berthv1.Server{Id: id, RaftAddress: raftAddr, GrpcAddress: grpcAddr}, Nonvoter: nonvoter}
				if _, err := admin.AddServer(ctx, req); err != nil {
					return callFailed("add server "+id, err)
				}
				kind := "voter"
				if nonvoter {
					kind = "non-voter"
				}
				return a.done(req, fmt.Sprintf("added server %s (%s, raft %s, grpc %s)", id, kind, raftAddr, grpcAddr))
			})
		},
	}
	cmd.Flags().StringVar(&raftAddr, "raft-addr", "", "the server's Raft address (host:port)")
	cmd.Flags().StringVar(&grpcAddr, "grpc-addr", "", "the server's gRPC address (host:port)")
	cmd.Flags().BoolVar(&nonvoter, "nonvoter", false, "add as a non-voter (replicates, does not count toward quorum)")
	return cmd
}

func (a *app) serverRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "remove <server-id>",
		Short: "Remove a server from the Raft configuration",
		Long: `Remove a server from the Raft configuration and its record from the
registry. Removing the leader makes it step down; a new leader is elected
among the others. Keep a majority of the remaining voters running.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.TrimSpace(args[0])
			if id == "" {
				return errors.New("server id must not be empty")
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				req := &berthv1.RemoveServerRequest{ServerId: id}
				if _, err := admin.RemoveServer(ctx, req); err != nil {
					return callFailed("remove server "+id, err)
				}
				return a.done(req, "removed server "+id)
			})
		},
	}
}

func (a *app) serverTransferCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "transfer-leader [server-id]",
		Short: "Hand leadership to a server (or, without one, to the most up-to-date follower)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var id string
			if len(args) == 1 {
				if id = strings.TrimSpace(args[0]); id == "" {
					return errors.New("server id must not be empty")
				}
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				resp, err := admin.TransferLeadership(ctx, &berthv1.TransferLeadershipRequest{ServerId: id})
				if err != nil {
					return callFailed("transfer leadership", err)
				}
				if resp.LeaderId == "" {
					// The old leader answers before it hears from the new one.
					resp.LeaderId = a.awaitLeader(ctx, admin)
				}
				leader := resp.GetLeaderId()
				if leader == "" {
					leader = "(not yet known)"
				}
				return a.done(resp, "leadership transferred; leader is now "+leader)
			})
		},
	}
}

// awaitLeader polls the cluster status until some node names a leader,
// or ctx ends ("").
func (a *app) awaitLeader(ctx context.Context, admin berthv1.AdminServiceClient) string {
	for {
		if st, err := admin.ClusterStatus(ctx, &berthv1.ClusterStatusRequest{}); err == nil && st.GetLeaderId() != "" {
			return st.GetLeaderId()
		}
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// done prints a command's outcome: the message for the table format, m
// (the request or response) as JSON or YAML.
func (a *app) done(m proto.Message, msg string) error {
	return a.printer.print(m, func(tw *tabwriter.Writer) { _, _ = fmt.Fprintln(tw, msg) })
}
