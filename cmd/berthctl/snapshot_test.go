package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/backup"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// registry is everything a backup must bring back, as one node holds it.
type registry struct {
	index       uint64
	proxies     []*berthv1.Proxy
	connections []*berthv1.Connection
	moves       []*berthv1.Move
	endpoints   []*berthv1.Endpoint
	tokens      []*berthv1.AdminToken
	servers     []*berthv1.Server
}

func registryOf(c *controlplanetest.Cluster, i int) registry {
	var r registry
	c.Node(i).FSM().View(func(s *fsm.State, applied uint64) {
		r.index = applied
		r.proxies, _ = s.ListProxies(fsm.ProxyFilter{}, "", 0)
		r.connections, _ = s.ListConnections(fsm.ConnectionFilter{}, "", 0)
		r.moves, _ = s.ListMoves(fsm.MoveFilter{}, "", 0)
		r.endpoints, _ = s.ListEndpoints("", "", 0)
		r.tokens = s.AdminTokens()
		r.servers = s.Servers()
	})
	return r
}

func sameObjects[T proto.Message](t *testing.T, what string, got, want []T) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d restored, %d saved", what, len(got), len(want))
		return
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("%s %d:\nrestored %v\nsaved    %v", what, i, got[i], want[i])
		}
	}
}

func maxVersion(r registry) uint64 {
	var v uint64
	for _, p := range r.proxies {
		v = max(v, p.Version)
	}
	for _, c := range r.connections {
		v = max(v, c.Version)
	}
	for _, m := range r.moves {
		v = max(v, m.Version)
	}
	return v
}

