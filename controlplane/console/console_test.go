package console

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/client"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// fakeAdmin is an AdminService with a fixed registry. With token set it
// refuses calls without "authorization: Bearer <token>", as a node with
// admin auth does. Watch sends a snapshot when asked from 0, then whatever
// the test pushes on watch.
type fakeAdmin struct {
	berthv1.UnimplementedAdminServiceServer
	token string
	state []*berthv1.Event
	index uint64
	watch chan *berthv1.WatchResponse

	mu      sync.Mutex
	starts  []uint64
	md      []metadata.MD
	watches int
}

func (f *fakeAdmin) check(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.md = append(f.md, md)
	f.mu.Unlock()
	if f.token == "" {
		return nil
	}
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+f.token {
		return status.Error(codes.Unauthenticated, "admin token: no such token")
	}
	return nil
}

func (f *fakeAdmin) ClusterStatus(ctx context.Context, _ *berthv1.ClusterStatusRequest) (*berthv1.ClusterStatusResponse, error) {
	if err := f.check(ctx); err != nil {
		return nil, err
	}
	return &berthv1.ClusterStatusResponse{LeaderId: "cp0", Term: 3, CommitIndex: f.index, AppliedIndex: f.index, ServedBy: "cp1", Servers: []*berthv1.ServerStatus{
		{Id: "cp0", State: "Leader", Healthy: true, Term: 3},
		{Id: "cp1", State: "Follower", Healthy: true, Term: 3, LastContactMs: 40},
		{Id: "cp2", State: "Unreachable", Error: "connection refused"},
	}}, nil
}

func (f *fakeAdmin) ListProxies(ctx context.Context, req *berthv1.ListProxiesRequest) (*berthv1.ListProxiesResponse, error) {
	if err := f.check(ctx); err != nil {
		return nil, err
	}
	// Two pages, so paging is followed.
	if req.PageToken == "" {
		return &berthv1.ListProxiesResponse{TargetConnections: map[string]float64{"p0": 1.5}, NextPageToken: "more",
			Load: map[string]*berthv1.LoadSample{"p0": {ProxyId: "p0", ActiveStreams: 4, CpuMillicores: 120, MemoryBytes: 1 << 20}}}, nil
	}
	return &berthv1.ListProxiesResponse{TargetConnections: map[string]float64{"p1": 1.5}}, nil
}

func (f *fakeAdmin) ListEndpoints(ctx context.Context, _ *berthv1.ListEndpointsRequest) (*berthv1.ListEndpointsResponse, error) {
	if err := f.check(ctx); err != nil {
		return nil, err
	}
	return &berthv1.ListEndpointsResponse{Connectivity: []*berthv1.EndpointConnectivity{
		{Endpoint: "pay", ProxyId: "p0", State: berthv1.ConnectivityState_CONNECTIVITY_STATE_READY},
	}}, nil
}

func (f *fakeAdmin) Watch(req *berthv1.WatchRequest, stream berthv1.AdminService_WatchServer) error {
	if err := f.check(stream.Context()); err != nil {
		return err
	}
	f.mu.Lock()
	f.starts = append(f.starts, req.StartIndex)
	f.watches++
	f.mu.Unlock()
	if req.StartIndex == 0 {
		half := len(f.state) / 2 // two chunks
		for i, chunk := range [][]*berthv1.Event{f.state[:half], f.state[half:]} {
			if err := stream.Send(&berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Snapshot{Snapshot: &berthv1.WatchSnapshot{
				Index: f.index, Events: chunk, Done: i == 1}}}); err != nil {
				return err
			}
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case resp, ok := <-f.watch:
			if !ok {
				return status.Error(codes.Unavailable, "node shutting down")
			}
			if err := stream.Send(resp); err != nil {
				return err
			}
		}
	}
}

func (f *fakeAdmin) lastMD() metadata.MD {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.md[len(f.md)-1]
}

