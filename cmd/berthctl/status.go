package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// readFlags are the flags every registry read takes.
type readFlags struct {
	consistency string
	pageSize    uint32
}

func (r *readFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&r.consistency, "consistency", "default",
		"read consistency: "+strings.Join(consistencies.names, ", "))
	cmd.Flags().Uint32Var(&r.pageSize, "page-size", 0, "items per request (0: server default); every page is fetched")
}

func (r *readFlags) parse() (berthv1.Consistency, error) {
	n, err := consistencies.parse(r.consistency)
	if err != nil {
		return 0, err
	}
	return berthv1.Consistency(n), nil
}

func (a *app) statusCmd() *cobra.Command {
	subjects := []string{"cluster", "proxies", "endpoints", "connections", "moves"}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster and the registry",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown status subject %q: valid subjects are %s", args[0], strings.Join(subjects, ", "))
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(
		a.statusClusterCmd(),
		a.statusProxiesCmd(),
		a.statusEndpointsCmd(),
		a.statusConnectionsCmd(),
		a.statusMovesCmd(),
	)
	return cmd
}

func (a *app) statusClusterCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cluster",
		Short: "Show the leader, Raft indexes and every control-plane server",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				resp, err := admin.ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
				if err != nil {
					return callFailed("cluster status", err)
				}
				return a.printer.print(resp, func(tw *tabwriter.Writer) { a.clusterTable(tw, resp) })
			})
		},
	}
}

func (a *app) clusterTable(tw *tabwriter.Writer, resp *berthv1.ClusterStatusResponse) {
	leader := resp.GetLeaderId()
	if leader == "" {
		leader = "none"
	}
	if addr := resp.GetLeaderAddress(); addr != "" {
		leader += " (" + addr + ")"
	}
	row(tw, "LEADER:", leader)
	row(tw, "TERM:", uint64s(resp.GetTerm()))
	row(tw, "COMMIT INDEX:", uint64s(resp.GetCommitIndex()))
	row(tw, "APPLIED INDEX:", uint64s(resp.GetAppliedIndex()))
	row(tw, "SERVED BY:", resp.GetServedBy())
	_ = tw.Flush()
	_, _ = fmt.Fprintln(tw)
	row(tw, "ID", "RAFT ADDRESS", "GRPC ADDRESS", "SUFFRAGE", "STATE", "HEALTHY", "TERM", "COMMIT", "APPLIED", "LAST CONTACT", "ERROR")
	for _, s := range resp.GetServers() {
		contact := "-"
		if s.GetState() != "Leader" && s.GetLastContactMs() > 0 {
			contact = shortDuration(time.Duration(s.GetLastContactMs())*time.Millisecond) + " ago"
		}
		row(tw, s.GetId(), s.GetRaftAddress(), s.GetGrpcAddress(), enumName(s.GetSuffrage()), s.GetState(),
			yesNo(s.GetHealthy()), uint64s(s.GetTerm()), uint64s(s.GetCommitIndex()), uint64s(s.GetAppliedIndex()),
			contact, s.GetError())
	}
}

