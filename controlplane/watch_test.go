package controlplane_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func proxyIDs(evs []*berthv1.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.GetProxy().GetId())
	}
	sort.Strings(out)
	return out
}

func TestWatchResumeGetsExactlyTheMissedEvents(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	f := follower(c)
	register(t, c, f, "p0")
	admin := c.Admin(f)
	ctx, disconnect := context.WithCancel(ctxT(t))
	req := &berthv1.WatchRequest{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_PROXIES}}
	stream, err := admin.Watch(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetSnapshot() == nil || !first.GetSnapshot().Done {
		t.Fatalf("want a complete snapshot, got %v %v", first, err)
	}
	if got := proxyIDs(first.GetSnapshot().Events); len(got) != 1 || got[0] != "p0" {
		t.Fatalf("snapshot: %v", got)
	}
	last := first.GetSnapshot().Index
	for i := 1; i <= 3; i++ {
		register(t, c, f, fmt.Sprintf("p%d", i))
	}
	var seen []*berthv1.Event
	for len(seen) < 3 {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range msg.GetEvents().GetEvents() {
			if ev.Index <= last {
				t.Fatalf("event %d not after %d", ev.Index, last)
			}
			last = ev.Index
			seen = append(seen, ev)
		}
	}
	// Disconnect; three more writes happen while we are away.
	disconnect()
	for i := 4; i <= 6; i++ {
		register(t, c, f, fmt.Sprintf("p%d", i))
	}
	// Resume on another node from the last index seen.
	other := (f + 1) % 3
	c.WaitApplied()
	resumed, err := c.Admin(other).Watch(ctxT(t), &berthv1.WatchRequest{Topics: req.Topics, StartIndex: last})
	if err != nil {
		t.Fatal(err)
	}
	var gap []*berthv1.Event
	for len(gap) < 3 {
		msg, err := resumed.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if msg.GetSnapshot() != nil {
			t.Fatalf("resume from a buffered index sent a snapshot")
		}
		gap = append(gap, msg.GetEvents().GetEvents()...)
	}
	if got := proxyIDs(gap); fmt.Sprint(got) != "[p4 p5 p6]" {
		t.Fatalf("gap: %v", got)
	}
	for _, ev := range gap {
		if ev.Index <= last {
			t.Fatalf("re-sent an event the subscriber had: %d <= %d", ev.Index, last)
		}
	}
}

func TestStalledWatcherIsResetWhileWritesContinue(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Broker.SubscriberBuffer = 64
		cfg.Broker.BufferEvents = 256
	}})
	register(t, c, 0, "p1")
	ctx := ctxT(t)
	stalled, err := c.Admin(0).Watch(ctx, &berthv1.WatchRequest{Topics: []berthv1.Topic{berthv1.Topic_TOPIC_CONNECTIONS}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stalled.Recv(); err != nil { // the (empty) snapshot
		t.Fatal(err)
	}
	// Write far more events than the watcher's buffers and gRPC's windows
	// hold, without reading: every write must still be acknowledged.
	s := openSession(t, c, 0, "p1")
	const batches, perBatch = 40, 500
	for b := range batches {
		var conns []*berthv1.Connection
		for i := range perBatch {
			conns = append(conns, conn(fmt.Sprintf("c%03d-%03d", b, i), "web"))
		}
		if ack := s.events(opens(conns...)); ack.Result.Code != berthv1.ResultCode_RESULT_CODE_OK || len(ack.Result.EventErrors) != 0 {
			t.Fatalf("batch %d: %v", b, ack)
		}
	}
	// Now read: somewhere the watcher was reset, and it still ends up with
	// a view that holds every connection.
	have := map[string]bool{}
	resets := 0
	deadline := time.Now().Add(60 * time.Second)
	for len(have) < batches*perBatch {
		if time.Now().After(deadline) {
			t.Fatalf("watcher has %d of %d connections after %d resets", len(have), batches*perBatch, resets)
		}
		msg, err := stalled.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch k := msg.Kind.(type) {
		case *berthv1.WatchResponse_Reset_:
			resets++
		case *berthv1.WatchResponse_Snapshot:
			for _, ev := range k.Snapshot.Events {
				have[ev.GetConnection().GetId()] = true
			}
		case *berthv1.WatchResponse_Events:
			for _, ev := range k.Events.Events {
				have[ev.GetConnection().GetId()] = true
			}
		}
	}
	if resets == 0 {
		t.Fatal("a stalled watcher was never reset")
	}
}
