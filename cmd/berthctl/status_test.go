package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func testProxies(n int) []*berthv1.Proxy {
	var ps []*berthv1.Proxy
	for i := range n {
		ps = append(ps, &berthv1.Proxy{
			Id:     fmt.Sprintf("p%d", i),
			Region: "eu", Zone: fmt.Sprintf("eu-%c", 'a'+i%2),
			Addresses: &berthv1.ProxyAddresses{
				Tunnel: fmt.Sprintf("10.0.0.%d:7100", i), Downstream: fmt.Sprintf("10.0.0.%d:80", i),
			},
			Labels:         map[string]string{"rack": "r1"},
			CapacityWeight: 1,
			Status:         berthv1.ProxyStatus_PROXY_STATUS_ACTIVE,
			AdminState:     berthv1.AdminState_ADMIN_STATE_NONE,
			Health:         berthv1.Health_HEALTH_HEALTHY,
			Version:        uint64(100 + i),
		})
	}
	return ps
}

func proxyFake() *fakeAdmin {
	return &fakeAdmin{
		pageSize: 2,
		proxies:  testProxies(5),
		load: map[string]*berthv1.LoadSample{
			"p1": {ProxyId: "p1", Connections: 12, ActiveStreams: 3, CpuMillicores: 1500, MemoryBytes: 512 << 20},
		},
	}
}

// parseOutput reads stdout back in the given format into m.
func parseOutput(t *testing.T, format, out string, m proto.Message) {
	t.Helper()
	js := []byte(out)
	if format == formatYAML {
		var v any
		if err := yaml.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("yaml.Unmarshal: %v\n%s", err, out)
		}
		var err error
		if js, err = json.Marshal(v); err != nil {
			t.Fatalf("yaml output is not JSON-shaped: %v", err)
		}
	}
	if err := protojson.Unmarshal(js, m); err != nil {
		t.Fatalf("protojson.Unmarshal: %v\n%s", err, out)
	}
}

func TestStatusProxiesFollowsPagesWithFilters(t *testing.T) {
	f := proxyFake()
	addr := serve(t, f)
	r := berthctl(t, addr, "status", "proxies", "--status", "Active,DRAINING", "--status", "active",
		"--region", "eu", "--consistency", "LINEARIZABLE", "-o", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	reqs := requestsOf[*berthv1.ListProxiesRequest](f)
	var tokens []string
	for _, req := range reqs {
		tokens = append(tokens, req.GetPageToken())
		want := []berthv1.ProxyStatus{berthv1.ProxyStatus_PROXY_STATUS_ACTIVE, berthv1.ProxyStatus_PROXY_STATUS_DRAINING}
		if !slices.Equal(req.GetStatuses(), want) {
			t.Errorf("statuses = %v, want %v", req.GetStatuses(), want)
		}
		if req.GetRegion() != "eu" || req.GetConsistency() != berthv1.Consistency_CONSISTENCY_LINEARIZABLE {
			t.Errorf("request = %v, want region eu and linearizable", req)
		}
	}
	if want := []string{"", "2", "4"}; !slices.Equal(tokens, want) {
		t.Fatalf("page tokens = %q, want %q", tokens, want)
	}

	var got berthv1.ListProxiesResponse
	parseOutput(t, formatJSON, r.stdout, &got)
	if len(got.GetProxies()) != 5 {
		t.Fatalf("got %d proxies, want all 5 pages' worth", len(got.GetProxies()))
	}
	for i, p := range got.GetProxies() {
		if !proto.Equal(p, f.proxies[i]) {
			t.Errorf("proxy %d = %v, want %v", i, p, f.proxies[i])
		}
	}
	if !proto.Equal(got.GetLoad()["p1"], f.load["p1"]) {
		t.Errorf("load = %v, want p1's sample", got.GetLoad())
	}
	if got.GetNextPageToken() != "" {
		t.Errorf("next_page_token = %q, want empty after following every page", got.GetNextPageToken())
	}
}

func TestStatusProxiesDefaults(t *testing.T) {
	f := proxyFake()
	addr := serve(t, f)
	r := berthctl(t, addr, "status", "proxies", "--page-size", "10")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	reqs := requestsOf[*berthv1.ListProxiesRequest](f)
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	want := &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_DEFAULT, PageSize: 10}
	if !proto.Equal(reqs[0], want) {
		t.Fatalf("request = %v, want %v", reqs[0], want)
	}
}