func (a *app) statusProxiesCmd() *cobra.Command {
	var (
		read     readFlags
		statuses []string
		region   string
	)
	cmd := &cobra.Command{
		Use:   "proxies",
		Short: "List proxies with their status and load",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			consistency, err := read.parse()
			if err != nil {
				return err
			}
			filter, err := parseEnumFlag[berthv1.ProxyStatus](cmd, "status", proxyStatuses, statuses)
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				all := &berthv1.ListProxiesResponse{Load: map[string]*berthv1.LoadSample{},
					TargetConnections: map[string]float64{}, ConnectionCounts: map[string]uint32{}}
				err := pages(func(token string) (string, error) {
					resp, err := admin.ListProxies(ctx, &berthv1.ListProxiesRequest{
						Consistency: consistency,
						Statuses:    filter,
						Region:      region,
						PageSize:    read.pageSize,
						PageToken:   token,
					})
					if err != nil {
						return "", callFailed("list proxies", err)
					}
					all.Proxies = append(all.Proxies, resp.GetProxies()...)
					for id, l := range resp.GetLoad() {
						all.Load[id] = l
					}
					for id, v := range resp.GetTargetConnections() {
						all.TargetConnections[id] = v
					}
					for id, v := range resp.GetConnectionCounts() {
						all.ConnectionCounts[id] = v
					}
					all.Header = resp.GetHeader()
					return resp.GetNextPageToken(), nil
				})
				if err != nil {
					return err
				}
				a.logRead(all.GetHeader(), len(all.GetProxies()))
				return a.printer.print(all, func(tw *tabwriter.Writer) { balanceTable(tw, all) })
			})
		},
	}
	read.register(cmd)
	cmd.Flags().StringSliceVar(&statuses, "status", nil,
		"only proxies in these statuses, comma-separated: "+strings.Join(proxyStatuses.names, ", "))
	cmd.Flags().StringVar(&region, "region", "", "only proxies in this region")
	return cmd
}

// balanceTable is the per-proxy balance view: the registry's connections
// against the planner's weighted target, then load as last sampled.
func balanceTable(tw *tabwriter.Writer, r *berthv1.ListProxiesResponse) {
	row(tw, "ID", "REGION", "ZONE", "STATUS", "WEIGHT", "CONNECTIONS", "TARGET", "STREAMS", "CPU", "MEMORY", "VERSION")
	for _, p := range r.GetProxies() {
		target := "-"
		if t, ok := r.GetTargetConnections()[p.GetId()]; ok {
			target = strconv.FormatFloat(t, 'f', 1, 64)
		}
		streams, cpu, mem := "-", "-", "-"
		if l, ok := r.GetLoad()[p.GetId()]; ok {
			streams = strconv.FormatUint(uint64(l.GetActiveStreams()), 10)
			cpu = fmt.Sprintf("%dm", l.GetCpuMillicores())
			mem = bytesIEC(l.GetMemoryBytes())
		}
		row(tw, p.GetId(), p.GetRegion(), p.GetZone(), enumName(p.GetStatus()),
			strconv.FormatUint(uint64(p.GetCapacityWeight()), 10),
			strconv.FormatUint(uint64(r.GetConnectionCounts()[p.GetId()]), 10), target, streams, cpu, mem, uint64s(p.GetVersion()))
	}
}

// proxyTable prints proxies, with load columns when any load is known.
func proxyTable(tw *tabwriter.Writer, proxies []*berthv1.Proxy, load map[string]*berthv1.LoadSample) {
	header := []string{"ID", "REGION", "ZONE", "STATUS", "ADMIN", "HEALTH", "WEIGHT", "ADDRESSES", "VERSION"}
	if len(load) > 0 {
		header = append(header, "CONNECTIONS", "STREAMS", "CPU", "MEMORY")
	}
	row(tw, header...)
	for _, p := range proxies {
		cells := []string{
			p.GetId(), p.GetRegion(), p.GetZone(), enumName(p.GetStatus()), enumName(p.GetAdminState()),
			enumName(p.GetHealth()), strconv.FormatUint(uint64(p.GetCapacityWeight()), 10),
			addresses(p.GetAddresses()), uint64s(p.GetVersion()),
		}
		if len(load) > 0 {
			if l, ok := load[p.GetId()]; ok {
				cells = append(cells,
					strconv.FormatUint(uint64(l.GetConnections()), 10),
					strconv.FormatUint(uint64(l.GetActiveStreams()), 10),
					fmt.Sprintf("%dm", l.GetCpuMillicores()),
					bytesIEC(l.GetMemoryBytes()))
			} else {
				cells = append(cells, "-", "-", "-", "-")
			}
		}
		row(tw, cells...)
	}
}

