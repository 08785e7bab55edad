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
	var w drainWait
	cmd := &cobra.Command{
		Use:   "drain <proxy-id>",
		Short: "Move every connection off a proxy (make-before-break)",
		Long: `Move every connection off a proxy (make-before-break). Prints the proxy as
the control plane committed it. With --wait, then polls until the proxy
holds no connection, showing the connections left and the moves in flight
(a bar on a terminal, a line per change otherwise). --timeout bounds each
call; --wait-timeout bounds the whole wait (0: until done or interrupted).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.TrimSpace(args[0])
			if id == "" {
				return errors.New("proxy id must not be empty")
			}
			if w.timeout < 0 {
				return fmt.Errorf("wait-timeout: must not be negative, got %s", w.timeout)
			}
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				ctx, cancel := a.callContext(cmd.Context())
				resp, err := admin.DrainProxy(ctx, &berthv1.DrainProxyRequest{ProxyId: id})
				cancel()
				if err != nil {
					return callFailed("drain "+id, err)
				}
				p := resp.GetProxy()
				if err := a.printer.print(p, func(tw *tabwriter.Writer) { proxyTable(tw, []*berthv1.Proxy{p}, nil) }); err != nil {
					return err
				}
				if !w.enabled {
					return nil
				}
				return a.waitEmpty(cmd.Context(), admin, id, w)
			})
		},
	}
	cmd.Flags().BoolVar(&w.enabled, "wait", false, "wait until the proxy holds no connection")
	cmd.Flags().DurationVar(&w.timeout, "wait-timeout", 0, "give up waiting after this long (0: no limit; each poll is bounded by --timeout)")
	cmd.Flags().DurationVar(&w.interval, "wait-interval", time.Second, "how often to poll while waiting")
	return cmd
}

func (a *app) proxyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Manage proxy records",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "remove <proxy-id>",
		Short: "Forget a proxy that is down",
		Long: `Forget a proxy that is gone for good. Only a DOWN proxy (silent past the
control plane's down timeout) that holds no connection and takes part in
no unfinished move can be removed; anything else is refused, so a live
proxy cannot be removed by mistake. A removed proxy that comes back simply
registers again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.TrimSpace(args[0])
			if id == "" {
				return errors.New("proxy id must not be empty")
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				resp, err := admin.RemoveProxy(ctx, &berthv1.RemoveProxyRequest{ProxyId: id})
				if err != nil {
					return callFailed("remove proxy "+id, err)
				}
				return a.done(resp, fmt.Sprintf("removed proxy %s at index %d", id, resp.GetIndex()))
			})
		},
	})
	return cmd
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
