package proxy

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// The ring-hash and peer-link knobs are reachable from berth-proxy's
// command line (they were not registered before).
func TestRingAndPeerFlagsRegistered(t *testing.T) {
	cfg := Default()
	fs := pflag.NewFlagSet("berth-proxy", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"--ring-min-size=64", "--ring-max-size=512", "--peer-heartbeat-interval=1s", "--peer-backoff-max=3s"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Ring.MinRingSize != 64 || cfg.Ring.MaxRingSize != 512 {
		t.Errorf("ring: %+v", cfg.Ring)
	}
	if cfg.Peer.HeartbeatInterval != time.Second || cfg.Peer.BackoffMax != 3*time.Second {
		t.Errorf("peer: %+v", cfg.Peer)
	}
}