func addresses(a *berthv1.ProxyAddresses) string {
	var parts []string
	for _, kv := range [][2]string{{"tunnel", a.GetTunnel()}, {"downstream", a.GetDownstream()}, {"peer", a.GetPeer()}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	return joinOr(parts)
}

func (a *app) statusEndpointsCmd() *cobra.Command {
	var (
		read  readFlags
		proxy string
	)
	cmd := &cobra.Command{
		Use:   "endpoints",
		Short: "List endpoints and the proxies serving them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			consistency, err := read.parse()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				all := &berthv1.ListEndpointsResponse{}
				err := pages(func(token string) (string, error) {
					resp, err := admin.ListEndpoints(ctx, &berthv1.ListEndpointsRequest{
						Consistency: consistency,
						ProxyId:     proxy,
						PageSize:    read.pageSize,
						PageToken:   token,
					})
					if err != nil {
						return "", callFailed("list endpoints", err)
					}
					all.Endpoints = append(all.Endpoints, resp.GetEndpoints()...)
					all.Connectivity = append(all.Connectivity, resp.GetConnectivity()...)
					all.Header = resp.GetHeader()
					return resp.GetNextPageToken(), nil
				})
				if err != nil {
					return err
				}
				a.logRead(all.GetHeader(), len(all.GetEndpoints()))
				return a.printer.print(all, func(tw *tabwriter.Writer) {
					// Each proxy's aggregate connectivity (gRPC ring_hash rules)
					// as its last load sample reported it.
					states := map[string][]string{}
					for _, c := range all.GetConnectivity() {
						st := strings.ToLower(strings.TrimPrefix(c.GetState().String(), "CONNECTIVITY_STATE_"))
						states[c.GetEndpoint()] = append(states[c.GetEndpoint()], c.GetProxyId()+"="+st)
					}
					row(tw, "NAME", "CONNECTIONS", "PROXIES", "STATE", "VERSION")
					for _, e := range all.GetEndpoints() {
						sort.Strings(states[e.GetName()])
						row(tw, e.GetName(), strconv.FormatUint(uint64(e.GetConnectionCount()), 10),
							joinOr(e.GetProxyIds()), joinOr(states[e.GetName()]), uint64s(e.GetVersion()))
					}
				})
			})
		},
	}
	read.register(cmd)
	cmd.Flags().StringVar(&proxy, "proxy", "", "only endpoints served by this proxy")
	return cmd
}

func (a *app) statusConnectionsCmd() *cobra.Command {
	var (
		read     readFlags
		proxy    string
		endpoint string
	)
	cmd := &cobra.Command{
		Use:   "connections",
		Short: "List agent connections and the proxies holding them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			consistency, err := read.parse()
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				all := &berthv1.ListConnectionsResponse{}
				err := pages(func(token string) (string, error) {
					resp, err := admin.ListConnections(ctx, &berthv1.ListConnectionsRequest{
						Consistency: consistency,
						ProxyId:     proxy,
						Endpoint:    endpoint,
						PageSize:    read.pageSize,
						PageToken:   token,
					})
					if err != nil {
						return "", callFailed("list connections", err)
					}
					all.Connections = append(all.Connections, resp.GetConnections()...)
					all.Header = resp.GetHeader()
					return resp.GetNextPageToken(), nil
				})
				if err != nil {
					return err
				}
				a.logRead(all.GetHeader(), len(all.GetConnections()))
				now := a.now()
				return a.printer.print(all, func(tw *tabwriter.Writer) {
					row(tw, "ID", "SLOT", "AGENT", "ENDPOINTS", "PROXY", "STATE", "MOVE", "AGE", "VERSION")
					for _, c := range all.GetConnections() {
						row(tw, c.GetId(), c.GetSlot(), c.GetAgentId(), joinOr(c.GetEndpoints()), c.GetProxyId(),
							enumName(c.GetState()), c.GetMoveId(), age(now, c.GetOpenedUnixMs()), uint64s(c.GetVersion()))
					}
				})
			})
		},
	}
	read.register(cmd)
	cmd.Flags().StringVar(&proxy, "proxy", "", "only connections held by this proxy")
	cmd.Flags().StringVar(&endpoint, "endpoint", "", "only connections serving this endpoint")
	return cmd
}

