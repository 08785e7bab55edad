package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/console"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// metrics are one node's Prometheus instruments, on the node's own registry.
type metrics struct {
	applyDuration     prometheus.Histogram
	applyErrors       prometheus.Counter
	batchSize         prometheus.Histogram
	forwarded         prometheus.Counter
	forwardBatchSize  prometheus.Histogram
	leadershipChanges prometheus.Counter
	watchResets       prometheus.Counter
	sessions          prometheus.Gauge
	rpcs              *prometheus.CounterVec
	moves             *prometheus.CounterVec
	denied            *prometheus.CounterVec
	moveDuration      prometheus.Histogram
	imbalance         prometheus.Gauge
	targets           *prometheus.GaugeVec
	movesInFlight     prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry, n *Node) *metrics {
	f := func(name, help string, fn func() float64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "cp", Name: name, Help: help}, fn)
	}
	m := &metrics{
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "cp", Name: "apply_duration_seconds",
			Help:    "Time from proposing a command to its result, including forwarding.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "cp", Name: "proposal_batch_size",
			Help:    "Commands coalesced into one log entry (batches of two or more).",
			Buckets: prometheus.ExponentialBuckets(2, 2, 10),
		}),
		forwardBatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "cp", Name: "forward_batch_size",
			Help:    "Writes a follower sent to the leader in one ApplyBatch call.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		applyErrors:       prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "cp", Name: "apply_errors_total", Help: "Proposals that failed to commit (refusals excluded)."}),
		forwarded:         prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "cp", Name: "forwarded_writes_total", Help: "Writes forwarded to the leader."}),
		leadershipChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "cp", Name: "leadership_changes_total", Help: "Times this node gained or lost leadership."}),
		watchResets:       prometheus.NewCounter(prometheus.CounterOpts{Namespace: "berth", Subsystem: "cp", Name: "watch_resets_total", Help: "Watch subscriptions reset for falling behind."}),
		sessions:          prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "cp", Name: "proxy_sessions", Help: "Proxy session streams open on this node."}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "cp", Name: "denied_calls_total",
			Help: "Calls refused because the caller's certificate role may not make them, by role."}, []string{"role"}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "cp", Name: "moves_total",
			Help: "Moves this node issued as leader (started) and saw finish (completed, aborted), by reason."}, []string{"event", "reason"}),
		moveDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "berth", Subsystem: "cp", Name: "move_duration_seconds",
			Help: "From a move's creation to its completion.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 12)}),
		imbalance: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "cp", Name: "imbalance_ratio",
			Help: "max |connections - target| / target over schedulable proxies, at the last planning round."}),
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "cp", Name: "grpc_requests_total", Help: "Unary gRPC requests by method and code."}, []string{"method", "code"}),
		targets: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "cp", Name: "proxy_target_connections",
			Help: "Each eligible proxy's target connection count at the last planning round (leader; stale on followers, filter by is_leader)."}, []string{"proxy"}),
		movesInFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "cp", Name: "moves_in_flight",
			Help: "Moves pending or accepted at the last planning round (leader; stale on followers, filter by is_leader)."}),
	}
	reg.MustRegister(m.targets, m.movesInFlight)
	reg.MustRegister(m.applyDuration, m.batchSize, m.applyErrors, m.denied, m.moves, m.moveDuration, m.imbalance, m.forwarded, m.forwardBatchSize, m.leadershipChanges, m.watchResets, m.sessions, m.rpcs,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		f("is_leader", "1 when this node is the Raft leader.", func() float64 {
			if n.raft.State() == raft.Leader {
				return 1
			}
			return 0
		}),
		f("raft_term", "Current Raft term.", func() float64 { return float64(n.raft.CurrentTerm()) }),
		f("raft_commit_index", "Raft commit index.", func() float64 { return float64(n.raft.CommitIndex()) }),
		f("raft_last_index", "Last Raft log index.", func() float64 { return float64(n.raft.LastIndex()) }),
		f("applied_index", "Index the registry FSM has applied.", func() float64 { return float64(n.fsm.AppliedIndex()) }),
		f("broker_subscribers", "Event subscribers on this node.", func() float64 { return float64(n.broker.Stats().Subscribers) }),
		newRegistryCollector(n.fsm),
	)
	return m
}

