package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

type watchStream = grpc.ServerStreamingServer[berthv1.WatchResponse]

func proxyEvent(index uint64, id string) *berthv1.Event {
	return &berthv1.Event{
		Index: index, Op: berthv1.EventOp_EVENT_OP_UPSERT, Region: "eu",
		Object: &berthv1.Event_Proxy{Proxy: &berthv1.Proxy{
			Id: id, Region: "eu", Status: berthv1.ProxyStatus_PROXY_STATUS_ACTIVE, CapacityWeight: 1, Version: index,
		}},
	}
}

func connEvent(index uint64, id string) *berthv1.Event {
	return &berthv1.Event{
		Index: index, Op: berthv1.EventOp_EVENT_OP_DELETE, Region: "eu",
		Object: &berthv1.Event_Connection{Connection: &berthv1.Connection{
			Id: id, ProxyId: "p1", Endpoints: []string{"payments"}, State: berthv1.ConnectionState_CONNECTION_STATE_ACTIVE, Version: index,
		}},
	}
}

func snapshotResp(index uint64, done bool, evs ...*berthv1.Event) *berthv1.WatchResponse {
	return &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Snapshot{Snapshot: &berthv1.WatchSnapshot{Index: index, Events: evs, Done: done}}}
}

func eventsResp(evs ...*berthv1.Event) *berthv1.WatchResponse {
	return &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Events{Events: &berthv1.WatchEvents{Events: evs}}}
}

func resetResp(reason string) *berthv1.WatchResponse {
	return &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Reset_{Reset_: &berthv1.WatchReset{Reason: reason}}}
}

// sendAll sends msgs in order, then blocks until the client goes away when
// block is set.
func sendAll(stream watchStream, block bool, msgs ...*berthv1.WatchResponse) error {
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return err
		}
	}
	if block {
		<-stream.Context().Done()
	}
	return nil
}

// tableIndexes returns the INDEX column of a watch table.
func tableIndexes(t *testing.T, out string) []uint64 {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "INDEX") {
		t.Fatalf("no header in %q", out)
	}
	var idx []uint64
	for _, l := range lines[1:] {
		n, err := strconv.ParseUint(strings.Fields(l)[0], 10, 64)
		if err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		idx = append(idx, n)
	}
	return idx
}

func TestWatchCountPrintsJSONLines(t *testing.T) {
	want := []*berthv1.Event{proxyEvent(5, "p0"), proxyEvent(7, "p1"), connEvent(11, "c1")}
	f := &fakeAdmin{watch: func(_ int, _ *berthv1.WatchRequest, stream watchStream) error {
		return sendAll(stream, true,
			snapshotResp(10, true, want[0], want[1]),
			eventsResp(want[2], proxyEvent(12, "p2")))
	}}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "proxies", "Connections", "--region", "eu", "--proxy", "p1",
		"--endpoint", "payments", "--count", "3", "-o", "json")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3 (--count)", len(lines))
	}
	for i, l := range lines {
		var ev berthv1.Event
		if err := protojson.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		if !proto.Equal(&ev, want[i]) {
			t.Errorf("line %d = %v, want %v", i, &ev, want[i])
		}
	}
	reqs := requestsOf[*berthv1.WatchRequest](f)
	wantReq := &berthv1.WatchRequest{
		Topics: []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES, berthv1.Topic_TOPIC_CONNECTIONS},
		Filter: &berthv1.EventFilter{Region: "eu", ProxyId: "p1", Endpoint: "payments"},
	}
	if len(reqs) != 1 || !proto.Equal(reqs[0], wantReq) {
		t.Fatalf("requests = %v, want [%v]", reqs, wantReq)
	}
}

func TestWatchYAMLDocuments(t *testing.T) {
	f := &fakeAdmin{watch: func(_ int, _ *berthv1.WatchRequest, stream watchStream) error {
		return sendAll(stream, true, eventsResp(proxyEvent(5, "p0"), connEvent(6, "c1")))
	}}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "proxies", "--count", "2", "-o", "yaml")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	dec := yaml.NewDecoder(strings.NewReader(r.stdout))
	var got []uint64
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		js, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var ev berthv1.Event
		if err := protojson.Unmarshal(js, &ev); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		got = append(got, ev.GetIndex())
	}
	if !slices.Equal(got, []uint64{5, 6}) {
		t.Fatalf("indexes = %v, want [5 6]", got)
	}
}