func (a *app) statusMovesCmd() *cobra.Command {
	var (
		read   readFlags
		states []string
		proxy  string
	)
	cmd := &cobra.Command{
		Use:   "moves",
		Short: "List connection moves",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			consistency, err := read.parse()
			if err != nil {
				return err
			}
			filter, err := parseEnumFlag[berthv1.MoveState](cmd, "state", moveStates, states)
			if err != nil {
				return err
			}
			ctx, cancel := a.callContext(cmd.Context())
			defer cancel()
			return a.admin(func(admin berthv1.AdminServiceClient) error {
				all := &berthv1.ListMovesResponse{}
				err := pages(func(token string) (string, error) {
					resp, err := admin.ListMoves(ctx, &berthv1.ListMovesRequest{
						Consistency: consistency,
						States:      filter,
						ProxyId:     proxy,
						PageSize:    read.pageSize,
						PageToken:   token,
					})
					if err != nil {
						return "", callFailed("list moves", err)
					}
					all.Moves = append(all.Moves, resp.GetMoves()...)
					all.Header = resp.GetHeader()
					return resp.GetNextPageToken(), nil
				})
				if err != nil {
					return err
				}
				a.logRead(all.GetHeader(), len(all.GetMoves()))
				now := a.now()
				return a.printer.print(all, func(tw *tabwriter.Writer) { moveTable(tw, now, all.GetMoves()) })
			})
		},
	}
	read.register(cmd)
	cmd.Flags().StringSliceVar(&states, "state", nil,
		"only moves in these states, comma-separated: "+strings.Join(moveStates.names, ", "))
	cmd.Flags().StringVar(&proxy, "proxy", "", "only moves leaving or reaching this proxy")
	return cmd
}

func moveTable(tw *tabwriter.Writer, now time.Time, moves []*berthv1.Move) {
	row(tw, "ID", "CONNECTION", "FROM", "TO", "STATE", "REASON", "AGE", "DEADLINE", "DETAIL")
	for _, m := range moves {
		deadline := "-"
		if open := m.GetState() == berthv1.MoveState_MOVE_STATE_PENDING || m.GetState() == berthv1.MoveState_MOVE_STATE_ACCEPTED; open && m.GetDeadlineUnixMs() != 0 {
			if left := time.UnixMilli(m.GetDeadlineUnixMs()).Sub(now); left > 0 {
				deadline = "in " + shortDuration(left)
			} else {
				deadline = "passed"
			}
		}
		var detail []string
		if id := m.GetNewConnectionId(); id != "" {
			detail = append(detail, "new connection "+id)
		}
		if r := m.GetAbortReason(); r != "" {
			detail = append(detail, "aborted: "+r)
		}
		row(tw, m.GetId(), m.GetConnectionId(), m.GetFromProxyId(), m.GetToProxyId(), enumName(m.GetState()),
			m.GetReason(), age(now, m.GetCreatedUnixMs()), deadline, strings.Join(detail, "; "))
	}
}

// pages calls fetch with each page token in turn, starting with none, until
// a page has no next token. A token seen twice stops it, so a server bug
// cannot loop forever.
func pages(fetch func(token string) (next string, err error)) error {
	var token string
	seen := make(map[string]bool)
	for {
		next, err := fetch(token)
		if err != nil {
			return err
		}
		if next == "" {
			return nil
		}
		if seen[next] {
			return fmt.Errorf("server repeated page token %q; stopping", next)
		}
		seen[next] = true
		token = next
	}
}

func (a *app) logRead(h *berthv1.ReadHeader, n int) {
	a.logger.Debug("read served", "served_by", h.GetServedBy(), "index", h.GetIndex(), "items", n)
}
