package integration

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// The registry is checked as a set of registers: each key is a proxy, a
// write registers it with label value=v, a linearizable read returns the
// label ("" while the proxy does not exist).
type regInput struct {
	write bool
	key   string
	value string
	node  int    // the node asked; the model ignores it
	err   string // why a write's outcome is unknown; the model ignores it
}

type regOutput struct {
	value string
}

var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(regInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regInput)
		if in.write {
			return true, in.value
		}
		return output.(regOutput).value == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(regInput)
		if in.write {
			return fmt.Sprintf("write(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("read(%s) -> %q", in.key, output.(regOutput).value)
	},
}

// history records operations from many goroutines.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(op porcupine.Operation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
}

// TestRegistryIsLinearizableAcrossLeaderKillAndPartition runs concurrent
// clients against all three nodes while the leader is killed, brought back,
// and then the new leader is cut off from its peers (still reachable by
// clients). Every completed write and linearizable read must fit one
// sequential order; writes whose outcome is unknown may or may not apply.
func TestRegistryIsLinearizableAcrossLeaderKillAndPartition(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	w := startRegisterWorkload(t, func(node int) (berthv1.RegistryServiceClient, berthv1.AdminServiceClient, bool) {
		if c.Node(node) == nil {
			return nil, nil, false
		}
		return c.Registry(node), c.Admin(node), true
	})
	w.waitOps(30)
	old := c.Leader()
	t.Logf("killing leader %d", old)
	c.Stop(old)
	w.waitOps(30)
	c.Start(old)
	w.waitOps(30)
	second := c.Leader()
	t.Logf("isolating leader %d from its peers", second)
	c.Isolate(second)
	w.waitOps(30)
	c.Heal(second)
	w.waitOps(30)
	w.stopAndCheck()
}

// registerWorkload is six clients writing and linearizably reading four
// keys on random nodes of a 3-node control plane, every operation recorded
// for porcupine.
type registerWorkload struct {
	t       *testing.T
	h       *history
	stop    atomic.Bool
	wg      sync.WaitGroup
	okReads atomic.Int64
	okWrite atomic.Int64
}

// registerKeys are the workload's registers.
var registerKeys = []string{"k0", "k1", "k2", "k3"}

// startRegisterWorkload starts the clients. clients(node) gives node's
// services, or false while the node is down.
func startRegisterWorkload(t *testing.T, clients func(node int) (berthv1.RegistryServiceClient, berthv1.AdminServiceClient, bool)) *registerWorkload {
	w := &registerWorkload{t: t, h: &history{start: time.Now()}}
	keys := registerKeys
	var counter atomic.Int64
	for cid := range 6 {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(cid), 7))
			for !w.stop.Load() {
				node := rng.IntN(3)
				reg, admin, ok := clients(node)
				if !ok {
					time.Sleep(time.Millisecond)
					continue
				}
				key := keys[rng.IntN(len(keys))]
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				call := w.h.now()
				if rng.IntN(2) == 0 {
					value := fmt.Sprintf("v%d", counter.Add(1))
					p := &berthv1.Proxy{Id: key, Labels: map[string]string{"value": value}}
					_, err := reg.RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: p})
					ret := w.h.now()
					in := regInput{write: true, key: key, value: value, node: node}
					if neverSent(err) {
						// The call never left this process: nothing to record.
						cancel()
						time.Sleep(10 * time.Millisecond)
						continue
					}
					if err != nil {
						ret = math.MaxInt64 // outcome unknown: it may apply at any later point
						in.err = err.Error()
					} else {
						w.okWrite.Add(1)
					}
					w.h.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: regOutput{}, Return: ret})
				} else {
					w.read(ctx, cid, admin, node, key, call)
				}
				cancel()
			}
		}()
	}
	return w
}

