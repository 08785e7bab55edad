package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/berthhq/berth/dataplane/agent/demo"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// serveAdmin runs ServeAdmin with a's metrics on a real socket until the
// test ends and returns its address.
func serveAdmin(t *testing.T, a *Agent) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeAdmin(ctx, ln, AdminOptions{Metrics: a.Metrics()}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeAdmin = %v", err)
		}
	})
	return ln.Addr().String()
}

// scrape GETs /metrics and returns each sample's value by its series
// (name{label="value",...}, labels in exposition order).
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			if len(m.GetLabel()) > 0 {
				key += "{"
				for i, l := range m.GetLabel() {
					if i > 0 {
						key += ","
					}
					key += fmt.Sprintf("%s=%q", l.GetName(), l.GetValue())
				}
				key += "}"
			}
			out[key] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return -1
}

// A real agent's /metrics, scraped over a socket, counts what its tunnels
// and streams did: a refused hello, streams served, refused and failed,
// a reconnect and a move.
func TestAgentMetrics(t *testing.T) {
	pa, pb := newTestProxy(t, "a"), newTestProxy(t, "b")
	pa.refuse.Store(1)
	web := serveLocal(t, demo.Handler("demo-1", nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	_ = ln.Close()

	cfg := testConfig(pa.addr())
	cfg.Endpoints = []string{"web", "down"}
	a := startAgent(t, cfg)
	fwd := make(chan error, 1)
	go func() { fwd <- Forward(a.Agent, map[string]string{"web": web, "down": down}, testLogger(t)) }()
	t.Cleanup(func() {
		_ = a.Close()
		<-fwd
	})
	addr := serveAdmin(t, a.Agent)
	ps := pa.next(t)

	if code, body := get(t, http.DefaultClient, "http://"+addr+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	want := func(what string, cond func(map[string]float64) bool) {
		t.Helper()
		var got map[string]float64
		eventually(t, 5*time.Second, func() bool { got = scrape(t, addr); return cond(got) }, "%s; scraped %v", what, got)
	}
	want("tunnel up after one refused hello", func(m map[string]float64) bool {
		return m["berth_agent_tunnel_up"] == 1 && m["berth_agent_tunnels"] == 1 &&
			m["berth_agent_tunnel_dial_errors_total"] == 1 && m["berth_agent_reconnects_total"] == 0 &&
			m[`berth_agent_streams_total{endpoint="web"}`] == 0 && m["go_goroutines"] > 0
	})

	// Two HTTP exchanges on their own streams, one to a service that is down.
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, host string) (net.Conn, error) {
		ep, _, _ := net.SplitHostPort(host)
		return ps.sess.OpenStream(ctx, &berthv1.StreamHeader{Endpoint: ep, Kind: berthv1.StreamKind_STREAM_KIND_HTTP})
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if code, _ := get(t, c, "http://web/"); code != http.StatusOK {
		t.Fatalf("web: %d", code)
	}
	// The agent answers a stream to a dead service at once, before reading
	// its request; http.Transport may take such an answer for an
	// unsolicited one, so this exchange is read by hand.
	ds, err := ps.openStream(t, "down", berthv1.StreamKind_STREAM_KIND_HTTP)
	if err != nil {
		t.Fatal(err)
	}
	_ = ds.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(ds), nil)
	if err != nil {
		t.Fatalf("down: %v", err)
	}
	_ = resp.Body.Close()
	_ = ds.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("down: %d, want 502", resp.StatusCode)
	}
	if _, err := ps.openStream(t, "nosuch", berthv1.StreamKind_STREAM_KIND_TCP); err == nil {
		t.Fatal("a stream for an endpoint not served was accepted")
	}
	want("streams counted", func(m map[string]float64) bool {
		return m[`berth_agent_streams_total{endpoint="web"}`] == 1 && m[`berth_agent_streams_total{endpoint="down"}`] == 1 &&
			m[`berth_agent_upstream_dial_errors_total{endpoint="down"}`] == 1 && m[`berth_agent_upstream_dial_errors_total{endpoint="web"}`] == 0 &&
			m[`berth_agent_stream_bytes_total{direction="in",endpoint="web"}`] > 0 && m[`berth_agent_stream_bytes_total{direction="out",endpoint="web"}`] > 0 &&
			m[`berth_agent_streams_refused_total{reason="unknown-endpoint"}`] == 1
	})

	// The proxy drops the tunnel: one reconnect.
	_ = ps.sess.Close()
	ps = pa.next(t)
	want("a reconnect", func(m map[string]float64) bool {
		return m["berth_agent_reconnects_total"] == 1 && m["berth_agent_tunnel_up"] == 1
	})

	// A move to b: one move, two tunnels until a closes the old one.
	ps.send(t, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{MoveId: "move-1", ProxyId: "b", Address: pb.addr()}}})
	_ = ps.recvControl(t)
	pb.next(t)
	want("a move", func(m map[string]float64) bool {
		return m["berth_agent_moves_total"] == 1 && m["berth_agent_tunnels"] == 2 && m["berth_agent_reconnects_total"] == 1
	})
	_ = ps.sess.Close()
	want("old tunnel gone", func(m map[string]float64) bool { return m["berth_agent_tunnels"] == 1 })
}