func (f *fakeAdmin) watchStarts() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.starts...)
}

func proxyEv(i uint64, id, label string, st berthv1.ProxyStatus) *berthv1.Event {
	return &berthv1.Event{Index: i, Op: berthv1.EventOp_EVENT_OP_UPSERT, Object: &berthv1.Event_Proxy{Proxy: &berthv1.Proxy{
		Id: id, Region: "eu", Zone: "a", Status: st, Labels: map[string]string{"name": label}, Version: i}}}
}

func connEv(i uint64, id, proxy string) *berthv1.Event {
	return &berthv1.Event{Index: i, Op: berthv1.EventOp_EVENT_OP_UPSERT, Object: &berthv1.Event_Connection{Connection: &berthv1.Connection{
		Id: id, ProxyId: proxy, Endpoints: []string{"pay"}, State: berthv1.ConnectionState_CONNECTION_STATE_ACTIVE, Version: i}}}
}

func moveEv(i uint64, id string, st berthv1.MoveState) *berthv1.Event {
	return &berthv1.Event{Index: i, Op: berthv1.EventOp_EVENT_OP_UPSERT, Object: &berthv1.Event_Move{Move: &berthv1.Move{
		Id: id, ConnectionId: "c0", FromProxyId: "p0", ToProxyId: "p1", State: st, Reason: "balance", Version: i}}}
}

// newFake returns a fake registry: two proxies, three connections, one
// endpoint, one move in flight and 25 finished ones.
func newFake() *fakeAdmin {
	f := &fakeAdmin{index: 100, watch: make(chan *berthv1.WatchResponse, 16)}
	f.state = append(f.state,
		proxyEv(1, "p0", "<script>alert(1)</script>", berthv1.ProxyStatus_PROXY_STATUS_ACTIVE),
		proxyEv(2, "p1", "plain", berthv1.ProxyStatus_PROXY_STATUS_ACTIVE),
		connEv(3, "c0", "p0"), connEv(4, "c1", "p0"), connEv(5, "c2", "p1"),
		&berthv1.Event{Index: 6, Object: &berthv1.Event_Endpoint{Endpoint: &berthv1.Endpoint{Name: "pay", ConnectionCount: 3, ProxyIds: []string{"p0", "p1"}, Version: 6}}},
		moveEv(7, "m-open", berthv1.MoveState_MOVE_STATE_PENDING),
	)
	for i := range 25 {
		f.state = append(f.state, moveEv(uint64(10+i), fmt.Sprintf("m%02d", i), berthv1.MoveState_MOVE_STATE_COMPLETED))
	}
	return f
}

