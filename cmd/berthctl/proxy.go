package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// proxyAction is an admin-state change on one proxy that returns the proxy.
type proxyAction func(ctx context.Context, admin berthv1.AdminServiceClient, id string) (*berthv1.Proxy, error)

func (a *app) cordonCmd() *cobra.Command {
	return a.proxyActionCmd("cordon", "Stop placing new connections on a proxy",
		func(ctx context.Context, admin berthv1.AdminServiceClient, id string) (*berthv1.Proxy, error) {
			resp, err := admin.CordonProxy(ctx, &berthv1.CordonProxyRequest{ProxyId: id})
			return resp.GetProxy(), err
		})
}

func (a *app) uncordonCmd() *cobra.Command {
	return a.proxyActionCmd("uncordon", "Let a cordoned or draining proxy take connections again",
		func(ctx context.Context, admin berthv1.AdminServiceClient, id string) (*berthv1.Proxy, error) {
			resp, err := admin.UncordonProxy(ctx, &berthv1.UncordonProxyRequest{ProxyId: id})
			return resp.GetProxy(), err
		})
}

func (a *app) drainCmd() *cobra.Command {
	var wait bool
	cmd := a.proxyActionCmd("drain", "Move every connection off a proxy (make-before-break)",
		func(ctx context.Context, admin berthv1.AdminServiceClient, id string) (*berthv1.Proxy, error) {
			resp, err := admin.DrainProxy(ctx, &berthv1.DrainProxyRequest{ProxyId: id})
			if err != nil || !wait {
				return resp.GetProxy(), err
			}
			return resp.GetProxy(), a.waitEmpty(ctx, admin, id)
		})
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the proxy holds no connection (bounded by --timeout)")
	return cmd
}

// waitEmpty polls until proxy id holds no connection, reporting progress.
func (a *app) waitEmpty(ctx context.Context, admin berthv1.AdminServiceClient, id string) error {
	last := -1
	for {
		resp, err := admin.ListConnections(ctx, &berthv1.ListConnectionsRequest{ProxyId: id, PageSize: 1000})
		if err != nil {
			if ctx.Err() != nil && last >= 0 {
				// The deadline ran out during the poll, not before it.
				return fmt.Errorf("drain %s: %d connection(s) left: %w", id, last, ctx.Err())
			}
			return callFailed("list connections of "+id, err)
		}
		n := len(resp.GetConnections())
		if n == 0 {
			fmt.Fprintf(a.stderr, "%s holds no connections\n", id)
			return nil
		}
		if n != last {
			fmt.Fprintf(a.stderr, "%s still holds %d connection(s)\n", id, n)
			last = n
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain %s: %d connection(s) left: %w", id, n, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (a *app) rebalanceCmd() *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "rebalance",
		Short: "Ask the leader to plan moves now (or, with --dry-run, show the plan with reasons)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				resp, err := admin.Rebalance(ctx, &berthv1.RebalanceRequest{DryRun: dryRun})
				if err != nil {
					return callFailed("rebalance", err)
				}
				return a.printer.print(resp, func(tw *tabwriter.Writer) {
					verb := "committed"
					if dryRun {
						verb = "planned (dry run, nothing committed)"
					}
					fmt.Fprintf(tw, "%d move(s) %s; imbalance %.2f\n\n", len(resp.GetMoves()), verb, resp.GetImbalance())
					row(tw, "MOVE", "CONNECTION", "FROM", "TO", "REASON")
					for _, m := range resp.GetMoves() {
						row(tw, m.GetId(), m.GetConnectionId(), m.GetFromProxyId(), m.GetToProxyId(), m.GetReason())
					}
				})
			})
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and commit nothing")
	return cmd
}

func (a *app) proxyActionCmd(verb, short string, do proxyAction) *cobra.Command {
	return &cobra.Command{
		Use:   verb + " <proxy-id>",
		Short: short,
		Long:  short + ". Prints the proxy as the control plane committed it.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.TrimSpace(args[0])
			if id == "" {
				return errors.New("proxy id must not be empty")
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				p, err := do(ctx, admin, id)
				if err != nil {
					return callFailed(verb+" "+id, err)
				}
				return a.printer.print(p, func(tw *tabwriter.Writer) { proxyTable(tw, []*berthv1.Proxy{p}, nil) })
			})
		},
	}
}
