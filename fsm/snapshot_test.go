package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// recorder is an Observer that keeps what it is told.
type recorder struct {
	mu        sync.Mutex
	published []uint64
	events    []*berthv1.Event
	resets    []uint64
}

func (r *recorder) Publish(index uint64, events []*berthv1.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.published = append(r.published, index)
	r.events = append(r.events, events...)
}

func (r *recorder) Reset(index uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resets = append(r.resets, index)
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

func commandLog(t testing.TB, index uint64, cmd *berthv1.Command) *raft.Log {
	t.Helper()
	b, err := Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: b}
}

func persist(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func fsmWith(t testing.TB, cmds []*berthv1.Command, obs Observer) *FSM {
	t.Helper()
	f := New(obs)
	for i, c := range cmds {
		res := f.Apply(commandLog(t, uint64(i+1), c)).(*berthv1.CommandResult)
		if res.Index != uint64(i+1) {
			t.Fatalf("result index %d", res.Index)
		}
	}
	return f
}

// TestDeterminism applies the same random commands to two States and
// through FSM.Apply, and compares results, events and snapshot bytes.
func TestDeterminism(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			cmds, _ := randomCommands(seed, 1500)
			a, b := NewState(), NewState()
			var rec recorder
			f := New(&rec)
			codes := map[berthv1.ResultCode]int{}
			for i, c := range cmds {
				idx := uint64(i + 1)
				ra, ea := a.Apply(idx, c)
				rb, eb := b.Apply(idx, c)
				rf := f.Apply(commandLog(t, idx, c)).(*berthv1.CommandResult)
				if !proto.Equal(ra, rb) || !proto.Equal(ra, rf) {
					t.Fatalf("index %d: results differ:\n%v\n%v\n%v", idx, ra, rb, rf)
				}
				if !eventsEqual(ea, eb) {
					t.Fatalf("index %d: events differ:\n%v\n%v", idx, eventKeys(ea), eventKeys(eb))
				}
				codes[ra.Code]++
				if err := checkInvariants(a); err != nil {
					t.Fatalf("index %d (%v): %v", idx, c, err)
				}
			}
			t.Logf("results by code: %v", codes)
			if codes[codeOK] < len(cmds)/4 || codes[codeOK] == len(cmds) {
				t.Errorf("a poor random run: %v", codes)
			}
			if codes[berthv1.ResultCode_RESULT_CODE_UNSPECIFIED] != 0 {
				t.Errorf("internal errors: %v", codes)
			}
			if f.AppliedIndex() != uint64(len(cmds)) || len(rec.published) != len(cmds) {
				t.Errorf("applied %d, published %d", f.AppliedIndex(), len(rec.published))
			}
			sa, sb := stateBytes(t, a), stateBytes(t, b)
			if !bytes.Equal(sa, sb) {
				t.Fatal("two states from the same commands differ")
			}
			var sf []byte
			f.View(func(s *State, _ uint64) { sf = stateBytes(t, s) })
			if !bytes.Equal(sa, sf) {
				t.Fatal("FSM state differs from State")
			}
			c := a.Counts()
			t.Logf("final counts %+v", c)
			if c.Connections == 0 || c.Moves == 0 || c.Proxies == 0 {
				t.Errorf("random run left an empty registry: %+v", c)
			}
		})
	}
}

