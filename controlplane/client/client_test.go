package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// testAdmin answers ClusterStatus with its name, or with what reply says.
type testAdmin struct {
	berthv1.UnimplementedAdminServiceServer
	name  string
	calls atomic.Int64
	// reply, when set, decides the answer to call number n (1-based).
	reply func(n int64) error
}

func (s *testAdmin) ClusterStatus(context.Context, *berthv1.ClusterStatusRequest) (*berthv1.ClusterStatusResponse, error) {
	n := s.calls.Add(1)
	if s.reply != nil {
		if err := s.reply(n); err != nil {
			return nil, err
		}
	}
	return &berthv1.ClusterStatusResponse{ServedBy: s.name}, nil
}

func (s *testAdmin) Watch(_ *berthv1.WatchRequest, stream grpc.ServerStreamingServer[berthv1.WatchResponse]) error {
	s.calls.Add(1)
	return stream.Send(&berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Reset_{
		Reset_: &berthv1.WatchReset{Reason: s.name},
	}})
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepts atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

// startServer serves impl on 127.0.0.1:0 until the test ends.
func startServer(t *testing.T, impl berthv1.AdminServiceServer) (string, *countingListener) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: lis}
	srv := grpc.NewServer()
	berthv1.RegisterAdminServiceServer(srv, impl)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(cl)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String(), cl
}

// deadAddr returns an address nothing listens on (connection refused).
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// silentAddr accepts TCP connections and never speaks, so gRPC never gets
// the server's HTTP/2 preface.
func silentAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = lis.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return lis.Addr().String()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testConfig(addrs ...string) Config {
	cfg := Default()
	cfg.Addrs = addrs
	cfg.TLS.Insecure = true
	cfg.DialTimeout = 2 * time.Second
	cfg.BackoffBase = time.Millisecond
	cfg.BackoffMax = 5 * time.Millisecond
	return cfg
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func servedBy(t *testing.T, c *Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := c.Admin().ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatalf("ClusterStatus: %v", err)
	}
	return resp.GetServedBy()
}

func TestFailoverFromDeadAddress(t *testing.T) {
	a := &testAdmin{name: "a"}
	b := &testAdmin{name: "b"}
	addrA, _ := startServer(t, a)
	addrB, _ := startServer(t, b)
	c := newClient(t, testConfig(deadAddr(t), addrA, addrB))

	if got := servedBy(t, c); got != "a" {
		t.Fatalf("first call served by %q, want a (next after the dead address)", got)
	}
	// The address that answered stays preferred.
	for range 3 {
		if got := servedBy(t, c); got != "a" {
			t.Fatalf("later call served by %q, want a", got)
		}
	}
	if n := b.calls.Load(); n != 0 {
		t.Fatalf("b got %d calls, want 0", n)
	}
}

func TestFailoverOnUnavailableAnswer(t *testing.T) {
	a := &testAdmin{name: "a", reply: func(int64) error {
		return status.Error(codes.Unavailable, "shutting down")
	}}
	b := &testAdmin{name: "b"}
	addrA, _ := startServer(t, a)
	addrB, _ := startServer(t, b)
	c := newClient(t, testConfig(addrA, addrB))

	if got := servedBy(t, c); got != "b" {
		t.Fatalf("served by %q, want b", got)
	}
	if got := servedBy(t, c); got != "b" {
		t.Fatalf("second call served by %q, want b", got)
	}
	if n := a.calls.Load(); n != 1 {
		t.Fatalf("a got %d calls, want 1", n)
	}
}

func TestFailoverOnConnectTimeout(t *testing.T) {
	b := &testAdmin{name: "b"}
	addrB, _ := startServer(t, b)
	cfg := testConfig(silentAddr(t), addrB)
	cfg.DialTimeout = 200 * time.Millisecond
	c := newClient(t, cfg)

	if got := servedBy(t, c); got != "b" {
		t.Fatalf("served by %q, want b", got)
	}
}