func TestWatchResumesFromLastIndexAfterStreamError(t *testing.T) {
	f := &fakeAdmin{watch: func(n int, _ *berthv1.WatchRequest, stream watchStream) error {
		switch n {
		case 1:
			if err := sendAll(stream, false,
				snapshotResp(10, true, proxyEvent(5, "p0")),
				eventsResp(proxyEvent(11, "p1"), connEvent(12, "c1")),
				eventsResp(proxyEvent(13, "p2"))); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "node shutting down")
		default:
			// 13 again is a repeat and must not print twice.
			return sendAll(stream, true, eventsResp(proxyEvent(13, "p2"), proxyEvent(14, "p3")))
		}
	}}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "proxies", "connections", "--region", "eu", "--count", "5")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	if got := tableIndexes(t, r.stdout); !slices.Equal(got, []uint64{5, 11, 12, 13, 14}) {
		t.Fatalf("indexes = %v, want [5 11 12 13 14]", got)
	}
	reqs := requestsOf[*berthv1.WatchRequest](f)
	if len(reqs) != 2 {
		t.Fatalf("%d watch requests, want 2", len(reqs))
	}
	if reqs[0].GetStartIndex() != 0 || reqs[1].GetStartIndex() != 13 {
		t.Fatalf("start indexes = %d, %d; want 0, 13", reqs[0].GetStartIndex(), reqs[1].GetStartIndex())
	}
	if !proto.Equal(reqs[1].GetFilter(), reqs[0].GetFilter()) || !slices.Equal(reqs[1].GetTopics(), reqs[0].GetTopics()) {
		t.Fatalf("resumed request %v changed topics or filter from %v", reqs[1], reqs[0])
	}
	if !strings.Contains(r.stderr, "watch stream ended; resuming") || !strings.Contains(r.stderr, "node shutting down") {
		t.Errorf("stderr = %q, want a resume warning with the cause", r.stderr)
	}
}

func TestWatchDoesNotSkipAnUnfinishedSnapshot(t *testing.T) {
	f := &fakeAdmin{watch: func(n int, _ *berthv1.WatchRequest, stream watchStream) error {
		if n == 1 {
			// Half a snapshot, then the server ends the stream (EOF).
			return sendAll(stream, false, snapshotResp(10, false, proxyEvent(3, "p0")))
		}
		return sendAll(stream, true,
			snapshotResp(10, false, proxyEvent(3, "p0")),
			snapshotResp(10, true, proxyEvent(4, "p1")),
			eventsResp(proxyEvent(11, "p2")))
	}}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "proxies", "--from-index", "2", "--count", "4")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	if got := tableIndexes(t, r.stdout); !slices.Equal(got, []uint64{3, 3, 4, 11}) {
		t.Fatalf("indexes = %v, want [3 3 4 11]", got)
	}
	reqs := requestsOf[*berthv1.WatchRequest](f)
	if len(reqs) != 2 || reqs[0].GetStartIndex() != 2 || reqs[1].GetStartIndex() != 2 {
		t.Fatalf("requests = %v; want both from index 2 (the snapshot never finished)", reqs)
	}
}

func TestWatchResetThenFreshSnapshot(t *testing.T) {
	f := &fakeAdmin{watch: func(int, *berthv1.WatchRequest, watchStream) error { return nil }}
	f.watch = func(_ int, _ *berthv1.WatchRequest, stream watchStream) error {
		return sendAll(stream, true,
			eventsResp(proxyEvent(5, "p0")),
			resetResp("subscriber fell behind"),
			snapshotResp(20, true, proxyEvent(18, "p0")),
			eventsResp(proxyEvent(21, "p1")))
	}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "proxies", "--count", "3")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	if got := tableIndexes(t, r.stdout); !slices.Equal(got, []uint64{5, 18, 21}) {
		t.Fatalf("indexes = %v, want [5 18 21]", got)
	}
	if !strings.Contains(r.stderr, "subscriber fell behind") {
		t.Errorf("stderr = %q, want the reset reason", r.stderr)
	}
}

func TestWatchTableLine(t *testing.T) {
	f := &fakeAdmin{watch: func(_ int, _ *berthv1.WatchRequest, stream watchStream) error {
		return sendAll(stream, true, eventsResp(connEvent(12, "c1")))
	}}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "connections", "--count", "1")
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %q, want header and one event", r.stdout)
	}
	if got, want := strings.Fields(lines[0]), []string{"INDEX", "OP", "KIND", "ID", "SUMMARY"}; !slices.Equal(got, want) {
		t.Errorf("header = %q", got)
	}
	want := []string{"12", "delete", "connection", "c1", "proxy=p1", "state=active", "endpoints=payments", "region=eu"}
	if got := strings.Fields(lines[1]); !slices.Equal(got, want) {
		t.Errorf("line = %q, want %q", got, want)
	}
}

