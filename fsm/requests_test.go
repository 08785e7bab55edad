package fsm

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func withID(cmd *berthv1.Command, id string) *berthv1.Command {
	cmd.RequestId = []byte(id)
	return cmd
}

func labelled(id, value string) *berthv1.Command {
	return registerFull(&berthv1.Proxy{Id: id, Labels: map[string]string{"value": value}})
}

// A resent command must not apply a second time: here the resend comes
// after a later write and would revert it.
func TestResentRequestIsNotAppliedAgain(t *testing.T) {
	h := newHarness(t)
	first, _ := h.do(withID(labelled("p", "a"), "req-a"))
	h.ok(withID(labelled("p", "b"), "req-b"))

	h.index++
	res, evs := h.s.Apply(h.index, withID(labelled("p", "a"), "req-a"))
	if res != first {
		t.Fatalf("resend answered %v, want the first result %v", res, first)
	}
	if len(evs) != 0 {
		t.Fatalf("resend emitted %d events", len(evs))
	}
	if got := h.proxy("p").Labels["value"]; got != "b" {
		t.Fatalf("label value = %q after the resend, want the later write's %q", got, "b")
	}

	// Without an id a command is applied every time.
	h.ok(labelled("p", "a"))
	if got := h.proxy("p").Labels["value"]; got != "a" {
		t.Fatalf("label value = %q, want %q", got, "a")
	}
}

// A refused command changed nothing, so it is not remembered: its resend
// is a first application and may succeed.
func TestRefusedRequestIsNotRemembered(t *testing.T) {
	h := newHarness(t)
	h.refused(withID(setAdmin("p", berthv1.AdminState_ADMIN_STATE_DRAINING), "req-drain"), berthv1.ResultCode_RESULT_CODE_NOT_FOUND)
	h.ok(registerProxy("p", "r"))
	h.ok(withID(setAdmin("p", berthv1.AdminState_ADMIN_STATE_DRAINING), "req-drain"))
	if st := h.proxy("p").AdminState; st != berthv1.AdminState_ADMIN_STATE_DRAINING {
		t.Fatalf("admin state %v, want the resend applied", st)
	}
}

// Commands inside a batch are remembered one by one.
func TestRequestsInsideABatch(t *testing.T) {
	h := newHarness(t)
	batch := &berthv1.Command{Kind: &berthv1.Command_Batch{Batch: &berthv1.CommandBatch{Commands: []*berthv1.Command{
		withID(labelled("p", "a"), "one"),
		withID(labelled("q", "a"), "two"),
	}}}}
	h.ok(batch)
	h.ok(labelled("p", "b"))
	h.index++
	h.s.Apply(h.index, withID(labelled("p", "a"), "one"))
	if got := h.proxy("p").Labels["value"]; got != "b" {
		t.Fatalf("a command first applied in a batch applied again: value %q", got)
	}
}

func TestRequestTableForgetsByAge(t *testing.T) {
	h := newHarness(t)
	h.ok(withID(labelled("p", "a"), "old"))
	h.now += RequestWindow + 1
	h.ok(labelled("p", "b")) // no id: moves nothing
	if h.s.requests.Len() != 1 {
		t.Fatalf("a command without an id changed the table: %d entries", h.s.requests.Len())
	}
	h.ok(withID(labelled("p", "b"), "new")) // its time moves the window
	if _, ok := h.s.requests.lookup([]byte("old")); ok {
		t.Fatal("an entry older than the window is still remembered")
	}
	if _, ok := h.s.requests.lookup([]byte("new")); !ok {
		t.Fatal("the newest entry was forgotten")
	}
	// Forgotten, the old request applies again.
	h.ok(withID(labelled("p", "a"), "old"))
	if got := h.proxy("p").Labels["value"]; got != "a" {
		t.Fatalf("value %q, want a forgotten request to apply", got)
	}
}

func TestRequestTableForgetsByCount(t *testing.T) {
	tb := newRequestTable()
	res := &berthv1.CommandResult{}
	for i := range MaxRequests + 10 {
		tb.add(fmt.Appendf(nil, "r%d", i), 1, res)
	}
	if tb.Len() != MaxRequests {
		t.Fatalf("%d entries, want at most %d", tb.Len(), MaxRequests)
	}
	for i := range 10 {
		if _, ok := tb.lookup(fmt.Appendf(nil, "r%d", i)); ok {
			t.Fatalf("r%d, among the oldest, is still remembered", i)
		}
	}
	if _, ok := tb.lookup(fmt.Appendf(nil, "r%d", 10)); !ok {
		t.Fatal("the oldest entry within the limit was forgotten")
	}
	if len(tb.fifo) > 2*MaxRequests {
		t.Fatalf("the queue keeps %d slots for %d entries", len(tb.fifo), tb.Len())
	}
}

// Snapshots carry the table: a resend after a restore is still refused a
// second application, and the restored table writes the same bytes.
func TestSnapshotKeepsRequests(t *testing.T) {
	f := fsmWith(t, []*berthv1.Command{
		withID(labelled("p", "a"), "req-a"),
		withID(labelled("p", "b"), "req-b"),
	}, nil)
	data := persist(t, f)
	g := New(nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if again := persist(t, g); !bytes.Equal(data, again) {
		t.Fatal("a restored table writes different snapshot bytes")
	}
	res := g.Apply(commandLog(t, 3, withID(labelled("p", "a"), "req-a"))).(*berthv1.CommandResult)
	if res.Index != 1 {
		t.Fatalf("resend after restore answered index %d, want the first application's 1", res.Index)
	}
	var value string
	g.View(func(s *State, _ uint64) {
		p, _ := s.Proxy("p")
		value = p.Labels["value"]
	})
	if value != "b" {
		t.Fatalf("value %q after a resend across a restore, want %q", value, "b")
	}
}

func TestRequestIDTooLongIsRefused(t *testing.T) {
	h := newHarness(t)
	h.refused(withID(labelled("p", "a"), string(make([]byte, MaxRequestIDBytes+1))), berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT)
	if h.s.requests.Len() != 0 {
		t.Fatal("an invalid request id was remembered")
	}
}