func eventsEqual(a, b []*berthv1.Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	cmds, _ := randomCommands(7, 2000)
	src := fsmWith(t, cmds, nil)
	data := persist(t, src)

	var rec recorder
	dst := New(&rec)
	dst.Apply(commandLog(t, 1, registerProxy("stale", "x"))) // replaced by the restore
	if err := dst.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if dst.AppliedIndex() != uint64(len(cmds)) {
		t.Errorf("applied %d, want %d", dst.AppliedIndex(), len(cmds))
	}
	if len(rec.resets) != 1 || rec.resets[0] != uint64(len(cmds)) {
		t.Errorf("resets %v", rec.resets)
	}
	if again := persist(t, dst); !bytes.Equal(again, data) {
		t.Fatal("restored state snapshots differently")
	}
	dst.View(func(s *State, _ uint64) {
		if err := checkInvariants(s); err != nil {
			t.Fatalf("restored state: %v", err)
		}
		if _, ok := s.Proxy("stale"); ok {
			t.Error("state before the restore survived")
		}
	})
	var srcCounts, dstCounts Counts
	src.View(func(s *State, _ uint64) { srcCounts = s.Counts() })
	dst.View(func(s *State, _ uint64) { dstCounts = s.Counts() })
	if srcCounts != dstCounts {
		t.Errorf("counts %+v, want %+v", dstCounts, srcCounts)
	}

	// Both go on identically: the restored indexes work.
	more, _ := randomCommands(8, 500)
	for i, c := range more {
		idx := uint64(len(cmds) + i + 1)
		r1 := src.Apply(commandLog(t, idx, c))
		r2 := dst.Apply(commandLog(t, idx, c))
		if !proto.Equal(r1.(*berthv1.CommandResult), r2.(*berthv1.CommandResult)) {
			t.Fatalf("index %d: %v vs %v", idx, r1, r2)
		}
	}
	if !bytes.Equal(persist(t, src), persist(t, dst)) {
		t.Fatal("diverged after the restore")
	}
}

func TestSnapshotKeepsEndpointVersions(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("p", "r"))
	h.ok(open("p", conn("c1", "web"), conn("c2", "web")))
	h.ok(connEvents("p", closeEv("c2"))) // web changes with no connection left to show it
	e, _ := h.s.Endpoint("web")
	st, _, err := readSnapshot(bytes.NewReader(stateBytes(t, h.s)))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := st.Endpoint("web"); !proto.Equal(got, e) {
		t.Errorf("restored endpoint %v, want %v", got, e)
	}
}

func TestRestoreRejectsBadSnapshots(t *testing.T) {
	cmds, _ := randomCommands(3, 300)
	good := persist(t, fsmWith(t, cmds, nil))

	rec := func(r *berthv1.SnapshotRecord) []byte {
		var buf bytes.Buffer
		if _, err := protodelim.MarshalTo(&buf, r); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	header := func(v uint32) []byte {
		return rec(&berthv1.SnapshotRecord{Kind: &berthv1.SnapshotRecord_Header{Header: &berthv1.SnapshotHeader{FormatVersion: v, AppliedIndex: 5}}})
	}
	trailer := func(p, c uint64) []byte {
		return rec(&berthv1.SnapshotRecord{Kind: &berthv1.SnapshotRecord_Trailer{Trailer: &berthv1.SnapshotTrailer{Proxies: p, Connections: c}}})
	}
	proxyRec := func(id string) []byte {
		return rec(&berthv1.SnapshotRecord{Kind: &berthv1.SnapshotRecord_Proxy{Proxy: &berthv1.Proxy{Id: id}}})
	}
	connRec := func(id, proxy string) []byte {
		return rec(&berthv1.SnapshotRecord{Kind: &berthv1.SnapshotRecord_Connection{Connection: &berthv1.Connection{Id: id, ProxyId: proxy}}})
	}
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	cases := map[string][]byte{
		"empty":                 nil,
		"no header":             join(proxyRec("p"), trailer(1, 0)),
		"format 2":              join(header(2), trailer(0, 0)),
		"no trailer":            join(header(1), proxyRec("p")),
		"count mismatch":        join(header(1), proxyRec("p"), trailer(2, 0)),
		"data after trailer":    join(header(1), trailer(0, 0), proxyRec("p")),
		"duplicate proxy":       join(header(1), proxyRec("p"), proxyRec("p"), trailer(2, 0)),
		"connection no proxy":   join(header(1), connRec("c", "p"), trailer(0, 1)),
		"second header":         join(header(1), header(1), trailer(0, 0)),
		"garbage":               []byte("this is not a snapshot"),
		"oversized record size": join(header(1), []byte{0xff, 0xff, 0xff, 0xff, 0x0f}),
	}
	for i := 1; i < len(good); i += max(1, len(good)/40) {
		cases[fmt.Sprintf("truncated at %d of %d", i, len(good))] = good[:i]
	}
	cases["truncated by one byte"] = good[:len(good)-1]

	if _, _, err := readSnapshot(bytes.NewReader(join(header(1), trailer(0, 0)))); err != nil {
		t.Fatalf("minimal snapshot refused: %v", err)
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			var r recorder
			f := fsmWith(t, cmds[:50], &r)
			before := persist(t, f)
			applied := f.AppliedIndex()
			err := f.Restore(io.NopCloser(bytes.NewReader(data)))
			if err == nil {
				t.Fatal("restore succeeded")
			}
			if !bytes.Equal(persist(t, f), before) || f.AppliedIndex() != applied {
				t.Error("a failed restore changed the state")
			}
			if len(r.resets) != 0 {
				t.Error("a failed restore reset the observer")
			}
		})
	}
}