func TestWatchTimeout(t *testing.T) {
	f := &fakeAdmin{watch: func(_ int, _ *berthv1.WatchRequest, stream watchStream) error {
		return sendAll(stream, true, eventsResp(proxyEvent(5, "p0")))
	}}
	addr := serve(t, f)

	r := berthctl(t, addr, "watch", "proxies", "--count", "5", "--timeout", "300ms")
	if r.code != 1 || !strings.Contains(r.stderr, "error: watch: timed out after 300ms with 1 of 5 events") {
		t.Fatalf("with --count: exit %d, stderr %q", r.code, r.stderr)
	}
	r = berthctl(t, addr, "watch", "proxies", "--timeout", "300ms")
	if r.code != 0 || len(tableIndexes(t, r.stdout)) != 1 {
		t.Fatalf("without --count: exit %d, stdout %q", r.code, r.stdout)
	}
}

func TestWatchPermanentErrorStops(t *testing.T) {
	f := &fakeAdmin{watch: func(int, *berthv1.WatchRequest, watchStream) error {
		return status.Error(codes.InvalidArgument, "topic assignments needs filter.proxy_id")
	}}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "moves")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if want := "error: watch: InvalidArgument: topic assignments needs filter.proxy_id\n"; r.errorLine() != want {
		t.Fatalf("error line = %q, want %q", r.errorLine(), want)
	}
	if n := len(requestsOf[*berthv1.WatchRequest](f)); n != 1 {
		t.Fatalf("%d watch requests, want 1", n)
	}
}

func TestWatchArgumentErrors(t *testing.T) {
	f := &fakeAdmin{}
	addr := serve(t, f)
	r := berthctl(t, addr, "watch", "assignments")
	if r.code != 1 || r.stderr != "error: topic assignments needs --proxy\n" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = berthctl(t, addr, "watch")
	if r.code != 1 || !strings.Contains(r.stderr, "requires at least 1 arg") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := f.requestCount(); n != 0 {
		t.Fatalf("server got %d requests, want 0", n)
	}
}

func TestWatchFailsOverAndFailsFastWhenNothingAnswers(t *testing.T) {
	f := &fakeAdmin{watch: func(_ int, _ *berthv1.WatchRequest, stream watchStream) error {
		return sendAll(stream, true, eventsResp(proxyEvent(5, "p0")))
	}}
	live := serve(t, f)
	dead := deadAddr(t)

	r := berthctl(t, dead+","+live, "watch", "proxies", "--count", "1")
	if r.code != 0 {
		t.Fatalf("failover: exit %d", r.code)
	}
	r = berthctl(t, dead, "watch", "proxies", "--retries", "0")
	if r.code != 1 || !strings.Contains(r.stderr, "error: watch: Unavailable:") {
		t.Fatalf("no server: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestWatchEndsCleanlyOnInterrupt(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	f := &fakeAdmin{watch: func(_ int, _ *berthv1.WatchRequest, stream watchStream) error {
		if err := stream.Send(eventsResp(proxyEvent(5, "p0"))); err != nil {
			return err
		}
		cancel() // what signal.NotifyContext does on Ctrl-C
		<-stream.Context().Done()
		return nil
	}}
	addr := serve(t, f)
	var stdout, stderr bytes.Buffer
	root := newRootCmd(&stdout, &stderr, func(string) string { return "" })
	code := execute(ctx, root, []string{"--insecure", "--addr", addr, "watch", "proxies"}, &stderr)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if strings.Contains(stderr.String(), "error:") {
		t.Fatalf("stderr = %q, want no error", stderr.String())
	}
}

func TestPlaintextServerNeedsInsecure(t *testing.T) {
	addr := serve(t, &fakeAdmin{cluster: &berthv1.ClusterStatusResponse{}})
	var stdout, stderr bytes.Buffer
	root := newRootCmd(&stdout, &stderr, func(string) string { return "" })
	code := execute(t.Context(), root, []string{"--addr", addr, "--retries", "0", "status", "cluster"}, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "error: cluster status: Unavailable:") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	t.Log(stderr.String())
}
