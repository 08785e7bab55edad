package main

import (
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestRebalanceDryRunPrintsThePlan(t *testing.T) {
	f := proxyFake()
	f.moves = []*berthv1.Move{{Id: "m1", ConnectionId: "c1", FromProxyId: "p0", ToProxyId: "p2", Reason: "balance"}}
	addr := serve(t, f)
	r := berthctl(t, addr, "rebalance", "--dry-run")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	reqs := requestsOf[*berthv1.RebalanceRequest](f)
	if len(reqs) != 1 || !reqs[0].DryRun {
		t.Fatalf("requests: %v", reqs)
	}
	if !strings.Contains(r.stdout, "dry run") || !strings.Contains(r.stdout, "m1") || !strings.Contains(r.stdout, "balance") {
		t.Fatalf("output:\n%s", r.stdout)
	}
	r = berthctl(t, addr, "rebalance")
	if reqs := requestsOf[*berthv1.RebalanceRequest](f); r.code != 0 || len(reqs) != 2 || reqs[1].DryRun {
		t.Fatalf("rebalance: exit %d, requests %v", r.code, reqs)
	}
}

func TestDrainWait(t *testing.T) {
	f := proxyFake()
	addr := serve(t, f)
	// Nothing left on the proxy: --wait returns at once.
	r := berthctl(t, addr, "drain", "p1", "--wait")
	if r.code != 0 || !strings.Contains(r.stderr, "p1 holds no connections") {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if reqs := requestsOf[*berthv1.ListConnectionsRequest](f); len(reqs) == 0 || reqs[0].ProxyId != "p1" {
		t.Fatalf("list requests: %v", reqs)
	}
	// Connections that never leave: --wait gives up at --wait-timeout.
	f.connections = []*berthv1.Connection{{Id: "c1", ProxyId: "p1"}}
	r = berthctl(t, addr, "drain", "p1", "--wait", "--wait-timeout", "1s", "--wait-interval", "100ms")
	if r.code == 0 || !strings.Contains(r.stderr, "1 connection(s) left") {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if reqs := requestsOf[*berthv1.ListMovesRequest](f); len(reqs) == 0 || reqs[0].ProxyId != "p1" || len(reqs[0].States) != 2 {
		t.Fatalf("move requests: %v", reqs)
	}
}

func TestTokenAdminCommands(t *testing.T) {
	f := proxyFake()
	addr := serve(t, f)
	r := berthctl(t, addr, "token", "admin", "create", "--name", "ops", "--role", "operate", "--ttl", "1h")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "bat_0123456789abcdef_secret" {
		t.Fatalf("create: exit %d, %q %s", r.code, r.stdout, r.stderr)
	}
	reqs := requestsOf[*berthv1.CreateAdminTokenRequest](f)
	if len(reqs) != 1 || reqs[0].Role != "operate" || reqs[0].TtlSeconds != 3600 {
		t.Fatalf("request: %v", reqs)
	}
	if r := berthctl(t, addr, "token", "admin", "create", "--name", "x", "--role", "root"); r.code == 0 || !strings.Contains(r.stderr, "read") {
		t.Fatalf("bad role: exit %d %s", r.code, r.stderr)
	}
	if r := berthctl(t, addr, "token", "admin", "list"); r.code != 0 || !strings.Contains(r.stdout, "ops") {
		t.Fatalf("list: %d %s", r.code, r.stdout)
	}
	if r := berthctl(t, addr, "token", "admin", "bootstrap"); r.code != 0 || !strings.HasPrefix(r.stdout, "bat_") {
		t.Fatalf("bootstrap: %d %q", r.code, r.stdout)
	}
}