type failingSink struct{ memSink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestPersistCancelsOnError(t *testing.T) {
	f := fsmWith(t, []*berthv1.Command{registerProxy("p", "r")}, nil)
	snap, _ := f.Snapshot()
	var sink failingSink
	if err := snap.Persist(&sink); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Persist = %v", err)
	}
	if !sink.cancelled || sink.closed {
		t.Errorf("cancelled=%v closed=%v", sink.cancelled, sink.closed)
	}
}

func TestFSMApply(t *testing.T) {
	var rec recorder
	f := New(&rec)
	res := f.Apply(&raft.Log{Index: 1, Type: raft.LogNoop}).(*berthv1.CommandResult)
	if res.Code != codeOK || res.Index != 1 || f.AppliedIndex() != 1 {
		t.Errorf("noop: %v, applied %d", res, f.AppliedIndex())
	}
	for i, typ := range []raft.LogType{raft.LogBarrier, raft.LogConfiguration} {
		if res := f.Apply(&raft.Log{Index: uint64(2 + i), Type: typ}).(*berthv1.CommandResult); res.Code != codeOK {
			t.Errorf("%v: %v", typ, res)
		}
	}
	res = f.Apply(&raft.Log{Index: 4, Type: raft.LogCommand, Data: []byte{0xff, 0x01}}).(*berthv1.CommandResult)
	if res.Code != codeInvalid || res.Index != 4 || f.AppliedIndex() != 4 {
		t.Errorf("garbage: %v, applied %d", res, f.AppliedIndex())
	}
	res = f.Apply(commandLog(t, 5, registerProxy("p", "r"))).(*berthv1.CommandResult)
	if res.Code != codeOK {
		t.Errorf("register: %v", res)
	}
	res = f.Apply(commandLog(t, 6, setAdmin("nope", adminCordoned))).(*berthv1.CommandResult)
	if !errors.Is(ResultError(res), ErrNotFound) {
		t.Errorf("unknown proxy: %v", res)
	}
	if want := []uint64{1, 2, 3, 4, 5, 6}; fmt.Sprint(rec.published) != fmt.Sprint(want) {
		t.Errorf("published %v, want %v", rec.published, want)
	}
	if len(rec.events) != 1 || rec.events[0].Index != 5 || rec.events[0].GetProxy().GetId() != "p" {
		t.Errorf("events %v", rec.events)
	}
	f.View(func(s *State, applied uint64) {
		if applied != 6 || s.Counts().Proxies != 1 {
			t.Errorf("view at %d: %+v", applied, s.Counts())
		}
	})
	if New(nil).Apply(commandLog(t, 1, registerProxy("p", "r"))).(*berthv1.CommandResult).Code != codeOK {
		t.Error("FSM without observer")
	}
}

