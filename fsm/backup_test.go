package fsm

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestBackupRoundTripKeepsVersionsAndSwapsServers(t *testing.T) {
	h := newHarness(t)
	h.ok(upsertServer("old0", "10.0.0.1:7001", "10.0.0.1:7000"))
	h.ok(registerProxy("p", "eu"))
	h.ok(registerProxy("q", "eu"))
	h.ok(open("p", conn("c1", "web"), conn("c2", "web", "api")))
	h.ok(createMoves(mv("m1", "c1", "p", "q")))
	if h.s.Empty() {
		t.Fatal("a registry with proxies is not empty")
	}
	index := h.index

	var saved bytes.Buffer
	if err := h.s.Backup().Write(&saved, index); err != nil {
		t.Fatal(err)
	}
	b, err := ReadBackup(bytes.NewReader(saved.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if b.Index() != index {
		t.Errorf("index %d, want %d", b.Index(), index)
	}
	want := &berthv1.SnapshotTrailer{Proxies: 2, Connections: 2, Moves: 1, Servers: 1, AppliedRequests: b.Counts().AppliedRequests}
	if got := b.Counts(); !proto.Equal(got, want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	// Written again unchanged: the same bytes.
	var again bytes.Buffer
	if err := b.Write(&again, index); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Bytes(), saved.Bytes()) {
		t.Error("a backup read back and written again differs")
	}

	// Restored into another cluster: its servers, a later index, every
	// other object exactly as saved.
	here := &berthv1.Server{Id: "new0", RaftAddress: "127.0.0.1:1", GrpcAddress: "127.0.0.1:2", Version: 3}
	b.ReplaceServers([]*berthv1.Server{here})
	var restored bytes.Buffer
	if err := b.Write(&restored, index+100); err != nil {
		t.Fatal(err)
	}
	st, applied, err := readSnapshot(&restored)
	if err != nil {
		t.Fatal(err)
	}
	if applied != index+100 {
		t.Errorf("applied %d, want %d", applied, index+100)
	}
	if srv := st.Servers(); len(srv) != 1 || !proto.Equal(srv[0], here) {
		t.Errorf("servers %v, want only %v", srv, here)
	}
	for _, id := range []string{"p", "q"} {
		got, _ := st.Proxy(id)
		if orig := h.proxy(id); !proto.Equal(got, orig) {
			t.Errorf("proxy %s: %v, want %v", id, got, orig)
		}
	}
	for _, id := range []string{"c1", "c2"} {
		got, _ := st.Connection(id)
		if orig := h.conn(id); !proto.Equal(got, orig) {
			t.Errorf("connection %s: %v, want %v", id, got, orig)
		}
	}
	if got, _ := st.Move("m1"); !proto.Equal(got, h.move("m1")) {
		t.Errorf("move m1: %v, want %v", got, h.move("m1"))
	}
	for _, name := range []string{"web", "api"} {
		got, _ := st.Endpoint(name)
		orig, _ := h.s.Endpoint(name)
		if !proto.Equal(got, orig) {
			t.Errorf("endpoint %s: %v, want %v", name, got, orig)
		}
	}
}

func TestReadBackupRefusesDamage(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("p", "eu"))
	h.ok(open("p", conn("c1", "web")))
	var buf bytes.Buffer
	if err := h.s.Backup().Write(&buf, h.index); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	for name, data := range map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)-3],
		"trailing":  append(bytes.Clone(good), 0),
		"garbage":   []byte(strings.Repeat("x", 64)),
		"no header": good[1+int(good[0]):],
	} {
		if _, err := ReadBackup(bytes.NewReader(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if !NewState().Empty() {
		t.Error("a new state is not empty")
	}
}