// observeRound records a planning round's targets (replacing the last
// round's, so proxies no longer eligible drop out) and open moves.
func (m *metrics) observeRound(targets map[string]float64, moves []*berthv1.Move) {
	m.targets.Reset()
	for id, t := range targets {
		m.targets.WithLabelValues(id).Set(t)
	}
	open := 0
	for _, mv := range moves {
		if mv.State == berthv1.MoveState_MOVE_STATE_PENDING || mv.State == berthv1.MoveState_MOVE_STATE_ACCEPTED {
			open++
		}
	}
	m.movesInFlight.Set(float64(open))
}

func (m *metrics) observeApply(d time.Duration, err error) {
	m.applyDuration.Observe(d.Seconds())
	if err != nil {
		m.applyErrors.Inc()
	}
}

func (m *metrics) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	m.rpcs.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

// registryCollector reports the registry's size from the FSM at scrape time.
type registryCollector struct {
	fsm      *fsm.FSM
	proxies  *prometheus.Desc
	objects  *prometheus.Desc
	perProxy *prometheus.Desc
}

func newRegistryCollector(f *fsm.FSM) *registryCollector {
	return &registryCollector{
		fsm:      f,
		proxies:  prometheus.NewDesc("berth_registry_proxies", "Proxies by status.", []string{"status"}, nil),
		objects:  prometheus.NewDesc("berth_registry_objects", "Registry objects by kind.", []string{"kind"}, nil),
		perProxy: prometheus.NewDesc("berth_registry_proxy_connections", "Connections each proxy holds.", []string{"proxy"}, nil),
	}
}

func (c *registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.proxies
	ch <- c.objects
	ch <- c.perProxy
}

func (c *registryCollector) Collect(ch chan<- prometheus.Metric) {
	byStatus := make(map[berthv1.ProxyStatus]int)
	perProxy := map[string]int{}
	var counts fsm.Counts
	c.fsm.View(func(s *fsm.State, _ uint64) {
		counts = s.Counts()
		ps, _ := s.ListProxies(fsm.ProxyFilter{}, "", 0)
		for _, p := range ps {
			byStatus[p.Status]++
			perProxy[p.Id] = s.ConnectionCount(p.Id)
		}
	})
	for id, n := range perProxy {
		ch <- prometheus.MustNewConstMetric(c.perProxy, prometheus.GaugeValue, float64(n), id)
	}
	for v, name := range berthv1.ProxyStatus_name {
		if v == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.proxies, prometheus.GaugeValue, float64(byStatus[berthv1.ProxyStatus(v)]), name)
	}
	for kind, v := range map[string]int{"proxy": counts.Proxies, "connection": counts.Connections, "move": counts.Moves, "endpoint": counts.Endpoints, "server": counts.Servers} {
		ch <- prometheus.MustNewConstMetric(c.objects, prometheus.GaugeValue, float64(v), kind)
	}
}

// serveHTTP serves /metrics, /healthz (the process is up), /readyz (the
// node knows a leader and can serve default reads) and the web console
// (/ui, reading through the node's own AdminService), plus debug's handlers.
func (n *Node) serveHTTP(reg *prometheus.Registry, debug func(*http.ServeMux), logger *slog.Logger) error {
	self, err := n.peers.admin(n.cfg.grpcAdvertise())
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	ui, err := console.New(console.Default(), self, logger)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		return err
	}
	n.httpLn = ln
	mux := http.NewServeMux()
	ui.Register(mux)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if id, _ := n.leader(); id == "" {
			http.Error(w, "no leader known", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	if debug != nil {
		debug(mux)
	}
	// Requests end with the node, so the console's watches do not hold up
	// the gRPC server's graceful stop.
	n.httpServer = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return n.ctx }}
	n.goRun("http", func() {
		if err := n.httpServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("http server stopped", "err", err)
		}
	})
	return nil
}