func TestSnapshotRestoreIntoANewCluster(t *testing.T) {
	old := quietCluster(t, 3, nil)
	registerProxies(t, old, "p1", "p2", "p3")
	conns := openConns(t, old, "p1", "web", 40)
	openConns(t, old, "p2", "api", 10)
	createMove(t, old, "m1", conns[0], "p1", "p3")
	if r := berthctl(t, addrList(old), "cordon", "p3"); r.code != 0 {
		t.Fatalf("cordon: %s", r.stderr)
	}
	if _, err := old.Admin(0).CreateAdminToken(testCtx(t), &berthv1.CreateAdminTokenRequest{Name: "ci", Role: "read"}); err != nil {
		t.Fatal(err)
	}

	// Save through a follower: a linearizable copy of everything above.
	file := filepath.Join(t.TempDir(), "registry.bak")
	r := berthctl(t, old.Addr(follower(old)), "snapshot", "save", file)
	if r.code != 0 || !strings.Contains(r.stdout, "saved the registry") {
		t.Fatalf("save: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	old.WaitApplied()
	saved := registryOf(old, old.Leader())
	if len(saved.connections) != 50 || len(saved.moves) != 1 || len(saved.tokens) != 1 || len(saved.endpoints) != 2 {
		t.Fatalf("seeded registry: %d connections, %d moves, %d tokens, %d endpoints",
			len(saved.connections), len(saved.moves), len(saved.tokens), len(saved.endpoints))
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := backup.VerifyFile(bytes.NewReader(data)); err != nil || h.Index < maxVersion(saved) || h.Counts.GetConnections() != 50 {
		t.Fatalf("saved file: %v %v", h, err)
	}

	// Disaster: a new, empty cluster.
	fresh := quietCluster(t, 3, nil)
	addrs := addrList(fresh)
	before := registryOf(fresh, fresh.Leader())

	// Damaged copies are refused before anything is sent.
	bad := func(name string, b []byte) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := bytes.Clone(data)
	flipped[len(flipped)-10] ^= 0x01
	for _, tc := range []struct{ file, want string }{
		{bad("truncated", data[:len(data)-100]), "backup truncated"},
		{bad("flipped", flipped), "backup corrupt: SHA-256"},
		{bad("magic", append([]byte("NOTBERTH"), data[8:]...)), "not a berth backup"},
		{bad("empty", nil), "not a berth backup"},
		{filepath.Join(t.TempDir(), "missing"), "no such file"},
	} {
		r := berthctl(t, addrs, "snapshot", "restore", tc.file)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("restore %s: exit %d, want %q in %s", filepath.Base(tc.file), r.code, tc.want, r.stderr)
		}
	}
	// A file whose checksum is right but whose records are not a registry
	// gets past the client and is refused by the leader.
	garbage := []byte(strings.Repeat("not a snapshot ", 10))
	sum := sha256.Sum256(garbage)
	var forged bytes.Buffer
	if err := backup.WriteHeader(&forged, &berthv1.BackupHeader{FormatVersion: backup.FormatVersion, Size: uint64(len(garbage)), Sha256: sum[:]}); err != nil {
		t.Fatal(err)
	}
	forged.Write(garbage)
	if r := berthctl(t, addrs, "snapshot", "restore", bad("forged", forged.Bytes())); r.code == 0 || !strings.Contains(r.stderr, "InvalidArgument") {
		t.Errorf("forged restore: exit %d %s", r.code, r.stderr)
	}
	// So is data that does not match its header, sent straight to a node.
	stream, err := fresh.Admin(0).RestoreSnapshot(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	h, _ := backup.ReadHeader(bytes.NewReader(data))
	_ = stream.Send(&berthv1.RestoreSnapshotRequest{Header: h, Data: flipped[len(data)-int(h.Size):]})
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("corrupt data over the RPC: %v", err)
	}
	fresh.WaitApplied()
	if after := registryOf(fresh, fresh.Leader()); len(after.proxies)+len(after.connections)+len(after.tokens) != 0 {
		t.Fatalf("a refused restore changed the registry: %+v", after)
	}

	// The restore itself, through a follower (forwarded to the leader).
	r = berthctl(t, fresh.Addr(follower(fresh)), "snapshot", "restore", file)
	if r.code != 0 || !strings.Contains(r.stdout, "restored") {
		t.Fatalf("restore: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	fresh.WaitApplied()
	for i := range fresh.Len() {
		got := registryOf(fresh, i)
		sameObjects(t, "proxy", got.proxies, saved.proxies)
		sameObjects(t, "connection", got.connections, saved.connections)
		sameObjects(t, "move", got.moves, saved.moves)
		sameObjects(t, "endpoint", got.endpoints, saved.endpoints)
		sameObjects(t, "admin token", got.tokens, saved.tokens)
		// The new cluster keeps its own members.
		sameObjects(t, "server", got.servers, before.servers)
		if got.index <= maxVersion(saved) || got.index <= before.index {
			t.Errorf("node %d restored at index %d: not past the saved versions (%d) and its own log (%d)", i, got.index, maxVersion(saved), before.index)
		}
	}
	// The restore is durable: a node restarted from its data dir loads it
	// from its Raft snapshot.
	f := follower(fresh)
	fresh.Stop(f)
	fresh.Start(f)
	fresh.WaitApplied()
	sameObjects(t, "connection after a restart", registryOf(fresh, f).connections, saved.connections)

	// The restored registry serves reads and takes writes, above every
	// restored version.
	if r := berthctl(t, addrs, "status", "connections", "--proxy", "p1", "--consistency", "linearizable"); r.code != 0 || !strings.Contains(r.stdout, conns[39]) {
		t.Fatalf("status connections after restore: exit %d\n%s", r.code, r.stdout)
	}
	registerProxies(t, fresh, "p9")
	if p := registryOf(fresh, fresh.Leader()).proxies; !slices.ContainsFunc(p, func(p *berthv1.Proxy) bool { return p.Id == "p9" && p.Version > maxVersion(saved) }) {
		t.Fatalf("a write after the restore: %v", p)
	}

	// A registry that is not empty is replaced only with --force.
	if r := berthctl(t, addrs, "snapshot", "restore", file); r.code == 0 || !strings.Contains(r.stderr, "FailedPrecondition") || !strings.Contains(r.stderr, "not empty") {
		t.Fatalf("restore over a registry: exit %d %s", r.code, r.stderr)
	}
	if r := berthctl(t, addrs, "-o", "json", "snapshot", "restore", "--force", file); r.code != 0 || !strings.Contains(r.stdout, `"connections": "50"`) {
		t.Fatalf("forced restore: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	fresh.WaitApplied()
	if p := registryOf(fresh, fresh.Leader()).proxies; len(p) != 3 {
		t.Fatalf("after a forced restore: %d proxies, want the saved 3", len(p))
	}
}

// Restored proxies have sent the new leader nothing. Their silence counts
// from when the leader first sees them in the registry (the restore), not
// from when it took office, so they have the down timeout to reconnect.
func TestRestoredProxiesHaveTheDownTimeoutToReconnect(t *testing.T) {
	old := quietCluster(t, 1, nil)
	registerProxies(t, old, "p1")
	openConns(t, old, "p1", "web", 3)
	file := filepath.Join(t.TempDir(), "registry.bak")
	if r := berthctl(t, old.Addr(0), "snapshot", "save", file); r.code != 0 {
		t.Fatalf("save: %s", r.stderr)
	}
	clock := controlplanetest.NewFakeClock(time.Now())
	fresh := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{Clock: clock, Configure: func(_ int, cfg *controlplane.Config) {
		cfg.Rebalance.Enabled = false
		cfg.Heartbeat = controlplane.HeartbeatConfig{Interval: 10 * time.Millisecond, UnhealthyAfter: 5 * time.Second,
			DownAfter: 10 * time.Second, Grace: 10 * time.Second}
	}})
	// The leader has led for an hour: past its grace and any down timeout.
	clock.Advance(time.Hour)
	if r := berthctl(t, fresh.Addr(0), "snapshot", "restore", file); r.code != 0 {
		t.Fatalf("restore: %s", r.stderr)
	}
	// Many judgement rounds (every 10ms) pass on the real clock; counted
	// from the leader's start, the first would find p1 silent for an hour.
	restored := time.Now()
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		if d := time.Since(restored); d < 300*time.Millisecond {
			return fmt.Errorf("only %s since the restore", d)
		}
		return nil
	})
	if st := proxyStatus(t, fresh, "p1"); st != berthv1.ProxyStatus_PROXY_STATUS_ACTIVE {
		t.Fatalf("p1 is %v right after the restore", st)
	}
	// Past the down timeout from the restore, silence is judged.
	clock.Advance(11 * time.Second)
	waitStatus(t, fresh, "p1", berthv1.ProxyStatus_PROXY_STATUS_DOWN)
}
