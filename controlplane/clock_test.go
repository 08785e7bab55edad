package controlplane_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Wall-clock steps on one node at a time (an hour forward, then back)
// neither declare a heartbeating proxy down nor keep a silent one up: the
// leader times silence on its monotonic clock and times health changes by
// when it saw them, not by the stamps other clocks put in the log.
func TestClockStepsNeitherDownLiveProxiesNorKeepDeadOnesUp(t *testing.T) {
	clocks := make([]*controlplanetest.SteppedClock, 3)
	for i := range clocks {
		clocks[i] = &controlplanetest.SteppedClock{}
	}
	hb := controlplane.HeartbeatConfig{UnhealthyAfter: time.Second, DownAfter: 2 * time.Second, Grace: 0, Interval: 50 * time.Millisecond}
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{
		ClockFor:  func(i int) controlplane.Clock { return clocks[i] },
		Configure: func(_ int, cfg *controlplane.Config) { cfg.Heartbeat = hb },
	})
	leader := c.Leader()
	register(t, c, leader, "live")
	register(t, c, leader, "silent")
	c.WaitApplied() // the session's node checks the registration on its own replica
	s := openSession(t, c, follower(c), "live")
	go func() { // the session's updates are not needed; keep the stream moving
		for {
			if _, err := s.stream.Recv(); err != nil {
				return
			}
		}
	}()
	health := func(id string) berthv1.Health {
		t.Helper()
		p, err := getProxy(t, c, c.Leader(), id, berthv1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err != nil {
			t.Fatal(err)
		}
		return p.Health
	}
	// beat sends load samples for d, checking live stays healthy.
	beat := func(d time.Duration, check func() error) {
		t.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			if err := s.stream.Send(&berthv1.SessionRequest{Kind: &berthv1.SessionRequest_Load{Load: &berthv1.LoadSample{Connections: 1}}}); err != nil {
				t.Fatalf("session: %v", err)
			}
			if check != nil {
				if err := check(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	liveHealthy := func() error {
		if h := health("live"); h != berthv1.Health_HEALTH_HEALTHY {
			return fmt.Errorf("the heartbeating proxy is %v", h)
		}
		return nil
	}
	downWithin := func(id string, d time.Duration) {
		t.Helper()
		start := time.Now()
		for health(id) != berthv1.Health_HEALTH_DOWN {
			if time.Since(start) > d {
				t.Fatalf("%s silent for %v and still %v", id, d, health(id))
			}
			beat(200*time.Millisecond, liveHealthy)
		}
	}

	downWithin("silent", 10*time.Second)

	t.Logf("leader %d's wall clock steps an hour forward", leader)
	clocks[leader].Step(time.Hour)
	beat(3*time.Second, liveHealthy) // longer than DownAfter
	// A proxy registered now carries the stepped clock's stamp.
	register(t, c, leader, "late")

	next := (leader + 1) % 3
	t.Logf("leadership moves from %d to %d, whose clock is right", leader, next)
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if c.Leader() == next {
			return nil
		}
		_, err := c.Admin(c.Leader()).TransferLeadership(ctxT(t), &berthv1.TransferLeadershipRequest{ServerId: c.Node(next).ID()})
		return fmt.Errorf("leader is %d (transfer: %v)", c.Leader(), err)
	})
	downWithin("late", 10*time.Second) // its future stamp must not keep it up

	t.Logf("node %d's wall clock steps an hour back", next)
	clocks[next].Step(-time.Hour)
	beat(3*time.Second, liveHealthy)
	// Silent from now: down, although its last sample is an hour "ahead".
	start := time.Now()
	for health("live") != berthv1.Health_HEALTH_DOWN {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("live silent for 10 s after a backward step, still %v", health("live"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
