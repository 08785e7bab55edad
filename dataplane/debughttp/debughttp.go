// Package debughttp serves the Go runtime's profiles on a daemon's admin
// HTTP address (--pprof on berthd, berth-proxy and berth-agent), so a live process
// can be profiled under real load with `go tool pprof`.
package debughttp

import (
	"net/http"
	"net/http/pprof"
)

// Register serves net/http/pprof under /debug/pprof/ on mux.
func Register(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}