// serve runs f on a loopback gRPC server and a console over it.
func serve(t *testing.T, f *fakeAdmin, cfg Config) *httptest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	berthv1.RegisterAdminServiceServer(gs, f)
	go func() { _ = gs.Serve(ln) }()
	cc, err := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg, berthv1.NewAdminServiceClient(cc), slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	c.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		_ = cc.Close()
		gs.Stop()
	})
	return hs
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func get(t *testing.T, url string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestStaticPage(t *testing.T) {
	hs := serve(t, newFake(), Default())
	resp := get(t, hs.URL+"/ui/", nil)
	html := body(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(html, `<script src="app.js" defer></script>`) {
		t.Fatalf("index: %d %.300s", resp.StatusCode, html)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Fatalf("CSP: %q", csp)
	}
	for path, ctype := range map[string]string{"/ui/app.js": "javascript", "/ui/style.css": "text/css"} {
		resp := get(t, hs.URL+path, nil)
		if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), ctype) {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	js := body(t, get(t, hs.URL+"/ui/app.js", nil))
	if strings.Contains(js, "innerHTML") && strings.Count(js, "innerHTML") != strings.Count(js, "never assigns innerHTML") {
		t.Fatal("app.js assigns innerHTML")
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := noRedirect.Get(hs.URL + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Body.Close()
	if r.StatusCode != http.StatusMovedPermanently || r.Header.Get("Location") != "/ui/" {
		t.Fatalf("/ui: %d %q", r.StatusCode, r.Header.Get("Location"))
	}
}

func TestSnapshot(t *testing.T) {
	f := newFake()
	hs := serve(t, f, Default())
	resp := get(t, hs.URL+"/ui/api/snapshot", nil)
	raw := body(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("snapshot: %d %s", resp.StatusCode, raw)
	}
	var s snapshotView
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		t.Fatal(err)
	}
	open := 0
	for _, m := range s.Moves {
		if !finished(m) {
			open++
		}
	}
	switch {
	case s.Index != 100:
		t.Errorf("index %d, want 100", s.Index)
	case len(s.Proxies) != 2 || len(s.Connections) != 3 || len(s.Endpoints) != 1:
		t.Errorf("registry: %d proxies, %d connections, %d endpoints", len(s.Proxies), len(s.Connections), len(s.Endpoints))
	case open != 1 || len(s.Moves) != 1+20:
		t.Errorf("moves: %d open of %d, want 1 open and the 20 latest finished", open, len(s.Moves))
	case s.Moves[1].ID != "m24":
		t.Errorf("newest finished move first: got %s", s.Moves[1].ID)
	case s.Proxies[0].Status != "ACTIVE" || s.Proxies[0].Labels["name"] != "<script>alert(1)</script>":
		t.Errorf("proxy: %+v", s.Proxies[0])
	case s.Derived.Targets["p0"] != 1.5 || s.Derived.Targets["p1"] != 1.5:
		t.Errorf("targets over both pages: %v", s.Derived.Targets)
	case s.Derived.Connectivity["pay"]["p0"] != "READY" || s.Derived.Load["p0"].ActiveStreams != 4:
		t.Errorf("derived: %+v", s.Derived)
	case s.Cluster.Leader != "cp0" || len(s.Cluster.Servers) != 3 || s.Cluster.Servers[2].Error == "":
		t.Errorf("cluster: %+v", s.Cluster)
	}
	// JSON escapes markup characters, so even a page that wrongly parsed
	// the body as HTML would not meet a raw tag.
	if strings.Contains(raw, "<script>") {
		t.Error("snapshot JSON carries a raw <script>")
	}
	if md := f.lastMD(); len(md.Get(client.OnBehalfKey)) != 1 {
		t.Errorf("calls are not marked as relayed: %v", md)
	}
}

func TestAuth(t *testing.T) {
	f := newFake()
	f.token = "bat_abc_secret"
	hs := serve(t, f, Default())
	for _, tc := range []struct {
		name   string
		path   string
		hdr    map[string]string
		status int
		want   string
	}{
		{"no token", "/ui/api/snapshot", nil, http.StatusUnauthorized, "no such token"},
		{"wrong token", "/ui/api/snapshot", map[string]string{"Authorization": "Bearer bat_abc_other"}, http.StatusUnauthorized, "no such token"},
		{"not bearer", "/ui/api/snapshot", map[string]string{"Authorization": "Basic dXNlcjpwdw=="}, http.StatusUnauthorized, `want \"Bearer `},
		{"empty bearer", "/ui/api/snapshot", map[string]string{"Authorization": "Bearer "}, http.StatusUnauthorized, "Bearer"},
		{"not ASCII", "/ui/api/snapshot", map[string]string{"Authorization": "Bearer bat_\u00e9"}, http.StatusUnauthorized, "printable ASCII"},
		{"space inside", "/ui/api/snapshot", map[string]string{"Authorization": "Bearer bat_a b"}, http.StatusUnauthorized, "printable ASCII"},
		{"too long", "/ui/api/snapshot", map[string]string{"Authorization": "Bearer " + strings.Repeat("a", 5000)}, http.StatusUnauthorized, "at most 4096"},
		{"token in URL", "/ui/api/snapshot?token=bat_abc_secret", map[string]string{"Authorization": "Bearer bat_abc_secret"}, http.StatusBadRequest, "never in the URL"},
		{"events without token", "/ui/events", nil, http.StatusUnauthorized, "no such token"},
		{"good token", "/ui/api/snapshot", map[string]string{"Authorization": "Bearer bat_abc_secret"}, http.StatusOK, `"proxies"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := get(t, hs.URL+tc.path, tc.hdr)
			b := body(t, resp)
			if resp.StatusCode != tc.status || !strings.Contains(b, tc.want) {
				t.Fatalf("got %d %.300s; want %d containing %q", resp.StatusCode, b, tc.status, tc.want)
			}
			if tc.status == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
				t.Fatal("401 without WWW-Authenticate")
			}
		})
	}
	if md := f.lastMD(); md.Get("authorization")[0] != "Bearer bat_abc_secret" || len(md.Get(client.OnBehalfKey)) != 1 {
		t.Fatalf("token not relayed as the caller's: %v", md)
	}
}

// sse reads Server-Sent Events from an open response.
type sse struct {
	t  *testing.T
	ch chan sseMsg
}

type sseMsg struct {
	event, id, data string
}

func openEvents(t *testing.T, url string, hdr map[string]string) (*http.Response, *sse) {
	t.Helper()
	resp := get(t, url, hdr)
	s := &sse{t: t, ch: make(chan sseMsg, 64)}
	if resp.StatusCode != http.StatusOK {
		return resp, s
	}
	go func() {
		defer close(s.ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var m sseMsg
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if m.data != "" {
					s.ch <- m
				}
				m = sseMsg{}
			case strings.HasPrefix(line, "event: "):
				m.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "id: "):
				m.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "data: "):
				m.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return resp, s
}

// next returns the next message named event, skipping cluster, derived
// and heartbeat messages unless asked for.
func (s *sse) next(event string) sseMsg {
	s.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-s.ch:
			if !ok {
				s.t.Fatalf("stream ended waiting for %q", event)
			}
			if m.event == event {
				return m
			}
		case <-timeout:
			s.t.Fatalf("no %q message within 10s", event)
		}
	}
}

func TestEventsResumeFromLastEventID(t *testing.T) {
	f := newFake()
	cfg := Default()
	cfg.DerivedMinInterval = 10 * time.Millisecond
	hs := serve(t, f, cfg)
	resp, s := openEvents(t, hs.URL+"/ui/events", map[string]string{"Last-Event-ID": "101"})
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("events: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if m := s.next("cluster"); !strings.Contains(m.data, `"leader":"cp0"`) {
		t.Fatalf("cluster: %s", m.data)
	}
	s.next("derived")
	// 101 was seen already: only 102 and 103 go out, with the highest as id.
	f.watch <- &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Events{Events: &berthv1.WatchEvents{Events: []*berthv1.Event{
		proxyEv(101, "p0", "old", berthv1.ProxyStatus_PROXY_STATUS_ACTIVE),
		proxyEv(102, "p0", "x", berthv1.ProxyStatus_PROXY_STATUS_DRAINING),
		connEv(103, "c9", "p1"),
	}}}}
	m := s.next("events")
	var got struct{ Events []eventView }
	if err := json.Unmarshal([]byte(m.data), &got); err != nil {
		t.Fatal(err)
	}
	if m.id != "103" || len(got.Events) != 2 || got.Events[0].Proxy.Status != "DRAINING" || got.Events[1].Connection.Proxy != "p1" {
		t.Fatalf("events id %s: %s", m.id, m.data)
	}
	if starts := f.watchStarts(); len(starts) != 1 || starts[0] != 101 {
		t.Fatalf("watch start indexes %v, want [101]", starts)
	}
	// Registry events prompt a fresh read of targets.
	s.next("derived")
	// A reset and a fresh snapshot replace the page's registry.
	f.watch <- &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Reset_{Reset_: &berthv1.WatchReset{Reason: "slow"}}}
	f.watch <- &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Snapshot{Snapshot: &berthv1.WatchSnapshot{Index: 150, Events: f.state[:2]}}}
	f.watch <- &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Snapshot{Snapshot: &berthv1.WatchSnapshot{Index: 150, Events: f.state[2:], Done: true}}}
	s.next("reset")
	m = s.next("snapshot")
	var reg registry
	if err := json.Unmarshal([]byte(m.data), &reg); err != nil {
		t.Fatal(err)
	}
	if m.id != "150" || reg.Index != 150 || len(reg.Proxies) != 2 || len(reg.Connections) != 3 {
		t.Fatalf("snapshot id %s: %d proxies, %d connections", m.id, len(reg.Proxies), len(reg.Connections))
	}
	// The watch failing ends the stream with an error message.
	close(f.watch)
	if m := s.next("error"); !strings.Contains(m.data, "shutting down") || !strings.Contains(m.data, `"code":"Unavailable"`) {
		t.Fatalf("error: %s", m.data)
	}
}

func TestEventsFromZeroStartWithSnapshot(t *testing.T) {
	f := newFake()
	hs := serve(t, f, Default())
	_, s := openEvents(t, hs.URL+"/ui/events", nil)
	if m := s.next("snapshot"); m.id != "100" {
		t.Fatalf("snapshot id %q, want 100", m.id)
	}
}

func TestEventsBadLastEventID(t *testing.T) {
	hs := serve(t, newFake(), Default())
	for _, id := range []string{"abc", "-1", "1e3", "18446744073709551616", strings.Repeat("9", 100)} {
		resp := get(t, hs.URL+"/ui/events", map[string]string{"Last-Event-ID": id})
		b := body(t, resp)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(b, "Last-Event-ID") || len(b) > 400 {
			t.Fatalf("Last-Event-ID %q: %d %s", id, resp.StatusCode, b)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Default()
	bad.Heartbeat = 0
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "heartbeat") {
		t.Fatalf("zero heartbeat: %v", err)
	}
	bad = Default()
	bad.FinishedMoves = -1
	if _, err := New(bad, nil, nil); err == nil {
		t.Fatal("negative finished moves accepted")
	}
}

// FuzzRequestHeaders: whatever a browser (or anything else) sends as
// Authorization and Last-Event-ID gets a value or a clear error, never a
// panic, and an accepted token is always relayed exactly.
func FuzzRequestHeaders(f *testing.F) {
	f.Add("Bearer bat_abc_secret", "42")
	f.Add("bearer x", "")
	f.Add("Basic dXNlcjpwdw==", "-1")
	f.Add("Bearer ", "18446744073709551616")
	f.Add("Bearer a\x00b", " 7 ")
	f.Fuzz(func(t *testing.T, auth, lastID string) {
		r := httptest.NewRequest(http.MethodGet, "/ui/events", nil)
		r.Header["Authorization"] = []string{auth}
		r.Header["Last-Event-Id"] = []string{lastID}
		if _, err := parseLastEventID(r); err != nil && !strings.Contains(err.Error(), "Last-Event-ID") {
			t.Fatalf("unclear error: %v", err)
		}
		ctx, err := callContext(context.Background(), r)
		if err != nil {
			if httpStatus(err) != http.StatusUnauthorized {
				t.Fatalf("bad Authorization %q: status %d", auth, httpStatus(err))
			}
			return
		}
		md, _ := metadata.FromOutgoingContext(ctx)
		if got := md.Get("authorization"); len(got) != 1 || !strings.EqualFold(got[0][:7], auth[:7]) || got[0][7:] != auth[7:] {
			t.Fatalf("Authorization %q relayed as %q", auth, got)
		}
	})
}