func TestStatusProxiesTable(t *testing.T) {
	f := proxyFake()
	addr := serve(t, f)
	r := berthctl(t, addr, "status", "proxies")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 6 {
		t.Fatalf("got %d lines, want header + 5", len(lines))
	}
	// The balance view: registry connections against the planner's
	// target, then load as last sampled.
	for _, col := range []string{"ID", "REGION", "ZONE", "STATUS", "WEIGHT", "CONNECTIONS", "TARGET", "STREAMS", "CPU", "MEMORY", "VERSION"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header %q lacks %s", lines[0], col)
		}
	}
	p1 := strings.Fields(lines[2])
	want := []string{"p1", "eu", "eu-b", "active", "1", "11", "10.5", "3", "1500m", "512.0MiB", "101"}
	if !slices.Equal(p1, want) {
		t.Errorf("p1 row = %q, want %q", p1, want)
	}
	if p0 := strings.Fields(lines[1]); p0[7] != "-" || p0[8] != "-" || p0[9] != "-" {
		t.Errorf("p0 row = %q, want '-' for missing load", p0)
	}
}

func TestStatusRejectsUnknownEnumValues(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{
			args: []string{"status", "proxies", "--status", "activ"},
			want: `error: unknown status "activ": valid values are active, cordoned, draining, unhealthy, down` + "\n",
		},
		{
			args: []string{"status", "proxies", "--status", "active,"},
			want: "error: empty status: valid values are active, cordoned, draining, unhealthy, down\n",
		},
		{
			args: []string{"status", "proxies", "--status", ""},
			want: "error: empty status: valid values are active, cordoned, draining, unhealthy, down\n",
		},
		{
			args: []string{"status", "moves", "--state", "pending,done"},
			want: `error: unknown state "done": valid values are pending, accepted, completed, aborted` + "\n",
		},
		{
			args: []string{"status", "connections", "--consistency", "strong"},
			want: `error: unknown consistency "strong": valid values are stale, default, linearizable` + "\n",
		},
		{
			args: []string{"status", "cluster", "-o", "xml"},
			want: `error: unknown output format "xml": valid values are table, json, yaml` + "\n",
		},
		{
			args: []string{"watch", "proxy"},
			want: `error: unknown topic "proxy": valid values are proxies, connections, moves, endpoints, assignments, servers` + "\n",
		},
		{
			args: []string{"status", "proxys"},
			want: `error: unknown status subject "proxys": valid subjects are cluster, proxies, endpoints, connections, moves` + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f := proxyFake()
			addr := serve(t, f)
			r := berthctl(t, addr, tt.args...)
			if r.code != 1 {
				t.Errorf("exit %d, want 1", r.code)
			}
			if r.stderr != tt.want {
				t.Errorf("stderr = %q, want %q", r.stderr, tt.want)
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
			if n := f.requestCount(); n != 0 {
				t.Errorf("server got %d requests, want none", n)
			}
		})
	}
}

