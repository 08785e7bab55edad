package proxy

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berthhq/berth/dataplane/debughttp"
)

// metrics are one proxy's Prometheus instruments, on its own registry.
type metrics struct {
	requests          prometheus.Counter
	routeErrors       *prometheus.CounterVec
	streams           *prometheus.CounterVec
	streamFailures    *prometheus.CounterVec
	peerStreamsServed prometheus.Counter
	tcpStreams        prometheus.Counter
	tunnels           prometheus.Gauge
	tunnelRefusals    *prometheus.CounterVec
	tunnelTransports  *prometheus.CounterVec
	cpConnected       prometheus.Gauge
	requestDuration   *prometheus.HistogramVec
	// byEndpoint caches each endpoint's observers (endpoint name to
	// *requestObservers), so a request looks up no labels and allocates
	// nothing once its endpoint has been seen.
	byEndpoint sync.Map
	// unknown holds the requests for endpoints the directory does not
	// know, so names made up by clients do not each become a series.
	unknown *requestObservers
	known   func(endpoint string) bool
}

// UnknownEndpoint is the endpoint label of requests for endpoints the
// proxy's directory does not know (endpoint names are DNS labels, so it
// never clashes with one).
const UnknownEndpoint = "_unknown"

// statusClasses are the code label values of request durations, by the
// first digit of the status code.
var statusClasses = [5]string{"1xx", "2xx", "3xx", "4xx", "5xx"}

// requestObservers are one endpoint's duration observers, one per status
// class.
type requestObservers [len(statusClasses)]prometheus.Observer

func newMetrics(reg *prometheus.Registry, p *Proxy) *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "berth", Subsystem: "proxy", Name: name, Help: help}
	}
	m := &metrics{
		requests:          prometheus.NewCounter(prometheus.CounterOpts(opts("requests_total", "Downstream HTTP requests."))),
		routeErrors:       prometheus.NewCounterVec(prometheus.CounterOpts(opts("route_errors_total", "Requests answered with a Berth error, by reason.")), []string{"reason"}),
		streams:           prometheus.NewCounterVec(prometheus.CounterOpts(opts("streams_total", "Streams opened, by where they went (local, peer).")), []string{"via"}),
		streamFailures:    prometheus.NewCounterVec(prometheus.CounterOpts(opts("stream_failures_total", "Streams a target refused (the next target was tried).")), []string{"via"}),
		peerStreamsServed: prometheus.NewCounter(prometheus.CounterOpts(opts("peer_streams_served_total", "Streams peers forwarded here and this proxy served."))),
		tcpStreams:        prometheus.NewCounter(prometheus.CounterOpts(opts("tcp_streams_total", "Downstream TCP streams (berth-tcp upgrades)."))),
		tunnels:           prometheus.NewGauge(prometheus.GaugeOpts(opts("tunnels", "Agent tunnels held now."))),
		tunnelRefusals:    prometheus.NewCounterVec(prometheus.CounterOpts(opts("tunnel_refusals_total", "Tunnels refused, by reason.")), []string{"reason"}),
		tunnelTransports:  prometheus.NewCounterVec(prometheus.CounterOpts(opts("tunnel_connections_total", "Connections to the tunnel port, by transport (tcp, websocket).")), []string{"transport"}),
		cpConnected:       prometheus.NewGauge(prometheus.GaugeOpts(opts("control_plane_connected", "1 while the control-plane session is up."))),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "berth", Subsystem: "proxy", Name: "request_duration_seconds",
			Help: "Downstream HTTP requests from routing to the answer's last byte, by endpoint (" + UnknownEndpoint +
				" for names the directory does not know) and status class (1xx also counts upgrades, for as long as they last).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"endpoint", "code"}),
		known: p.dir.knows,
	}
	m.unknown = m.observers(UnknownEndpoint)
	reg.MustRegister(m.requests, m.routeErrors, m.streams, m.streamFailures, m.peerStreamsServed, m.tcpStreams,
		m.tunnels, m.tunnelRefusals, m.tunnelTransports, m.cpConnected, m.requestDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeRequest records one downstream request's duration under its
// endpoint and status class. Codes below 200 count as 1xx, above 599 as
// 5xx.
func (m *metrics) observeRequest(endpoint string, code int, d time.Duration) {
	o, ok := m.byEndpoint.Load(endpoint)
	if !ok {
		if !m.known(endpoint) {
			m.unknown.observe(code, d)
			return
		}
		o, _ = m.byEndpoint.LoadOrStore(endpoint, m.observers(endpoint))
	}
	o.(*requestObservers).observe(code, d)
}

func (m *metrics) observers(endpoint string) *requestObservers {
	var o requestObservers
	for i, class := range statusClasses {
		o[i] = m.requestDuration.WithLabelValues(endpoint, class)
	}
	return &o
}

func (o *requestObservers) observe(code int, d time.Duration) {
	i := min(max(code/100-1, 0), len(o)-1)
	o[i].Observe(d.Seconds())
}

// adminHandler serves /metrics, /healthz (the process is up) and /readyz
// (the proxy can route: it has its first directory from the control plane,
// or has waited the commit timeout for it; a control plane lost later does
// not make it unready, by design).
func (p *Proxy) adminHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	if p.cfg.Pprof {
		debughttp.Register(mux)
	}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if p.ctx.Err() != nil {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if !p.dir.isSynced() && time.Since(p.started) < p.cfg.CommitTimeout {
			http.Error(w, "waiting for the first directory from the control plane", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}