func TestNotLeaderRedirectsToLeader(t *testing.T) {
	leader := &testAdmin{name: "leader"}
	leaderAddr, _ := startServer(t, leader)
	follower := &testAdmin{name: "follower", reply: func(int64) error {
		return NotLeaderStatus("n2", leaderAddr).Err()
	}}
	followerAddr, _ := startServer(t, follower)
	other := &testAdmin{name: "other"}
	otherAddr, _ := startServer(t, other)

	// The leader is not configured: the client learns it from the hint.
	c := newClient(t, testConfig(followerAddr, otherAddr))
	if got := servedBy(t, c); got != "leader" {
		t.Fatalf("served by %q, want leader", got)
	}
	if !slices.Contains(c.Addrs(), leaderAddr) {
		t.Fatalf("Addrs() = %v, want it to include the leader %s", c.Addrs(), leaderAddr)
	}
	if got := servedBy(t, c); got != "leader" {
		t.Fatalf("second call served by %q, want leader", got)
	}
	if n := follower.calls.Load(); n != 1 {
		t.Fatalf("follower got %d calls, want 1 (later calls go to the leader)", n)
	}
	if n := other.calls.Load(); n != 0 {
		t.Fatalf("other got %d calls, want 0 (redirect goes straight to the leader)", n)
	}
}

func TestNotLeaderReturnedAsTypedError(t *testing.T) {
	leader := &testAdmin{name: "leader"}
	leaderAddr, _ := startServer(t, leader)
	// A handler may return the typed error itself.
	follower := &testAdmin{name: "follower", reply: func(int64) error {
		return &NotLeaderError{LeaderID: "n2", LeaderAddress: leaderAddr}
	}}
	followerAddr, _ := startServer(t, follower)
	c := newClient(t, testConfig(followerAddr))
	if got := servedBy(t, c); got != "leader" {
		t.Fatalf("served by %q, want leader", got)
	}
}

func TestNotLeaderWithoutAddressBacksOffAndRetries(t *testing.T) {
	a := &testAdmin{name: "a", reply: func(n int64) error {
		if n == 1 {
			return NotLeaderStatus("", "").Err() // election running
		}
		return nil
	}}
	addrA, _ := startServer(t, a)
	b := &testAdmin{name: "b"}
	addrB, _ := startServer(t, b)
	c := newClient(t, testConfig(addrA, addrB))

	if got := servedBy(t, c); got != "a" {
		t.Fatalf("served by %q, want a (retried after backing off)", got)
	}
	if n := a.calls.Load(); n != 2 {
		t.Fatalf("a got %d calls, want 2", n)
	}
	if n := b.calls.Load(); n != 0 {
		t.Fatalf("b got %d calls, want 0: no leader known means back off, not spray", n)
	}
}

func TestRetriesExhaustedReturnsLastErrorWrapped(t *testing.T) {
	a := &testAdmin{name: "a", reply: func(n int64) error {
		return status.Errorf(codes.Unavailable, "busy %d", n)
	}}
	addrA, _ := startServer(t, a)
	cfg := testConfig(deadAddr(t), addrA)
	cfg.Retries = 2
	c := newClient(t, cfg)

	_, err := c.Admin().ClusterStatus(t.Context(), &berthv1.ClusterStatusRequest{})
	var re *RetryError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want *RetryError", err, err)
	}
	if re.Attempts != 6 {
		t.Errorf("Attempts = %d, want 6 (3 rounds x 2 addresses)", re.Attempts)
	}
	if n := a.calls.Load(); n != 3 {
		t.Errorf("a got %d calls, want 3", n)
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("status.Code = %s, want Unavailable", code)
	}
	if re.Stopped != nil {
		t.Errorf("Stopped = %v, want nil", re.Stopped)
	}
	if !strings.Contains(err.Error(), "gave up after 6 attempts") {
		t.Errorf("err = %q, want the attempt count", err)
	}
}

