package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
)

func TestTunnelLimits(t *testing.T) {
	t.Run("tunnels per agent token", func(t *testing.T) {
		dir, ring := agentKeys(t)
		e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 1, ControlPlaneNodes: 1, ConfigureProxy: func(_ int, cfg *proxy.Config) {
			cfg.AgentKeys, cfg.MaxTunnelsPerToken = dir, 1
		}})
		tok, err := ring.SignAgent(token.AgentClaims{Endpoints: []string{"web"}, ExpiresAt: time.Now().Add(time.Hour)}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		up := dataplanetest.Upstream(t, "svc")
		e.Agent("first", e.TunnelAddrs(), map[string]string{"web": up}, withToken(tok))
		e.WaitConnections("web", 1)
		second := e.Agent("second", e.TunnelAddrs(), map[string]string{"web": up}, withToken(tok))
		controlplanetest.Eventually(t, 20*time.Second, func() error {
			if st := second.Status(); st.Connected || !strings.Contains(st.LastError, "RESOURCE_EXHAUSTED") {
				return fmt.Errorf("connected=%v %q", st.Connected, st.LastError)
			}
			return nil
		})
		e.WaitConnections("web", 1)
	})

	t.Run("new tunnels per source", func(t *testing.T) {
		e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 1, ControlPlaneNodes: 1, ConfigureProxy: func(_ int, cfg *proxy.Config) {
			cfg.TunnelRate, cfg.TunnelBurst = 0.001, 2 // two, then (practically) none
		}})
		up := dataplanetest.Upstream(t, "svc")
		e.Agent("a", e.TunnelAddrs(), map[string]string{"web": up})
		e.Agent("b", e.TunnelAddrs(), map[string]string{"web": up})
		e.WaitConnections("web", 2)
		third := e.Agent("c", e.TunnelAddrs(), map[string]string{"web": up})
		controlplanetest.Eventually(t, 20*time.Second, func() error {
			if st := third.Status(); st.Connected || st.LastError == "" {
				return fmt.Errorf("connected=%v %q", st.Connected, st.LastError)
			}
			return nil
		})
		e.WaitConnections("web", 2)
	})

	t.Run("streams per tunnel", func(t *testing.T) {
		e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 1, ControlPlaneNodes: 1, ConfigureProxy: func(_ int, cfg *proxy.Config) {
			cfg.MaxStreamsPerTunnel = 1
		}})
		gated, release, entered := gatedUpstream(t)
		e.Agent("a", e.TunnelAddrs(), map[string]string{"gated": gated})
		e.WaitConnections("gated", 1)
		c := httpClient(t)
		expectBody(t, e, c, 0, "gated", "/", "ok")
		<-entered // drain the warm-up's signal
		held := make(chan int, 1)
		go func() {
			code, _, _, _ := e.Get(&http.Client{Timeout: 20 * time.Second}, 0, "gated", "/hang")
			held <- code
		}()
		<-entered // the long request holds the tunnel's only stream
		code, _, hdr, err := e.Get(c, 0, "gated", "/")
		if err != nil || code != http.StatusBadGateway || hdr.Get(proxy.ErrorHeader) != "upstream-unreachable" {
			t.Fatalf("second stream: %d %q %v", code, hdr.Get(proxy.ErrorHeader), err)
		}
		release <- struct{}{}
		if code := <-held; code != 200 {
			t.Fatalf("held request: %d", code)
		}
		expectBody(t, e, c, 0, "gated", "/", "ok")
	})
}
