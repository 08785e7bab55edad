package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/dataplane/agent"
	"github.com/berthhq/berth/dataplane/dataplanetest"
	"github.com/berthhq/berth/dataplane/proxy"
)

// agentKeys writes a signing key and returns its directory and keyring.
func agentKeys(t *testing.T) (string, *token.Keyring) {
	t.Helper()
	dir := t.TempDir()
	k, err := token.GenerateKey(token.AlgEdDSA, "k1")
	if err != nil {
		t.Fatal(err)
	}
	if err := token.WriteKey(dir, k); err != nil {
		t.Fatal(err)
	}
	ring, err := token.LoadKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, ring
}

func withToken(tok string) func(*agent.Config) {
	return func(c *agent.Config) { c.Token = tok }
}

func TestAgentTokens(t *testing.T) {
	dir, ring := agentKeys(t)
	e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 1, ConfigureProxy: func(_ int, cfg *proxy.Config) { cfg.AgentKeys = dir }})
	up := dataplanetest.Upstream(t, "svc")
	// sign issues a token valid for ttl; a negative ttl gives one issued
	// long ago that has already expired.
	sign := func(endpoints []string, ttl time.Duration) string {
		issued := time.Now()
		if ttl < 0 {
			issued = issued.Add(2 * ttl)
		}
		tok, err := ring.SignAgent(token.AgentClaims{Endpoints: endpoints, ExpiresAt: time.Now().Add(ttl)}, issued)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	c := httpClient(t)

	// A token for web serves web.
	e.Agent("good", e.TunnelAddrs(), map[string]string{"web": up}, withToken(sign([]string{"web"}, time.Hour)))
	e.WaitConnections("web", 1)
	expectBody(t, e, c, 0, "web", "/ok", "svc /ok")

	refused := func(name string, a *agent.Agent, want string) {
		t.Helper()
		controlplanetest.Eventually(t, 20*time.Second, func() error {
			if st := a.Status(); st.Connected || !strings.Contains(st.LastError, want) {
				return fmt.Errorf("%s: connected=%v last error %q", name, st.Connected, st.LastError)
			}
			return nil
		})
	}
	// A token for another endpoint, an expired one, none at all, and one
	// signed by a key the proxy does not know are all refused.
	refused("other endpoint", e.Agent("wrong-ep", e.TunnelAddrs(), map[string]string{"api": up}, withToken(sign([]string{"web"}, time.Hour))), "PERMISSION_DENIED")
	refused("expired", e.Agent("expired", e.TunnelAddrs(), map[string]string{"api": up}, withToken(sign([]string{"api"}, -time.Hour))), "UNAUTHENTICATED")
	refused("no token", e.Agent("anonymous", e.TunnelAddrs(), map[string]string{"api": up}), "UNAUTHENTICATED")
	_, foreign := agentKeys(t)
	other, err := foreign.SignAgent(token.AgentClaims{Endpoints: []string{"api"}, ExpiresAt: time.Now().Add(time.Hour)}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	refused("foreign key", e.Agent("foreign", e.TunnelAddrs(), map[string]string{"api": up}, withToken(other)), "UNAUTHENTICATED")
	e.WaitConnections("api", 0)
	e.WaitConnections("web", 1)
}

func TestAgentTokenExpiringMidSessionDropsTheTunnel(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the token leeway")
	}
	dir, ring := agentKeys(t)
	e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 1, ConfigureProxy: func(_ int, cfg *proxy.Config) { cfg.AgentKeys = dir }})
	up := dataplanetest.Upstream(t, "svc")
	tok, err := ring.SignAgent(token.AgentClaims{Endpoints: []string{"web"}, ExpiresAt: time.Now().Add(time.Second)}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a := e.Agent("short", e.TunnelAddrs(), map[string]string{"web": up}, withToken(tok))
	e.WaitConnections("web", 1)
	// Past expiry plus the allowed clock skew the proxy closes the tunnel,
	// and the same token no longer gets a new one.
	controlplanetest.Eventually(t, time.Second+token.Leeway+20*time.Second, func() error {
		if st := a.Status(); st.Connected || !strings.Contains(st.LastError, "UNAUTHENTICATED") {
			return fmt.Errorf("connected=%v last error %q", st.Connected, st.LastError)
		}
		return nil
	})
	e.WaitConnections("web", 0)
}

func TestAgentKeyringReloadsWithoutRestart(t *testing.T) {
	dir, _ := agentKeys(t)
	e := dataplanetest.Start(t, dataplanetest.Options{Proxies: 1, ControlPlaneNodes: 1, ConfigureProxy: func(_ int, cfg *proxy.Config) {
		cfg.AgentKeys, cfg.KeysReload = dir, 100*time.Millisecond
	}})
	// A token signed by a key the proxy does not have yet is refused ...
	k2, err := token.GenerateKey(token.AlgEdDSA, "k2")
	if err != nil {
		t.Fatal(err)
	}
	ring2, err := token.NewKeyring(k2)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ring2.SignAgent(token.AgentClaims{Endpoints: []string{"web"}, ExpiresAt: time.Now().Add(time.Hour)}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a := e.Agent("rotated", e.TunnelAddrs(), map[string]string{"web": dataplanetest.Upstream(t, "svc")}, withToken(tok))
	controlplanetest.Eventually(t, 20*time.Second, func() error {
		if st := a.Status(); st.Connected || !strings.Contains(st.LastError, "UNAUTHENTICATED") {
			return fmt.Errorf("connected=%v %q", st.Connected, st.LastError)
		}
		return nil
	})
	// ... and accepted once the key is added to the proxy's keyring.
	if err := token.WriteKey(dir, k2); err != nil {
		t.Fatal(err)
	}
	e.WaitConnections("web", 1)
}
