package proxy

import (
	"net/http"
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
}

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
	}
	reg.MustRegister(m.requests, m.routeErrors, m.streams, m.streamFailures, m.peerStreamsServed, m.tcpStreams,
		m.tunnels, m.tunnelRefusals, m.tunnelTransports, m.cpConnected,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
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