func TestStatusOutputFormatsParseBack(t *testing.T) {
	f := proxyFake()
	f.cluster = &berthv1.ClusterStatusResponse{
		LeaderId: "n1", LeaderAddress: "127.0.0.1:7000", Term: 3, CommitIndex: 1 << 40, AppliedIndex: 1 << 40, ServedBy: "n2",
		Servers: []*berthv1.ServerStatus{
			{Id: "n1", RaftAddress: "127.0.0.1:8000", GrpcAddress: "127.0.0.1:7000", Suffrage: berthv1.ServerSuffrage_SERVER_SUFFRAGE_VOTER, State: "Leader", Healthy: true},
			{Id: "n2", Suffrage: berthv1.ServerSuffrage_SERVER_SUFFRAGE_NONVOTER, State: "Unreachable", Error: "dial: refused\nretrying", LastContactMs: 1500},
		},
	}
	f.endpoints = []*berthv1.Endpoint{{Name: "payments", ConnectionCount: 3, ProxyIds: []string{"p0", "p1"}, Version: 7}, {Name: "true", Version: 8}}
	f.connections = []*berthv1.Connection{{Id: "c1", Slot: "s1", AgentId: "a1", Endpoints: []string{"payments"}, ProxyId: "p0", State: berthv1.ConnectionState_CONNECTION_STATE_MOVING, MoveId: "m1", OpenedUnixMs: 1700000000000, Version: 9}}
	f.moves = []*berthv1.Move{{Id: "m1", ConnectionId: "c1", FromProxyId: "p0", ToProxyId: "p1", State: berthv1.MoveState_MOVE_STATE_ABORTED, Reason: "rebalance", AbortReason: "deadline", Version: 10}}
	addr := serve(t, f)

	header := &berthv1.ReadHeader{Index: 42, ServedBy: "n1"}
	tests := []struct {
		args []string
		want proto.Message
	}{
		{[]string{"status", "cluster"}, f.cluster},
		{[]string{"status", "proxies"}, &berthv1.ListProxiesResponse{Proxies: f.proxies, Load: f.load, Header: header,
			// The fake numbers each page's proxies from 10 (pages of 2).
			ConnectionCounts:  map[string]uint32{"p0": 10, "p1": 11, "p2": 10, "p3": 11, "p4": 10},
			TargetConnections: map[string]float64{"p0": 10.5, "p1": 10.5, "p2": 10.5, "p3": 10.5, "p4": 10.5}}},
		{[]string{"status", "endpoints"}, &berthv1.ListEndpointsResponse{Endpoints: f.endpoints, Header: header}},
		{[]string{"status", "connections"}, &berthv1.ListConnectionsResponse{Connections: f.connections, Header: header}},
		{[]string{"status", "moves"}, &berthv1.ListMovesResponse{Moves: f.moves, Header: header}},
		{[]string{"cordon", "p3"}, &berthv1.Proxy{Id: "p3", Region: "eu", AdminState: berthv1.AdminState_ADMIN_STATE_CORDONED, Status: berthv1.ProxyStatus_PROXY_STATUS_CORDONED, Health: berthv1.Health_HEALTH_HEALTHY, Version: 99}},
	}
	for _, tt := range tests {
		for _, format := range []string{formatJSON, formatYAML} {
			t.Run(strings.Join(tt.args, " ")+" "+format, func(t *testing.T) {
				r := berthctl(t, addr, append(tt.args, "-o", format)...)
				if r.code != 0 {
					t.Fatalf("exit %d: %s", r.code, r.stderr)
				}
				got := tt.want.ProtoReflect().New().Interface()
				parseOutput(t, format, r.stdout, got)
				if !proto.Equal(got, tt.want) {
					t.Fatalf("parsed output differs:\n%s", diff(got, tt.want))
				}
			})
		}
		t.Run(strings.Join(tt.args, " ")+" table", func(t *testing.T) {
			r := berthctl(t, addr, tt.args...)
			if r.code != 0 || r.stdout == "" {
				t.Fatalf("exit %d, stdout %q", r.code, r.stdout)
			}
		})
	}
}

func diff(got, want proto.Message) string {
	return fmt.Sprintf("got:  %v\nwant: %v", got, want)
}

func TestStatusOutputUsesProtoFieldNames(t *testing.T) {
	f := proxyFake()
	addr := serve(t, f)
	r := berthctl(t, addr, "status", "proxies", "-o", "yaml")
	for _, name := range []string{"next_page_token:", "capacity_weight:", "admin_state: ADMIN_STATE_NONE", "cpu_millicores: 1500", "served_by: n1"} {
		if !strings.Contains(r.stdout, name) {
			t.Errorf("yaml output lacks %q:\n%s", name, r.stdout)
		}
	}
}