func TestNonRetryableErrorIsReturnedAsIs(t *testing.T) {
	a := &testAdmin{name: "a", reply: func(int64) error {
		return status.Error(codes.NotFound, "no such proxy")
	}}
	addrA, _ := startServer(t, a)
	b := &testAdmin{name: "b"}
	addrB, _ := startServer(t, b)
	c := newClient(t, testConfig(addrA, addrB))

	_, err := c.Admin().ClusterStatus(t.Context(), &berthv1.ClusterStatusRequest{})
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.NotFound || st.Message() != "no such proxy" {
		t.Fatalf("err = %v, want the server's NotFound unchanged", err)
	}
	if n := b.calls.Load(); n != 0 {
		t.Fatalf("b got %d calls, want 0", n)
	}
}

func TestContextEndsRetries(t *testing.T) {
	cfg := testConfig(deadAddr(t))
	cfg.Retries = 1000
	cfg.BackoffBase = 20 * time.Millisecond
	cfg.BackoffMax = 20 * time.Millisecond
	c := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Admin().ClusterStatus(ctx, &berthv1.ClusterStatusRequest{})
	var re *RetryError
	if !errors.As(err, &re) || !errors.Is(re.Stopped, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a RetryError stopped by the deadline", err)
	}
}

func TestSingleDialWhenCallersRace(t *testing.T) {
	a := &testAdmin{name: "a"}
	addrA, lis := startServer(t, a)
	c := newClient(t, testConfig(addrA))

	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			_, err := c.Admin().ClusterStatus(t.Context(), &berthv1.ClusterStatusRequest{})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := lis.accepts.Load(); n != 1 {
		t.Fatalf("server accepted %d connections, want 1", n)
	}
	if n := a.calls.Load(); n != 32 {
		t.Fatalf("server got %d calls, want 32", n)
	}
}

func TestStreamOpensOnLiveAddress(t *testing.T) {
	b := &testAdmin{name: "b"}
	addrB, _ := startServer(t, b)
	c := newClient(t, testConfig(deadAddr(t), addrB))

	stream, err := c.Admin().Watch(t.Context(), &berthv1.WatchRequest{})
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	if got := resp.GetReset_().GetReason(); got != "b" {
		t.Fatalf("stream served by %q, want b", got)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("second Recv = %v, want EOF", err)
	}
}

