package controlplane_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// A proxy still DOWN in the registry that has reported load again (the
// leader has not judged it back yet) is not gone: the leader refuses to
// remove it. Asked through a follower, the call runs on the leader.
func TestRemoveProxyRefusesOneThatReportsLoad(t *testing.T) {
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Enabled = false
		// No judgement rounds: health changes only as this test commits them.
		cfg.Heartbeat = controlplane.HeartbeatConfig{Interval: time.Hour, UnhealthyAfter: 2 * time.Hour, DownAfter: 3 * time.Hour}
	}})
	register(t, c, 0, "p1")
	l := c.Leader()
	if _, err := c.Node(l).Apply(ctxT(t), &berthv1.Command{Kind: &berthv1.Command_SetProxyHealth{
		SetProxyHealth: &berthv1.SetProxyHealthCommand{ProxyId: "p1", Health: berthv1.Health_HEALTH_DOWN}}}); err != nil {
		t.Fatal(err)
	}
	if err := reportLoad(t, c, l); err != nil { // a sample from p1 (and p2)
		t.Fatal(err)
	}
	admin := c.Admin(follower(c))
	_, err := admin.RemoveProxy(ctxT(t), &berthv1.RemoveProxyRequest{ProxyId: "p1"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "reported load") {
		t.Fatalf("removing a DOWN proxy that reports load: %v", err)
	}
	if _, err := getProxy(t, c, l, "p1", berthv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		t.Fatalf("p1 after the refusal: %v", err)
	}
	// A new leader has heard from nobody: the registry's DOWN decides.
	c.Stop(l)
	nl := c.Leader()
	if _, err := c.Admin(nl).RemoveProxy(ctxT(t), &berthv1.RemoveProxyRequest{ProxyId: "p1"}); err != nil {
		t.Fatalf("removing p1 on a leader that has no sample of it: %v", err)
	}
	if _, err := getProxy(t, c, nl, "p1", berthv1.Consistency_CONSISTENCY_LINEARIZABLE); status.Code(err) != codes.NotFound {
		t.Fatalf("p1 after removal: %v", err)
	}
}
