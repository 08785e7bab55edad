package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/tunnel"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Data-plane benchmarks. Run with
//
//	go test -run '^$' -bench 'HTTPThroughput|IdleTunnelMemory' -benchtime 1x ./integration/
//
// Everything (control plane, proxies, agent, upstream, load generator) runs
// on this machine's two cores, so "direct" and "through Berth" share the
// same CPU budget.

const benchDuration = 4 * time.Second

// load runs clients keep-alive clients POSTing 1 KiB for benchDuration and
// returns req/s and latency percentiles.
func load(b *testing.B, clients int, url, host string) (rps float64, p50, p99 time.Duration, failed int64) {
	body := bytes.Repeat([]byte("b"), 1024)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		lats   []time.Duration
		errs   atomic.Int64
		stopAt = time.Now().Add(benchDuration)
	)
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}, Timeout: 10 * time.Second}
			defer c.CloseIdleConnections()
			var mine []time.Duration
			for time.Now().Before(stopAt) {
				req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
				req.Host = host
				t0 := time.Now()
				resp, err := c.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || n != int64(len(body)) {
					errs.Add(1)
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
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	return float64(len(lats)) / elapsed.Seconds(), percentile(lats, 0.5), percentile(lats, 0.99), errs.Load()
}

func BenchmarkHTTPThroughput(b *testing.B) {
	e := dataplanetest.Start(b, dataplanetest.Options{ControlPlaneNodes: 1})
	up := dataplanetest.Upstream(b, "bench")
	e.Agent("bench", e.TunnelAddrs()[:1], map[string]string{"web": up})
	e.WaitConnections("web", 1)
	// Warm the peer link.
	c := &http.Client{Timeout: 5 * time.Second}
	controlplanetest.Eventually(b, 20*time.Second, func() error {
		code, _, _, err := e.Get(c, 1, "web", "/")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	paths := []struct{ name, url, host string }{
		{"direct", "http://" + up + "/echo", "upstream"},
		{"local", "http://" + e.DownstreamAddr(0) + "/echo", "web.berth.test"},
		{"forwarded", "http://" + e.DownstreamAddr(1) + "/echo", "web.berth.test"},
	}
	for _, clients := range []int{16, 64} {
		for _, p := range paths {
			b.Run(fmt.Sprintf("%s/clients=%d", p.name, clients), func(b *testing.B) {
				rps, p50, p99, failed := load(b, clients, p.url, p.host)
				b.ReportMetric(rps, "req/s")
				b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
				b.ReportMetric(float64(failed), "failed")
			})
		}
	}
}

// BenchmarkIdleTunnelMemory opens 10,000 idle tunnels to a berth-proxy
// process (the real binary) and reports how much its resident memory grew
// per tunnel.
func BenchmarkIdleTunnelMemory(b *testing.B) {
	const tunnels = 10_000
	cp := controlplanetest.MakeCluster(b, 1, controlplanetest.Options{})
	dir := b.TempDir()
	bin := filepath.Join(dir, "berth-proxy")
	build := exec.Command("go", "build", "-o", bin, "../cmd/berth-proxy")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	tunnelAddr := freeAddr(b)
	cmd := exec.Command(bin, "--id", "mem", "--insecure", "--addr", cp.Addr(0),
		"--tunnel-addr", tunnelAddr, "--downstream-addr", freeAddr(b), "--peer-addr", freeAddr(b), "--http-addr", "",
		"--max-tunnels", "20000", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	controlplanetest.Eventually(b, 20*time.Second, func() error {
		c, err := net.Dial("tcp", tunnelAddr)
		if err == nil {
			c.Close()
		}
		return err
	})
	before := rss(b, cmd.Process.Pid)
	cfg := tunnel.DefaultConfig()
	sessions := make([]*tunnel.Session, tunnels)
	b.Cleanup(func() {
		for _, s := range sessions {
			if s != nil {
				_ = s.Close()
			}
		}
	})
	// Dial 100 at a time: each waits for its commit, which the proxy
	// batches.
	var wg sync.WaitGroup
	errs := make(chan error, tunnels)
	sem := make(chan struct{}, 100)
	for i := range tunnels {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s, _, err := tunnel.DialTunnel(context.Background(), tunnelAddr, nil, &berthv1.TunnelHello{
				AgentId: fmt.Sprintf("a%d", i), Slot: fmt.Sprintf("s%d", i), Endpoints: []string{"idle"}}, cfg)
			if err != nil {
				errs <- fmt.Errorf("tunnel %d: %w", i, err)
				return
			}
			sessions[i] = s
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	// Let the proxy settle (commits done, buffers returned).
	var after int64
	controlplanetest.Eventually(b, 60*time.Second, func() error {
		resp, err := cp.Admin(0).GetEndpoint(context.Background(), &berthv1.GetEndpointRequest{Name: "idle"})
		if err != nil || resp.Endpoint.ConnectionCount != tunnels {
			return fmt.Errorf("%v %v", resp, err)
		}
		return nil
	})
	after = rss(b, cmd.Process.Pid)
	b.ReportMetric(float64(after-before)/tunnels, "bytes/tunnel")
	b.ReportMetric(float64(after)/(1<<20), "rss-MiB")
}

func rss(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func freeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
