package integration

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// testE2ESnapshotIntoANewCluster is the documented disaster restore with
// the real binaries: save the registry of one three-node berthd cluster,
// start a new one on new disks, restore the file into it, and find every
// proxy back as it was (admin state and version included), on a node that
// restarts too.
func testE2ESnapshotIntoANewCluster(t *testing.T, bin string) {
	old := e2eStartCluster(t, bin, [3]e2eNodeSetup{e2eFlags, e2eFlags, e2eFlags})
	for _, p := range []*berthv1.Proxy{
		{Id: "px-a", Region: "eu-west", Zone: "eu-west-1", CapacityWeight: 1, Addresses: &berthv1.ProxyAddresses{Tunnel: "10.0.0.1:8443"}},
		{Id: "px-b", Region: "us-east", Zone: "us-east-1", CapacityWeight: 2, Labels: map[string]string{"tier": "edge"}},
	} {
		e2eRegister(t, old.grpcAddrs()[0], p)
	}
	old.mustCtl("cordon", "px-a")
	file := filepath.Join(t.TempDir(), "registry.bak")
	if r := old.mustCtl("snapshot", "save", file); !strings.Contains(r.stdout, "saved the registry") {
		t.Fatalf("save: %s", r)
	}
	want := e2eProxies(t, old)

	fresh := e2eStartCluster(t, bin, [3]e2eNodeSetup{e2eFlags, e2eFlags, e2eFlags})
	if r := fresh.mustCtl("snapshot", "restore", file); !strings.Contains(r.stdout, "restored") {
		t.Fatalf("restore: %s", r)
	}
	got := e2eProxies(t, fresh)
	if len(got) != len(want) {
		t.Fatalf("restored %d proxies, saved %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("proxy %d:\nrestored %v\nsaved    %v", i, got[i], want[i])
		}
	}
	// The file is refused a second time: the registry is no longer empty.
	if r := fresh.ctl("snapshot", "restore", file); r.code == 0 || !strings.Contains(r.stderr, "not empty") {
		t.Errorf("second restore: %s", r)
	}
	// Restarted from its data dir, a node still has the restored registry.
	n := fresh.nodes[1]
	if err := fresh.stop(n); err != nil {
		t.Fatal(err)
	}
	fresh.start(n)
	fresh.waitHealthy(3, "")
	r := fresh.ctlAt([]string{n.grpcAddr}, "status", "proxies", "-o", "json", "--consistency", "stale")
	resp := &berthv1.ListProxiesResponse{}
	if err := protojson.Unmarshal([]byte(r.stdout), resp); err != nil || len(resp.GetProxies()) != len(want) {
		t.Errorf("restarted %s: %v %s", n.id, err, r)
	}
}

// e2eProxies is `status proxies` at a linearizable read, as objects.
func e2eProxies(t *testing.T, c *e2eCluster) []*berthv1.Proxy {
	t.Helper()
	r := c.mustCtl("status", "proxies", "-o", "json", "--consistency", "linearizable")
	resp := &berthv1.ListProxiesResponse{}
	if err := protojson.Unmarshal([]byte(r.stdout), resp); err != nil {
		t.Fatalf("status proxies: %v\n%s", err, r)
	}
	return resp.GetProxies()
}
