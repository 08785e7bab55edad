package controlplane

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func seriesCount(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 16)
	c.Collect(ch)
	close(ch)
	return len(ch)
}

// A planning round replaces the last round's targets (a proxy no longer
// eligible drops out) and counts only open moves as in flight.
func TestObserveRound(t *testing.T) {
	m := &metrics{
		targets:       prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "t"}, []string{"proxy"}),
		movesInFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "m"}),
	}
	moves := func(states ...berthv1.MoveState) []*berthv1.Move {
		var out []*berthv1.Move
		for _, s := range states {
			out = append(out, &berthv1.Move{State: s})
		}
		return out
	}
	m.observeRound(map[string]float64{"p1": 1.5, "p2": 2.5}, moves(berthv1.MoveState_MOVE_STATE_PENDING, berthv1.MoveState_MOVE_STATE_ACCEPTED,
		berthv1.MoveState_MOVE_STATE_COMPLETED, berthv1.MoveState_MOVE_STATE_ABORTED))
	if got := gaugeValue(t, m.movesInFlight); got != 2 {
		t.Errorf("in flight = %v, want 2 (pending and accepted)", got)
	}
	if got := gaugeValue(t, m.targets.WithLabelValues("p2")); got != 2.5 {
		t.Errorf("p2 target = %v, want 2.5", got)
	}
	m.observeRound(map[string]float64{"p1": 4}, nil)
	if n := seriesCount(m.targets); n != 1 {
		t.Errorf("%d target series after p2 left, want 1", n)
	}
	if got, inFlight := gaugeValue(t, m.targets.WithLabelValues("p1")), gaugeValue(t, m.movesInFlight); got != 4 || inFlight != 0 {
		t.Errorf("p1 target %v, in flight %v; want 4 and 0", got, inFlight)
	}
}
