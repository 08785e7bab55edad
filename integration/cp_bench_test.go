package integration

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Control-plane benchmarks against a real 3-node cluster on loopback: real
// TCP between nodes, bbolt with fsync on every log batch. Run with
//
//	go test -run '^$' -bench 'Registry|EventBatches|Failover' -benchtime 1x ./integration/
//
// (-benchtime 1x: each benchmark sizes its own workload and reports rates.)

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// BenchmarkRegistryWrites: single registry writes (one command each) from
// concurrent clients spread over all three nodes (followers forward).
func BenchmarkRegistryWrites(b *testing.B) {
	for _, clients := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			c := controlplanetest.MakeCluster(b, 3, controlplanetest.Options{})
			total := max(10000, clients*100)
			if clients == 1 {
				total = 2000
			}
			var (
				next      atomic.Int64
				mu        sync.Mutex
				latencies []time.Duration
				failures  atomic.Int64
				wg        sync.WaitGroup
			)
			leader := c.Leader()
			b.ResetTimer()
			start := time.Now()
			for cl := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					// Clients talk to the leader, as the CP client prefers; a
					// third of them to followers to include forwarding.
					node := leader
					if cl%3 == 2 {
						node = (leader + 1) % 3
					}
					reg := c.Registry(node)
					var mine []time.Duration
					for {
						i := next.Add(1)
						if i > int64(total) {
							break
						}
						t0 := time.Now()
						_, err := reg.RegisterProxy(context.Background(), &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{
							Id: fmt.Sprintf("p%d", i%1000), Region: "eu", Labels: map[string]string{"n": fmt.Sprint(i)}}})
						if err != nil {
							failures.Add(1)
							continue
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					latencies = append(latencies, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
			b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "writes/s")
			b.ReportMetric(float64(percentile(latencies, 0.50).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(latencies, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(failures.Load()), "failed")
		})
	}
}

// BenchmarkConnectionEventBatches: proxies stream batches of 1,000
// connection opens and closes, each batch one Raft command.
func BenchmarkConnectionEventBatches(b *testing.B) {
	const (
		proxies  = 16
		batches  = 12
		perBatch = 1000
	)
	c := controlplanetest.MakeCluster(b, 3, controlplanetest.Options{})
	leader := c.Leader()
	reg := c.Registry(leader)
	var streams []berthv1.RegistryService_SessionClient
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for p := range proxies {
		id := fmt.Sprintf("proxy-%d", p)
		if _, err := reg.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{Id: id}}); err != nil {
			b.Fatal(err)
		}
		s, err := reg.Session(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Hello{Hello: &berthv1.SessionHello{ProxyId: id}}}); err != nil {
			b.Fatal(err)
		}
		streams = append(streams, s)
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var events atomic.Int64
	for p, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range batches {
				evs := make([]*berthv1.ConnectionEvent, 0, perBatch)
				for i := range perBatch {
					id := fmt.Sprintf("c-%d-%d", p, (n/2)*perBatch+i)
					if n%2 == 0 {
						evs = append(evs, &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Open{Open: &berthv1.ConnectionOpen{
							Connection: &berthv1.Connection{Id: id, Slot: id, AgentId: "a", Endpoints: []string{"web"}}}}})
					} else {
						evs = append(evs, &berthv1.ConnectionEvent{Kind: &berthv1.ConnectionEvent_Close{Close: &berthv1.ConnectionClose{ConnectionId: id}}})
					}
				}
				seq := uint64(n + 1)
				if err := s.Send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Events{Events: &berthv1.ConnectionEventBatch{Seq: seq, Events: evs}}}); err != nil {
					b.Error(err)
					return
				}
				for {
					msg, err := s.Recv()
					if err != nil {
						b.Error(err)
						return
					}
					if ack := msg.GetWriteAck(); ack != nil && ack.Seq == seq {
						if ack.Result.Code != berthv1.ResultCode_RESULT_CODE_OK || len(ack.Result.EventErrors) > 0 {
							b.Errorf("batch refused: %v", ack.Result)
						}
						events.Add(perBatch)
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(events.Load())/elapsed.Seconds(), "events/s")
}

// BenchmarkLeaderFailover: kill the leader, then time until a write sent to
// a survivor commits. Ten runs; median and max reported.
func BenchmarkLeaderFailover(b *testing.B) {
	const runs = 10
	var times []time.Duration
	for r := range runs {
		c := controlplanetest.MakeCluster(b, 3, controlplanetest.Options{})
		leader := c.Leader()
		survivor := (leader + 1) % 3
		reg := c.Registry(survivor)
		if _, err := reg.RegisterProxy(context.Background(), &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{Id: "warm"}}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		c.Stop(leader)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := reg.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{Id: fmt.Sprintf("after-%d", r)}})
			cancel()
			if err == nil {
				break
			}
		}
		times = append(times, time.Since(start))
		c.Close()
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "median-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "max-ms")
}
