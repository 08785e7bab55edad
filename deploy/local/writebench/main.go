// Command writebench loads a three-node Berth control plane or etcd cluster
// with closed-loop single writes and reports what was committed, so both
// are measured by the same client: the same connection pattern (client i
// talks to node i mod 3, one gRPC connection per node), the same key space
// (1,000 keys written over and over), one unary call per write, every
// answer checked. It is its own module so Berth does not depend on etcd.
//
//	writebench -target berth -addrs A,B,C -clients 64 -duration 10s
//	writebench -target etcd  -addrs A,B,C -clients 64 -duration 10s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// result is what one run prints, as JSON.
type result struct {
	Target    string  `json:"target"`
	Clients   int     `json:"clients"`
	Writes    int64   `json:"writes"`
	Failed    int64   `json:"failed"`
	PerSecond float64 `json:"writes_per_second"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	FirstErr  string  `json:"first_error,omitempty"`
}

func main() {
	target := flag.String("target", "berth", "berth or etcd")
	addrs := flag.String("addrs", "", "the three nodes' gRPC addresses, comma-separated")
	clients := flag.Int("clients", 64, "concurrent writers")
	duration := flag.Duration("duration", 10*time.Second, "how long to write")
	flag.Parse()
	res, err := run(*target, strings.Split(*addrs, ","), *clients, *duration)
	if err != nil {
		fmt.Fprintln(os.Stderr, "writebench:", err)
		os.Exit(2)
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if res.Failed > 0 {
		os.Exit(1)
	}
}

func run(target string, addrs []string, clients int, d time.Duration) (result, error) {
	if len(addrs) == 0 || addrs[0] == "" {
		return result{}, errors.New("-addrs: give the nodes' gRPC addresses")
	}
	if clients < 1 {
		return result{}, errors.New("-clients: at least 1")
	}
	var conns []*grpc.ClientConn
	for _, a := range addrs {
		c, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return result{}, fmt.Errorf("dial %s: %w", a, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	var write func(ctx context.Context, conn *grpc.ClientConn, i int64) error
	switch target {
	case "berth":
		write = func(ctx context.Context, conn *grpc.ClientConn, i int64) error {
			_, err := berthv1.NewRegistryServiceClient(conn).RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{
				Id: fmt.Sprintf("p%d", i%1000), Region: "eu", Labels: map[string]string{"n": fmt.Sprint(i)}}})
			return err
		}
	case "etcd":
		write = func(ctx context.Context, conn *grpc.ClientConn, i int64) error {
			_, err := etcdserverpb.NewKVClient(conn).Put(ctx, &etcdserverpb.PutRequest{
				Key: fmt.Appendf(nil, "bench/p%d", i%1000), Value: fmt.Appendf(nil, `{"id":"p%d","region":"eu","labels":{"n":"%d"}}`, i%1000, i)})
			return err
		}
	default:
		return result{}, fmt.Errorf("-target %q: berth or etcd", target)
	}

	var (
		next     atomic.Int64
		failed   atomic.Int64
		firstErr atomic.Value
		mu       sync.Mutex
		lats     []time.Duration
		wg       sync.WaitGroup
	)
	stopAt := time.Now().Add(d)
	start := time.Now()
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := conns[cl%len(conns)]
			var mine []time.Duration
			for time.Now().Before(stopAt) {
				i := next.Add(1)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				t0 := time.Now()
				err := write(ctx, conn, i)
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lats)
	pick := func(p float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		return float64(lats[min(len(lats)-1, int(float64(len(lats))*p))]) / 1e6
	}
	res := result{Target: target, Clients: clients, Writes: int64(len(lats)), Failed: failed.Load(),
		PerSecond: float64(len(lats)) / elapsed.Seconds(), P50ms: pick(0.5), P99ms: pick(0.99), MaxMs: pick(1)}
	if e, ok := firstErr.Load().(string); ok {
		res.FirstErr = e
	}
	return res, nil
}