// read records one linearizable read of key on node, called at call.
func (w *registerWorkload) read(ctx context.Context, cid int, admin berthv1.AdminServiceClient, node int, key string, call int64) {
	resp, err := admin.GetProxy(ctx, &berthv1.GetProxyRequest{ProxyId: key, Consistency: berthv1.Consistency_CONSISTENCY_LINEARIZABLE})
	ret := w.h.now()
	switch {
	case err == nil:
		w.okReads.Add(1)
		w.h.add(porcupine.Operation{ClientId: cid, Input: regInput{key: key, node: node}, Call: call, Output: regOutput{value: resp.Proxy.Labels["value"]}, Return: ret})
	case status.Code(err) == codes.NotFound:
		w.okReads.Add(1)
		w.h.add(porcupine.Operation{ClientId: cid, Input: regInput{key: key, node: node}, Call: call, Output: regOutput{}, Return: ret})
	}
	// A failed read observed nothing and is left out.
}

// neverSent reports a gRPC error that came before any byte of the call was
// sent: no connection to the node could be made (gRPC's "connection error"
// while dialling), so the write cannot have applied.
func neverSent(err error) bool {
	st, ok := status.FromError(err)
	return err != nil && ok && st.Code() == codes.Unavailable && strings.HasPrefix(st.Message(), "connection error:")
}

// waitOps waits for n more acknowledged writes.
func (w *registerWorkload) waitOps(n int64) {
	w.t.Helper()
	target := w.okWrite.Load() + n
	controlplanetest.Eventually(w.t, 60*time.Second, func() error {
		if w.okWrite.Load() < target {
			return fmt.Errorf("%d acknowledged writes, waiting for %d", w.okWrite.Load(), target)
		}
		return nil
	})
}

// stopAndCheck stops the clients and fails the test unless the history is
// linearizable, keeping the visualization and a text history if it is not.
func (w *registerWorkload) stopAndCheck() {
	t := w.t
	t.Helper()
	w.stop.Store(true)
	w.wg.Wait()
	h := w.h
	t.Logf("history: %d operations (%d acknowledged writes, %d reads)", len(h.ops), w.okWrite.Load(), w.okReads.Load())
	result, info := porcupine.CheckOperationsVerbose(registerModel, h.ops, 60*time.Second)
	if result != porcupine.Ok {
		// Not t.TempDir: the visualization must outlive the failed test.
		dir, err := os.MkdirTemp("", "berth-linearizability-")
		if err != nil {
			t.Fatalf("history is not linearizable (%v); no directory for the visualization: %v", result, err)
		}
		path := filepath.Join(dir, "history.html")
		if f, err := os.Create(path); err == nil {
			_ = porcupine.Visualize(registerModel, info, f)
			_ = f.Close()
		}
		writeHistory(t, filepath.Join(dir, "history.txt"), h.ops)
		t.Fatalf("history is not linearizable (%v); visualization at %s", result, path)
	}
}

// writeHistory writes ops as text, one per line in call order, for reading
// a failure next to the visualization.
func writeHistory(t *testing.T, path string, ops []porcupine.Operation) {
	sorted := slices.Clone(ops)
	slices.SortFunc(sorted, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	var b strings.Builder
	for _, op := range sorted {
		in := op.Input.(regInput)
		ret := "?"
		if op.Return != math.MaxInt64 {
			ret = time.Duration(op.Return).String()
		}
		fmt.Fprintf(&b, "%-10v %-10s client %d node %d  %s", time.Duration(op.Call), ret, op.ClientId, in.node, registerModel.DescribeOperation(op.Input, op.Output))
		if in.err != "" {
			fmt.Fprintf(&b, "  (unknown: %s)", in.err)
		}
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Logf("writing the history: %v", err)
	}
}

// TestCheckerCatchesAStaleRead shows the check can fail: a read that returns
// an overwritten value after the overwrite completed is refused.
func TestCheckerCatchesAStaleRead(t *testing.T) {
	ops := []porcupine.Operation{
		{ClientId: 0, Input: regInput{write: true, key: "k", value: "a"}, Call: 0, Output: regOutput{}, Return: 10},
		{ClientId: 0, Input: regInput{write: true, key: "k", value: "b"}, Call: 20, Output: regOutput{}, Return: 30},
		{ClientId: 1, Input: regInput{key: "k"}, Call: 40, Output: regOutput{value: "a"}, Return: 50},
	}
	if porcupine.CheckOperations(registerModel, ops) {
		t.Fatal("a stale read passed the linearizability check")
	}
	ops[2].Output = regOutput{value: "b"}
	if !porcupine.CheckOperations(registerModel, ops) {
		t.Fatal("a fresh read failed the linearizability check")
	}
}
