package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/berthhq/berth/dataplane/debughttp"
)

// AdminOptions is what the agent's own HTTP address serves.
type AdminOptions struct {
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool
	// Metrics, when set (an Agent's Metrics), is served on /metrics
	// together with the Go runtime and process collectors.
	Metrics prometheus.Gatherer
}

// ServeAdmin serves /healthz, /metrics (with opts.Metrics) and, with
// opts.Pprof, the runtime profiles on ln until ctx ends.
func ServeAdmin(ctx context.Context, ln net.Listener, opts AdminOptions) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	if opts.Metrics != nil {
		runtime := prometheus.NewRegistry()
		runtime.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{opts.Metrics, runtime}, promhttp.HandlerOpts{}))
	}
	if opts.Pprof {
		debughttp.Register(mux)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
