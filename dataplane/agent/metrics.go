package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one agent's Prometheus instruments, on its own registry
// (Agent.Metrics), so agents in one process never share series. The
// tunnel gauges and counters are read from Status at scrape time; stream
// counters are per endpoint, made when the agent is built (its endpoints
// are fixed), so serving a stream looks up nothing.
type metrics struct {
	reg          *prometheus.Registry
	dialErrors   prometheus.Counter
	refused      *prometheus.CounterVec
	byEndpoint   map[string]*endpointMetrics
	bytesByClass *prometheus.CounterVec
}

// endpointMetrics are the counters of one endpoint's streams.
type endpointMetrics struct {
	streams        prometheus.Counter
	upstreamErrors prometheus.Counter
	bytesIn        prometheus.Counter // proxy to local service
	bytesOut       prometheus.Counter // local service to proxy
}

// Stream refusal reasons (the reason label of berth_agent_streams_refused_total).
const (
	refusedUnknownEndpoint = "unknown-endpoint"
	refusedBacklog         = "backlog-full"
	refusedNotAccepted     = "not-accepted"
)

func newMetrics(a *Agent) *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "berth", Subsystem: "agent", Name: name, Help: help}
	}
	status := func(f func(Status) int) func() float64 {
		return func() float64 { return float64(f(a.Status())) }
	}
	m := &metrics{
		reg:        prometheus.NewRegistry(),
		dialErrors: prometheus.NewCounter(prometheus.CounterOpts(opts("tunnel_dial_errors_total", "Tunnel dials (and moves) that failed before a proxy welcomed the agent."))),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts(opts("streams_refused_total",
			"Streams refused: for an endpoint not served here, with the accept backlog full, or not accepted in time.")), []string{"reason"}),
		bytesByClass: prometheus.NewCounterVec(prometheus.CounterOpts(opts("stream_bytes_total",
			"Bytes Forward piped, by endpoint and direction (in: proxy to local service; out: back).")), []string{"endpoint", "direction"}),
		byEndpoint: make(map[string]*endpointMetrics, len(a.cfg.Endpoints)),
	}
	streams := prometheus.NewCounterVec(prometheus.CounterOpts(opts("streams_total", "Streams proxies opened that were accepted, by endpoint.")), []string{"endpoint"})
	upstream := prometheus.NewCounterVec(prometheus.CounterOpts(opts("upstream_dial_errors_total",
		"Streams Forward could not connect to the endpoint's local address (HTTP ones were answered 502).")), []string{"endpoint"})
	for _, e := range a.cfg.Endpoints {
		m.byEndpoint[e] = &endpointMetrics{
			streams:        streams.WithLabelValues(e),
			upstreamErrors: upstream.WithLabelValues(e),
			bytesIn:        m.bytesByClass.WithLabelValues(e, "in"),
			bytesOut:       m.bytesByClass.WithLabelValues(e, "out"),
		}
	}
	for _, r := range []string{refusedUnknownEndpoint, refusedBacklog, refusedNotAccepted} {
		m.refused.WithLabelValues(r)
	}
	m.reg.MustRegister(m.dialErrors, m.refused, m.bytesByClass, streams, upstream,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("tunnel_up", "1 while a tunnel is up and current.")), func() float64 {
			if a.Status().Connected {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("tunnels", "Tunnel sessions open: the current one and any draining after a move.")), status(func(s Status) int { return s.Tunnels })),
		prometheus.NewCounterFunc(prometheus.CounterOpts(opts("reconnects_total", "Tunnels established after the previous one was lost (a drop, not a move).")), status(func(s Status) int { return s.Reconnects })),
		prometheus.NewCounterFunc(prometheus.CounterOpts(opts("moves_total", "Make-before-break switches to another proxy (Reconnect or Drain).")), status(func(s Status) int { return s.Moves })),
	)
	return m
}

// endpoint is e's counters; every endpoint a stream reaches Accept or
// Forward with was checked to be one of the agent's.
func (m *metrics) endpoint(e string) *endpointMetrics { return m.byEndpoint[e] }

// Metrics is the agent's own Prometheus registry (berth_agent_* series
// only, no runtime collectors), for an admin server or an application's
// registry to gather.
func (a *Agent) Metrics() prometheus.Gatherer { return a.metrics.reg }