func TestCallsAfterCloseFail(t *testing.T) {
	addrA, _ := startServer(t, &testAdmin{name: "a"})
	c := newClient(t, testConfig(addrA))
	servedBy(t, c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := c.Admin().ClusterStatus(t.Context(), &berthv1.ClusterStatusRequest{})
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("err = %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestNotLeaderEncoding(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		want     *NotLeaderError
		wantCode codes.Code
	}{
		{
			name:     "status",
			err:      NotLeaderStatus("n1", "10.0.0.1:7000").Err(),
			want:     &NotLeaderError{LeaderID: "n1", LeaderAddress: "10.0.0.1:7000"},
			wantCode: codes.Unavailable,
		},
		{
			name:     "wrapped status",
			err:      fmt.Errorf("list: %w", NotLeaderStatus("n1", "").Err()),
			want:     &NotLeaderError{LeaderID: "n1"},
			wantCode: codes.Unavailable,
		},
		{
			name:     "typed",
			err:      &NotLeaderError{LeaderID: "n3"},
			want:     &NotLeaderError{LeaderID: "n3"},
			wantCode: codes.Unavailable,
		},
		{
			name:     "other code, same info",
			err:      withInfo(t, codes.FailedPrecondition, notLeaderReason, errorDomain),
			want:     &NotLeaderError{LeaderID: "x"},
			wantCode: codes.FailedPrecondition,
		},
		{
			name:     "plain unavailable",
			err:      status.Error(codes.Unavailable, "down"),
			wantCode: codes.Unavailable,
		},
		{
			name:     "other domain",
			err:      withInfo(t, codes.Unavailable, notLeaderReason, "example.com"),
			wantCode: codes.Unavailable,
		},
		{
			name: "not grpc",
			err:  errors.New("boom"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := AsNotLeader(tt.err)
			if ok != (tt.want != nil) {
				t.Fatalf("AsNotLeader ok = %v, want %v", ok, tt.want != nil)
			}
			if tt.want != nil && *got != *tt.want {
				t.Fatalf("AsNotLeader = %+v, want %+v", got, tt.want)
			}
			if tt.wantCode != 0 {
				if code := status.Code(tt.err); code != tt.wantCode {
					t.Fatalf("code = %s, want %s", code, tt.wantCode)
				}
			}
		})
	}
	if _, ok := AsNotLeader(nil); ok {
		t.Fatal("AsNotLeader(nil) = true")
	}
}

func withInfo(t *testing.T, code codes.Code, reason, domain string) error {
	t.Helper()
	st, err := status.New(code, "x").WithDetails(&errdetails.ErrorInfo{
		Reason: reason, Domain: domain, Metadata: map[string]string{metaLeaderID: "x"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name      string
		edit      func(*Config)
		wantErr   string
		wantAddrs []string
	}{
		{name: "default", edit: func(*Config) {}, wantAddrs: []string{DefaultAddr}},
		{
			name:      "comma separated, trimmed, deduplicated",
			edit:      func(c *Config) { c.Addrs = []string{"a:1, b:2", "a:1", " ", "c:3"} },
			wantAddrs: []string{"a:1", "b:2", "c:3"},
		},
		{
			name:      "scheme target passes through",
			edit:      func(c *Config) { c.Addrs = []string{"dns:///berthd.berth.svc:7000"} },
			wantAddrs: []string{"dns:///berthd.berth.svc:7000"},
		},
		{name: "no addrs", edit: func(c *Config) { c.Addrs = []string{" , "} }, wantErr: "addr: at least one"},
		{name: "no port", edit: func(c *Config) { c.Addrs = []string{"localhost"} }, wantErr: "want host:port"},
		{name: "bad port", edit: func(c *Config) { c.Addrs = []string{"h:99999"} }, wantErr: "bad port"},
		{name: "no host", edit: func(c *Config) { c.Addrs = []string{":7000"} }, wantErr: "missing host"},
		{name: "negative retries", edit: func(c *Config) { c.Retries = -1 }, wantErr: "retries"},
		{name: "zero dial timeout", edit: func(c *Config) { c.DialTimeout = 0 }, wantErr: "dial timeout"},
		{name: "backoff max below base", edit: func(c *Config) { c.BackoffMax = time.Millisecond }, wantErr: "retry backoff max"},
		{name: "cert without key", edit: func(c *Config) { c.TLS.CertFile = "c.pem" }, wantErr: "tls: client certificate and key"},
		{
			name:    "insecure with tls files",
			edit:    func(c *Config) { c.TLS.Insecure = true; c.TLS.CAFile = "ca.pem" },
			wantErr: "tls: insecure mode conflicts",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Default()
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate() = %v", err)
			}
			if !slices.Equal(cfg.Addrs, tt.wantAddrs) {
				t.Fatalf("Addrs = %v, want %v", cfg.Addrs, tt.wantAddrs)
			}
		})
	}
}

func TestLoadEnv(t *testing.T) {
	cfg := Default()
	env := map[string]string{EnvAddr: "10.0.0.1:7000,10.0.0.2:7000", EnvToken: "s3cret"}
	cfg.LoadEnv(func(k string) string { return env[k] })
	if want := []string{"10.0.0.1:7000", "10.0.0.2:7000"}; !slices.Equal(cfg.Addrs, want) {
		t.Fatalf("Addrs = %v, want %v", cfg.Addrs, want)
	}
	if cfg.Token != "s3cret" {
		t.Fatalf("Token = %q", cfg.Token)
	}
}

func TestBackoffBounds(t *testing.T) {
	cfg := testConfig("127.0.0.1:1")
	cfg.BackoffBase = 100 * time.Millisecond
	cfg.BackoffMax = time.Second
	c := newClient(t, cfg)
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		for range 20 {
			if d := c.Backoff(n); d < want/2 || d > want {
				t.Fatalf("Backoff(%d) = %s, want in [%s, %s]", n, d, want/2, want)
			}
		}
	}
}
