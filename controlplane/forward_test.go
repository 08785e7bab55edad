package controlplane_test

import (
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Writes sent to a follower all at once reach the leader in fewer calls
// than writes, and every one of them commits with its own result.
func TestFollowerCoalescesConcurrentForwards(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	f := follower(c)
	const writes = 300
	indexes := make([]uint64, writes)
	var wg sync.WaitGroup
	errs := make(chan error, writes)
	for i := range writes {
		wg.Go(func() {
			cmd := &berthv1.Command{Kind: &berthv1.Command_RegisterProxy{RegisterProxy: &berthv1.RegisterProxyCommand{Proxy: testProxy(fmt.Sprintf("p%03d", i))}}}
			res, err := c.Node(f).Apply(ctxT(t), cmd)
			if err != nil {
				errs <- fmt.Errorf("write %d: %w", i, err)
				return
			}
			indexes[i] = res.Index
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for i, idx := range indexes {
		if idx == 0 {
			t.Fatalf("write %d: no index", i)
		}
		seen[idx] = true
	}
	calls, sent := c.Node(f).ForwardBatches()
	if sent != writes || calls >= writes {
		t.Fatalf("follower sent %v writes in %d calls, want %d writes in fewer calls", sent, calls, writes)
	}
	t.Logf("%d writes in %d calls, %d distinct log indexes", writes, calls, len(seen))
	resp, err := c.Admin(c.Leader()).ListProxies(ctxT(t), &berthv1.ListProxiesRequest{Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Proxies) != writes {
		t.Fatalf("%d proxies registered, want %d", len(resp.Proxies), writes)
	}
}

// ApplyBatch on the leader answers each command in order, a refusal in its
// own slot; a follower and an empty batch are refused as a whole.
func TestApplyBatchAnswersInOrder(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	reg := func(id string) *berthv1.Command {
		return &berthv1.Command{NowUnixMs: 1, RequestId: []byte(id),
			Kind: &berthv1.Command_RegisterProxy{RegisterProxy: &berthv1.RegisterProxyCommand{Proxy: testProxy(id)}}}
	}
	bad := reg("bad")
	bad.GetRegisterProxy().Proxy.Id = "not a valid id!"
	leader := berthv1.NewClusterServiceClient(c.Conn(c.Leader()))
	resp, err := leader.ApplyBatch(ctxT(t), &berthv1.ApplyBatchRequest{Commands: []*berthv1.Command{reg("a1"), bad, reg("a2")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != 3 {
		t.Fatalf("%d results for 3 commands", len(resp.Results))
	}
	ok0, refused, ok2 := resp.Results[0], resp.Results[1], resp.Results[2]
	if ok0.Code != berthv1.ResultCode_RESULT_CODE_OK || ok2.Code != berthv1.ResultCode_RESULT_CODE_OK || ok2.Index < ok0.Index || ok0.Index == 0 {
		t.Fatalf("valid commands: %v, %v", ok0, ok2)
	}
	if refused.Code != berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT || refused.Message == "" {
		t.Fatalf("invalid command: %v", refused)
	}
	for _, id := range []string{"a1", "a2"} {
		if _, err := getProxy(t, c, c.Leader(), id, berthv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}

	_, err = berthv1.NewClusterServiceClient(c.Conn(follower(c))).ApplyBatch(ctxT(t), &berthv1.ApplyBatchRequest{Commands: []*berthv1.Command{reg("a3")}})
	if _, ok := client.AsNotLeader(err); !ok {
		t.Fatalf("follower answered %v, want not leader", err)
	}
	if _, err := leader.ApplyBatch(ctxT(t), &berthv1.ApplyBatchRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty batch: %v, want InvalidArgument", err)
	}
}

// The unary Apply, which followers of earlier releases still send during a
// rolling upgrade, is served as before: a result, a refusal in the result,
// not-leader from a follower.
func TestUnaryApplyStillServed(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	cmd := &berthv1.Command{NowUnixMs: 1, RequestId: []byte("u1"),
		Kind: &berthv1.Command_RegisterProxy{RegisterProxy: &berthv1.RegisterProxyCommand{Proxy: testProxy("u1")}}}
	leader := berthv1.NewClusterServiceClient(c.Conn(c.Leader()))
	resp, err := leader.Apply(ctxT(t), &berthv1.ApplyRequest{Command: cmd})
	if err != nil || resp.Result.Code != berthv1.ResultCode_RESULT_CODE_OK || resp.Result.Index == 0 {
		t.Fatalf("apply: %v %v", resp, err)
	}
	bad := &berthv1.Command{NowUnixMs: 1, RequestId: []byte("u2"),
		Kind: &berthv1.Command_RegisterProxy{RegisterProxy: &berthv1.RegisterProxyCommand{Proxy: &berthv1.Proxy{Id: "not a valid id!"}}}}
	resp, err = leader.Apply(ctxT(t), &berthv1.ApplyRequest{Command: bad})
	if err != nil || resp.Result.Code != berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT {
		t.Fatalf("invalid command: %v %v", resp, err)
	}
	_, err = berthv1.NewClusterServiceClient(c.Conn(follower(c))).Apply(ctxT(t), &berthv1.ApplyRequest{Command: cmd})
	if _, ok := client.AsNotLeader(err); !ok {
		t.Fatalf("follower answered %v, want not leader", err)
	}
}
