package main

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// fakeAdmin is an AdminService that records every request and answers from
// canned registry objects, paging lists pageSize items at a time.
type fakeAdmin struct {
	berthv1.UnimplementedAdminServiceServer

	pageSize    int
	cluster     *berthv1.ClusterStatusResponse
	proxies     []*berthv1.Proxy
	load        map[string]*berthv1.LoadSample
	endpoints   []*berthv1.Endpoint
	connections []*berthv1.Connection
	moves       []*berthv1.Move
	// actionErr, when set, answers cordon/uncordon/drain.
	actionErr error
	// watch serves call number n (1-based) of Watch.
	watch func(n int, req *berthv1.WatchRequest, stream grpc.ServerStreamingServer[berthv1.WatchResponse]) error

	mu       sync.Mutex
	requests []proto.Message
	watches  int
}

func (f *fakeAdmin) record(m proto.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, proto.Clone(m))
}

// requestsOf returns the recorded requests of type T, in arrival order.
func requestsOf[T proto.Message](f *fakeAdmin) []T {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []T
	for _, r := range f.requests {
		if t, ok := r.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func (f *fakeAdmin) requestCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// page returns the slice of items for token (an offset) and the next token.
func page[T any](items []T, token string, size int) ([]T, string, error) {
	start := 0
	if token != "" {
		n, err := strconv.Atoi(token)
		if err != nil || n < 0 || n > len(items) {
			return nil, "", status.Errorf(codes.InvalidArgument, "bad page token %q", token)
		}
		start = n
	}
	end := min(start+size, len(items))
	next := ""
	if end < len(items) {
		next = strconv.Itoa(end)
	}
	return items[start:end], next, nil
}

func (f *fakeAdmin) size(requested uint32) int {
	if requested > 0 {
		return int(requested)
	}
	if f.pageSize > 0 {
		return f.pageSize
	}
	return 2
}

func (f *fakeAdmin) ClusterStatus(_ context.Context, req *berthv1.ClusterStatusRequest) (*berthv1.ClusterStatusResponse, error) {
	f.record(req)
	return f.cluster, nil
}

func (f *fakeAdmin) ListProxies(_ context.Context, req *berthv1.ListProxiesRequest) (*berthv1.ListProxiesResponse, error) {
	f.record(req)
	items, next, err := page(f.proxies, req.GetPageToken(), f.size(req.GetPageSize()))
	if err != nil {
		return nil, err
	}
	load := make(map[string]*berthv1.LoadSample)
	counts := make(map[string]uint32)
	targets := make(map[string]float64)
	for i, p := range items {
		if l, ok := f.load[p.GetId()]; ok {
			load[p.GetId()] = l
		}
		counts[p.GetId()] = uint32(10 + i)
		targets[p.GetId()] = 10.5
	}
	return &berthv1.ListProxiesResponse{
		Proxies: items, NextPageToken: next, Load: load, ConnectionCounts: counts, TargetConnections: targets,
		Header: &berthv1.ReadHeader{Index: 42, ServedBy: "n1"},
	}, nil
}

func (f *fakeAdmin) ListEndpoints(_ context.Context, req *berthv1.ListEndpointsRequest) (*berthv1.ListEndpointsResponse, error) {
	f.record(req)
	items, next, err := page(f.endpoints, req.GetPageToken(), f.size(req.GetPageSize()))
	if err != nil {
		return nil, err
	}
	return &berthv1.ListEndpointsResponse{Endpoints: items, NextPageToken: next, Header: &berthv1.ReadHeader{Index: 42, ServedBy: "n1"}}, nil
}

func (f *fakeAdmin) ListConnections(_ context.Context, req *berthv1.ListConnectionsRequest) (*berthv1.ListConnectionsResponse, error) {
	f.record(req)
	items, next, err := page(f.connections, req.GetPageToken(), f.size(req.GetPageSize()))
	if err != nil {
		return nil, err
	}
	return &berthv1.ListConnectionsResponse{Connections: items, NextPageToken: next, Header: &berthv1.ReadHeader{Index: 42, ServedBy: "n1"}}, nil
}

func (f *fakeAdmin) ListMoves(_ context.Context, req *berthv1.ListMovesRequest) (*berthv1.ListMovesResponse, error) {
	f.record(req)
	items, next, err := page(f.moves, req.GetPageToken(), f.size(req.GetPageSize()))
	if err != nil {
		return nil, err
	}
	return &berthv1.ListMovesResponse{Moves: items, NextPageToken: next, Header: &berthv1.ReadHeader{Index: 42, ServedBy: "n1"}}, nil
}

func (f *fakeAdmin) proxyAfter(id string, admin berthv1.AdminState, st berthv1.ProxyStatus) (*berthv1.Proxy, error) {
	if f.actionErr != nil {
		return nil, f.actionErr
	}
	return &berthv1.Proxy{Id: id, Region: "eu", AdminState: admin, Status: st, Health: berthv1.Health_HEALTH_HEALTHY, Version: 99}, nil
}

func (f *fakeAdmin) CordonProxy(_ context.Context, req *berthv1.CordonProxyRequest) (*berthv1.CordonProxyResponse, error) {
	f.record(req)
	p, err := f.proxyAfter(req.GetProxyId(), berthv1.AdminState_ADMIN_STATE_CORDONED, berthv1.ProxyStatus_PROXY_STATUS_CORDONED)
	return &berthv1.CordonProxyResponse{Proxy: p}, err
}

func (f *fakeAdmin) UncordonProxy(_ context.Context, req *berthv1.UncordonProxyRequest) (*berthv1.UncordonProxyResponse, error) {
	f.record(req)
	p, err := f.proxyAfter(req.GetProxyId(), berthv1.AdminState_ADMIN_STATE_NONE, berthv1.ProxyStatus_PROXY_STATUS_ACTIVE)
	return &berthv1.UncordonProxyResponse{Proxy: p}, err
}

func (f *fakeAdmin) DrainProxy(_ context.Context, req *berthv1.DrainProxyRequest) (*berthv1.DrainProxyResponse, error) {
	f.record(req)
	p, err := f.proxyAfter(req.GetProxyId(), berthv1.AdminState_ADMIN_STATE_DRAINING, berthv1.ProxyStatus_PROXY_STATUS_DRAINING)
	return &berthv1.DrainProxyResponse{Proxy: p}, err
}

func (f *fakeAdmin) Watch(req *berthv1.WatchRequest, stream grpc.ServerStreamingServer[berthv1.WatchResponse]) error {
	f.record(req)
	f.mu.Lock()
	f.watches++
	n := f.watches
	f.mu.Unlock()
	if f.watch == nil {
		return status.Error(codes.Unimplemented, "no watch in this test")
	}
	return f.watch(n, req, stream)
}

// serve starts f on 127.0.0.1:0 until the test ends.
func serve(t *testing.T, f *fakeAdmin) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	berthv1.RegisterAdminServiceServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

// deadAddr is an address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

type result struct {
	stdout, stderr string
	code           int
}

// errorLine is the last line of stderr: where the error goes, after any
// log lines (such as the --insecure warning).
func (r result) errorLine() string {
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	return lines[len(lines)-1] + "\n"
}

// berthctl runs the command tree in-process against addr, as the binary
// would, with fast retries.
func berthctl(t *testing.T, addr string, args ...string) result {
	t.Helper()
	return berthctlEnv(t, nil, append([]string{"--addr", addr}, args...)...)
}

func berthctlEnv(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	root := newRootCmd(&stdout, &stderr, func(k string) string { return env[k] })
	full := append([]string{"--insecure", "--retry-backoff", "1ms", "--retry-backoff-max", "5ms"}, args...)
	code := execute(t.Context(), root, full, &stderr)
	t.Logf("berthctl %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, stdout.String(), stderr.String())
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

func (f *fakeAdmin) Rebalance(_ context.Context, req *berthv1.RebalanceRequest) (*berthv1.RebalanceResponse, error) {
	f.record(req)
	return &berthv1.RebalanceResponse{Moves: f.moves, Imbalance: 0.25, ServedBy: "n1"}, nil
}

func (f *fakeAdmin) CreateAdminToken(_ context.Context, req *berthv1.CreateAdminTokenRequest) (*berthv1.CreateAdminTokenResponse, error) {
	f.record(req)
	return &berthv1.CreateAdminTokenResponse{Token: "bat_0123456789abcdef_secret", Record: &berthv1.AdminToken{Id: "0123456789abcdef", Name: req.Name, Role: req.Role}}, nil
}

func (f *fakeAdmin) ListAdminTokens(_ context.Context, req *berthv1.ListAdminTokensRequest) (*berthv1.ListAdminTokensResponse, error) {
	f.record(req)
	return &berthv1.ListAdminTokensResponse{Tokens: []*berthv1.AdminToken{{Id: "0123456789abcdef", Name: "ops", Role: "operate"}}}, nil
}