func TestStatusClusterTable(t *testing.T) {
	f := &fakeAdmin{cluster: &berthv1.ClusterStatusResponse{
		LeaderId: "n1", LeaderAddress: "127.0.0.1:7000", Term: 3, CommitIndex: 17, AppliedIndex: 16, ServedBy: "n2",
		Servers: []*berthv1.ServerStatus{
			{Id: "n1", RaftAddress: "127.0.0.1:8000", GrpcAddress: "127.0.0.1:7000", Suffrage: berthv1.ServerSuffrage_SERVER_SUFFRAGE_VOTER, State: "Leader", Healthy: true, Term: 3},
			{Id: "n3", RaftAddress: "127.0.0.1:8002", Suffrage: berthv1.ServerSuffrage_SERVER_SUFFRAGE_VOTER, State: "Unreachable", Error: "connection refused", LastContactMs: 2500},
		},
	}}
	addr := serve(t, f)
	r := berthctl(t, addr, "status", "cluster")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	for _, want := range []string{"LEADER:", "n1 (127.0.0.1:7000)", "TERM:", "COMMIT INDEX:", "17", "APPLIED INDEX:", "16", "SERVED BY:", "LAST CONTACT", "2.5s ago", "connection refused"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	var n3 string
	for line := range strings.Lines(r.stdout) {
		if strings.HasPrefix(line, "n3 ") {
			n3 = line
		}
	}
	if got := strings.Fields(n3); len(got) < 6 || got[3] != "voter" || got[4] != "Unreachable" || got[5] != "no" {
		t.Errorf("n3 row = %q", n3)
	}
}

func TestStatusEndpointsConnectionsMovesRequests(t *testing.T) {
	f := &fakeAdmin{
		pageSize:    1,
		endpoints:   []*berthv1.Endpoint{{Name: "a"}, {Name: "b"}},
		connections: []*berthv1.Connection{{Id: "c1"}, {Id: "c2"}, {Id: "c3"}},
		moves:       []*berthv1.Move{{Id: "m1"}, {Id: "m2"}},
	}
	addr := serve(t, f)

	r := berthctl(t, addr, "status", "endpoints", "--proxy", "p1", "--consistency", "stale")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	wantEndpoints := []*berthv1.ListEndpointsRequest{
		{Consistency: berthv1.Consistency_CONSISTENCY_STALE, ProxyId: "p1"},
		{Consistency: berthv1.Consistency_CONSISTENCY_STALE, ProxyId: "p1", PageToken: "1"},
	}
	assertRequests(t, requestsOf[*berthv1.ListEndpointsRequest](f), wantEndpoints)

	r = berthctl(t, addr, "status", "connections", "--proxy", "p1", "--endpoint", "payments", "--consistency", "linearizable")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	var wantConns []*berthv1.ListConnectionsRequest
	for _, tok := range []string{"", "1", "2"} {
		wantConns = append(wantConns, &berthv1.ListConnectionsRequest{
			Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE, ProxyId: "p1", Endpoint: "payments", PageToken: tok,
		})
	}
	assertRequests(t, requestsOf[*berthv1.ListConnectionsRequest](f), wantConns)
	if got := strings.Count(r.stdout, "\nc"); got != 3 {
		t.Errorf("table has %d connection rows, want 3:\n%s", got, r.stdout)
	}

	r = berthctl(t, addr, "status", "moves", "--state", "pending,ACCEPTED", "--state", "move_state_aborted", "--proxy", "p2")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	states := []berthv1.MoveState{berthv1.MoveState_MOVE_STATE_PENDING, berthv1.MoveState_MOVE_STATE_ACCEPTED, berthv1.MoveState_MOVE_STATE_ABORTED}
	wantMoves := []*berthv1.ListMovesRequest{
		{Consistency: berthv1.Consistency_CONSISTENCY_DEFAULT, States: states, ProxyId: "p2"},
		{Consistency: berthv1.Consistency_CONSISTENCY_DEFAULT, States: states, ProxyId: "p2", PageToken: "1"},
	}
	assertRequests(t, requestsOf[*berthv1.ListMovesRequest](f), wantMoves)
}

func assertRequests[T proto.Message](t *testing.T, got, want []T) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d requests %v, want %d %v", len(got), got, len(want), want)
	}
	for i := range got {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("request %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestProxyActions(t *testing.T) {
	f := &fakeAdmin{}
	addr := serve(t, f)
	for _, verb := range []string{"cordon", "uncordon", "drain"} {
		r := berthctl(t, addr, verb, "p7")
		if r.code != 0 {
			t.Fatalf("%s: exit %d", verb, r.code)
		}
		if !strings.Contains(r.stdout, "p7") || !strings.Contains(r.stdout, "STATUS") {
			t.Errorf("%s printed %q, want the proxy table", verb, r.stdout)
		}
	}
	if got := requestsOf[*berthv1.CordonProxyRequest](f); len(got) != 1 || got[0].GetProxyId() != "p7" {
		t.Errorf("cordon requests = %v", got)
	}
	if got := requestsOf[*berthv1.UncordonProxyRequest](f); len(got) != 1 || got[0].GetProxyId() != "p7" {
		t.Errorf("uncordon requests = %v", got)
	}
	if got := requestsOf[*berthv1.DrainProxyRequest](f); len(got) != 1 || got[0].GetProxyId() != "p7" {
		t.Errorf("drain requests = %v", got)
	}

	r := berthctl(t, addr, "drain")
	if r.code != 1 || !strings.Contains(r.stderr, "accepts 1 arg(s)") {
		t.Errorf("drain without id: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestGRPCErrorsPrintPlainly(t *testing.T) {
	f := &fakeAdmin{actionErr: status.Error(codes.NotFound, `proxy "p9" not found`)}
	addr := serve(t, f)
	r := berthctl(t, addr, "cordon", "p9")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if want := "error: cordon p9: NotFound: proxy \"p9\" not found\n"; r.errorLine() != want {
		t.Fatalf("error line = %q, want %q", r.errorLine(), want)
	}
}

func TestUnreachableControlPlane(t *testing.T) {
	r := berthctl(t, deadAddr(t), "status", "cluster", "--retries", "1")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if !strings.Contains(r.stderr, "error: cluster status: Unavailable: ") || !strings.Contains(r.stderr, "(gave up after 2 attempts)") {
		t.Fatalf("stderr = %q", r.stderr)
	}
}

func TestAddrFailoverAndEnv(t *testing.T) {
	f := &fakeAdmin{cluster: &berthv1.ClusterStatusResponse{LeaderId: "n1"}}
	live := serve(t, f)
	dead := deadAddr(t)

	r := berthctl(t, dead+","+live, "status", "cluster", "-o", "json")
	if r.code != 0 || !strings.Contains(r.stdout, `"leader_id": "n1"`) {
		t.Fatalf("comma-separated --addr: exit %d, stdout %q", r.code, r.stdout)
	}
	r = berthctlEnv(t, nil, "--addr", dead, "--addr", live, "status", "cluster")
	if r.code != 0 {
		t.Fatalf("repeated --addr: exit %d", r.code)
	}
	r = berthctlEnv(t, map[string]string{"BERTH_ADDR": dead + "," + live}, "status", "cluster")
	if r.code != 0 {
		t.Fatalf("BERTH_ADDR: exit %d", r.code)
	}
	if n := len(requestsOf[*berthv1.ClusterStatusRequest](f)); n != 3 {
		t.Fatalf("server got %d requests, want 3", n)
	}
}

func TestVerboseLogsToStderr(t *testing.T) {
	f := proxyFake()
	addr := serve(t, f)
	quiet := berthctl(t, addr, "status", "proxies", "-o", "json")
	if strings.Contains(quiet.stderr, "level=DEBUG") {
		t.Errorf("debug logs without --verbose: %q", quiet.stderr)
	}
	loud := berthctl(t, addr, "-v", "status", "proxies", "-o", "json")
	if !strings.Contains(loud.stderr, "level=DEBUG") || !strings.Contains(loud.stderr, "served_by=n1") {
		t.Errorf("--verbose stderr = %q, want debug logs", loud.stderr)
	}
	if quiet.stdout != loud.stdout {
		t.Errorf("stdout differs with --verbose")
	}
}
