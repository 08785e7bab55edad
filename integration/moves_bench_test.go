package integration

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// BenchmarkScaleOut: 1,200 agent connections on 3 proxies under steady
// HTTP load; a 4th proxy joins. Reports the time until every proxy is
// within the band, moves made against the minimum needed, and failed
// requests (must be 0). Run with
//
//	go test -run '^$' -bench ScaleOut -benchtime 1x -timeout 30m ./integration/
func BenchmarkScaleOut(b *testing.B) {
	const (
		agents = 1200
		band   = 0.10
	)
	e := dataplanetest.Start(b, dataplanetest.Options{Proxies: 3, ConfigureNode: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Interval = 250 * time.Millisecond
		cfg.Rebalance.MovesPerSecond = 200
		cfg.Rebalance.Limits.Band = band
		cfg.Rebalance.Limits.MinAge = 0
		cfg.Rebalance.Limits.MaxInFlight = 128
		cfg.Rebalance.Limits.MaxInFlightPerProxy = 64
		cfg.Heartbeat.Grace = 0
	}})
	up := dataplanetest.Upstream(b, "svc")
	addrs := e.TunnelAddrs()
	for i := range agents {
		e.Agent(fmt.Sprintf("agent-%04d", i), []string{addrs[i%3]}, map[string]string{"web": up})
	}
	e.WaitConnections("web", agents)
	tr := startTraffic(b, e, "web", 8)

	b.ResetTimer()
	start := time.Now()
	e.AddProxy()
	var elapsed time.Duration
	controlplanetest.Eventually(b, 10*time.Minute, func() error {
		n := activeCounts(b, e)
		target := float64(agents) / 4
		for _, id := range []string{"proxy-0", "proxy-1", "proxy-2", "proxy-3"} {
			if math.Abs(float64(n[id])-target) > target*band {
				return fmt.Errorf("%v", n)
			}
		}
		elapsed = time.Since(start)
		return nil
	})
	b.StopTimer()
	ok, failed, _ := tr.stop()
	resp, err := e.CP.Admin(0).ListMoves(context.Background(), &berthv1.ListMovesRequest{Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		b.Fatal(err)
	}
	completed, aborted := 0, 0
	for _, m := range resp.Moves {
		switch m.State {
		case berthv1.MoveState_MOVE_STATE_COMPLETED:
			completed++
		case berthv1.MoveState_MOVE_STATE_ABORTED:
			aborted++
		}
	}
	b.ReportMetric(elapsed.Seconds(), "s-to-band")
	b.ReportMetric(float64(len(resp.Moves)), "moves")
	b.ReportMetric(float64(agents)/4, "min-moves")
	b.ReportMetric(float64(aborted), "aborted")
	b.ReportMetric(float64(ok), "requests")
	b.ReportMetric(float64(failed), "failed")
	if failed != 0 {
		b.Errorf("%d requests failed during scale-out", failed)
	}
}

func activeCounts(b testing.TB, e *dataplanetest.Env) map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.CP.Admin(e.CP.Leader()).ListProxies(ctx, &berthv1.ListProxiesRequest{})
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]int{}
	for id, n := range resp.ConnectionCounts {
		out[id] = int(n)
	}
	return out
}