// TestFSMConcurrentReadsAndSnapshots runs Apply against View and Persist;
// run it with -race.
func TestFSMConcurrentReadsAndSnapshots(t *testing.T) {
	cmds, _ := randomCommands(11, 600)
	f := New(nil)
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			f.View(func(s *State, _ uint64) {
				s.ListConnections(ConnectionFilter{}, "", 10)
				s.SnapshotEvents([]berthv1.Topic{berthv1.Topic_TOPIC_CONNECTIONS, berthv1.Topic_TOPIC_ENDPOINTS}, nil)
			})
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			snap, _ := f.Snapshot()
			var sink memSink
			if err := snap.Persist(&sink); err != nil {
				t.Error(err)
				return
			}
			if _, _, err := readSnapshot(&sink.Buffer); err != nil {
				t.Error(err)
				return
			}
			snap.Release()
		}
	}()
	for i, c := range cmds {
		f.Apply(commandLog(t, uint64(i+1), c))
	}
	close(done)
	wg.Wait()
}

// TestSnapshotRestoreLarge round-trips the size the brief sets: 100k
// connections on 1,000 proxies. Its speed is BenchmarkSnapshotRestore's to
// measure; this test only logs the times.
func TestSnapshotRestoreLarge(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("a large state")
	}
	st, applied := largeState(t)
	f := &FSM{state: st, applied: applied}

	start := time.Now()
	snap, _ := f.Snapshot()
	captured := time.Since(start)
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	persisted := time.Since(start)
	dst := New(nil)
	if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	total := time.Since(start)
	t.Logf("Snapshot %v, +Persist %v (%d bytes), +Restore %v", captured, persisted, sink.Len(), total)
	dst.View(func(s *State, _ uint64) {
		if c := s.Counts(); c.Connections != 100_000 || c.Proxies != 1000 {
			t.Errorf("restored %+v", c)
		}
	})
}

var large struct {
	once    sync.Once
	s       *State
	applied uint64
}

// largeState is a registry of 100k connections on 1,000 proxies built once
// per test binary; tests must only read it.
func largeState(t *testing.T) (*State, uint64) {
	large.once.Do(func() {
		large.s = NewState()
		large.applied = buildLarge(t, large.s, 1000, 100_000)
	})
	if large.s == nil || large.s.Counts().Connections != 100_000 {
		t.Fatal("large state not built")
	}
	return large.s, large.applied
}

// buildLarge fills s with proxies and connections (each on 2-3 endpoints
// out of 501) through real commands, one batch per proxy, and returns the
// last index applied.
func buildLarge(t testing.TB, s *State, proxies, conns int) uint64 {
	t.Helper()
	idx := uint64(0)
	for p := range proxies {
		idx++
		if res, _ := s.Apply(idx, registerProxy(fmt.Sprintf("proxy-%04d", p), fmt.Sprintf("region-%d", p%4))); res.Code != codeOK {
			t.Fatal(res)
		}
	}
	per := (conns + proxies - 1) / proxies
	for p := range proxies {
		var evs []*berthv1.ConnectionEvent
		for i := p * per; i < min((p+1)*per, conns); i++ {
			evs = append(evs, openEv(largeConn(i)))
		}
		idx++
		if res, _ := s.Apply(idx, connEvents(fmt.Sprintf("proxy-%04d", p), evs...)); res.Code != codeOK || len(res.EventErrors) > 0 {
			t.Fatal(res)
		}
	}
	return idx
}

func largeConn(i int) *berthv1.Connection {
	c := &berthv1.Connection{
		Id: fmt.Sprintf("conn-%07d", i), Slot: fmt.Sprintf("slot-%07d", i), AgentId: fmt.Sprintf("agent-%05d", i/4),
		Endpoints: []string{fmt.Sprintf("ep-%03d", i%500), fmt.Sprintf("ep-%03d", (i/500)%500), "shared"},
	}
	if c.Endpoints[0] == c.Endpoints[1] {
		c.Endpoints = c.Endpoints[1:]
	}
	return c
}
