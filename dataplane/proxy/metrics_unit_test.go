package proxy

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/berthhq/berth/dataplane/ring"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Once an endpoint has been seen, observing a request allocates nothing
// and every status lands in its class.
func TestObserveRequestCached(t *testing.T) {
	p := &Proxy{dir: newDirectory("p", ring.Default())}
	p.dir.endpoints["web"] = &berthv1.Endpoint{Name: "web"}
	m := newMetrics(prometheus.NewRegistry(), p)
	m.observeRequest("web", 200, time.Millisecond)
	if n := testing.AllocsPerRun(100, func() { m.observeRequest("web", 204, time.Millisecond) }); n != 0 {
		t.Errorf("observeRequest allocates %v times per request for a cached endpoint", n)
	}
	for code, class := range map[int]string{101: "1xx", 99: "1xx", 302: "3xx", 404: "4xx", 503: "5xx", 999: "5xx"} {
		before := histCount(t, m, "web", class)
		m.observeRequest("web", code, time.Millisecond)
		if got := histCount(t, m, "web", class) - before; got != 1 {
			t.Errorf("status %d: %d new observations in %s, want 1", code, got, class)
		}
	}
	m.observeRequest("made-up", 503, time.Millisecond)
	if got := histCount(t, m, UnknownEndpoint, "5xx"); got != 1 {
		t.Errorf("unknown endpoint: %d observations under %s, want 1", got, UnknownEndpoint)
	}
	if _, cached := m.byEndpoint.Load("made-up"); cached {
		t.Error("an endpoint the directory does not know was cached")
	}
}

func histCount(t *testing.T, m *metrics, endpoint, class string) uint64 {
	t.Helper()
	o, err := m.requestDuration.GetMetricWithLabelValues(endpoint, class)
	if err != nil {
		t.Fatal(err)
	}
	d := new(dto.Metric)
	if err := o.(prometheus.Metric).Write(d); err != nil {
		t.Fatal(err)
	}
	return d.GetHistogram().GetSampleCount()
}
