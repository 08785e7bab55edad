package fsm

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

var writeFuzzSeeds = flag.Bool("write-fuzz-seeds", false, "rewrite the seed corpus under testdata/fuzz")

// fuzzBase is a small registry for FuzzDecode to apply commands to, so
// decoded commands meet proxies, connections and moves with the pools'
// names (p0.., c0.., m0..).
func fuzzBase() []*berthv1.Command {
	return []*berthv1.Command{
		registerProxy("p0", "r0"),
		registerProxy("p1", "r1"),
		registerProxy("p2", "r0"),
		setAdmin("p2", adminCordoned),
		open("p0", conn("c0", "e0", "e1"), conn("c1", "e1")),
		open("p1", conn("c2", "e0")),
		createMoves(mv("m0", "c0", "p0", "p1")),
		connEvents("p1", openMoveEv(conn("c3", "e0", "e1"), "m0")),
		createMoves(mv("m1", "c2", "p1", "p0")),
		upsertServer("s0", "10.0.0.1:7000", "10.0.0.1:7001"),
	}
}

// fuzzSeeds are valid encoded commands of every kind, plus a few broken
// ones, against fuzzBase.
func fuzzSeeds() [][]byte {
	cmds := []*berthv1.Command{
		registerFull(&berthv1.Proxy{Id: "p3", Region: "r1", Labels: map[string]string{"k": "v"}, Addresses: &berthv1.ProxyAddresses{Tunnel: "10.0.0.3:7000"}}),
		setAdmin("p0", adminDraining),
		setHealth("p1", down, 0),
		setHealth("p0", unhealthy, 3),
		deregister("p0"),
		connEvents("p0", openEv(conn("c9", "e2")), closeEv("c1"), closeEv("c0")),
		connEvents("p1", closeEv("c3")),
		reconcile("p0", conn("c0", "e0"), conn("c5", "e3")),
		createMoves(mv("m5", "c1", "p0", "p1")),
		updateMove("m0", moveCompleted, "c3", ""),
		updateMove("m1", moveAborted, "", "deadline"),
		updateMove("m1", moveAccepted, "c0", ""),
		upsertServer("s1", "10.0.0.2:7000", ""),
		removeServer("s0"),
		{},
	}
	var out [][]byte
	for i, c := range cmds {
		c.NowUnixMs = int64(2_000_000 + i)
		b, err := Encode(c)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	return append(out, nil, []byte{0xff}, []byte("\x82\x01\x02\x0a\x00"))
}

func FuzzDecode(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	base := fuzzBase()
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decode error %v is not ErrInvalid", err)
			}
			return
		}
		s := NewState()
		for i, c := range base {
			c.NowUnixMs = 1_000_000
			s.Apply(uint64(i+1), c)
		}
		before := stateBytes(t, s)
		res, evs := s.Apply(uint64(len(base)+1), cmd)
		checkApplied(t, s, cmd, res, evs, before)
	})
}

// checkApplied checks what every applied command must satisfy: a result
// with a known code, invariants intact, and, when refused, no events and no
// change.
func checkApplied(t *testing.T, s *State, cmd *berthv1.Command, res *berthv1.CommandResult, evs []*berthv1.Event, before []byte) {
	t.Helper()
	if res == nil {
		t.Fatal("nil result")
	}
	if res.Code == berthv1.ResultCode_RESULT_CODE_UNSPECIFIED {
		t.Fatalf("%v: internal error: %s", cmd, res.Message)
	}
	if err := checkInvariants(s); err != nil {
		t.Fatalf("%v: %v", cmd, err)
	}
	if res.Code != codeOK {
		if len(evs) != 0 {
			t.Fatalf("%v: refused (%v) with %d events", cmd, res.Code, len(evs))
		}
		if before != nil && !bytes.Equal(before, stateBytes(t, s)) {
			t.Fatalf("%v: refused (%v) but changed the state", cmd, res.Code)
		}
	}
}

func FuzzApply(f *testing.F) {
	for _, seed := range fuzzApplySeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ch := &byteChooser{b: data}
		s := NewState()
		var cmds []*berthv1.Command
		for i := 0; !ch.done() && i < 200; i++ {
			cmd := randomCommand(ch, s, int64(1_000_000+i*100))
			before := stateBytes(t, s)
			res, evs := s.Apply(uint64(i+1), cmd)
			checkApplied(t, s, cmd, res, evs, before)
			cmds = append(cmds, cmd)
		}
		// Replaying the same log gives the same state.
		replay := NewState()
		for i, c := range cmds {
			replay.Apply(uint64(i+1), c)
		}
		if !bytes.Equal(stateBytes(t, s), stateBytes(t, replay)) {
			t.Fatal("replay differs")
		}
	})
}

// fuzzApplySeeds are choice streams for randomCommand: a PRNG's bytes, so
// the seeds already walk deep into the state space.
func fuzzApplySeeds() [][]byte {
	var out [][]byte
	for seed := range uint64(6) {
		ch := newRandChooser(seed + 100)
		b := make([]byte, 256<<(seed%5))
		for i := range b {
			b[i] = byte(ch.intn(256))
		}
		out = append(out, b)
	}
	return append(out, []byte{}, []byte{0, 0, 0, 0}, bytes.Repeat([]byte{5, 1, 0, 2}, 64))
}

// TestWriteFuzzSeeds rewrites testdata/fuzz from the seed functions when
// run with -write-fuzz-seeds, and otherwise checks the committed corpus is
// there.
func TestWriteFuzzSeeds(t *testing.T) {
	corpora := map[string][][]byte{"FuzzDecode": fuzzSeeds(), "FuzzApply": fuzzApplySeeds()}
	for name, seeds := range corpora {
		dir := filepath.Join("testdata", "fuzz", name)
		if !*writeFuzzSeeds {
			entries, err := os.ReadDir(dir)
			if err != nil || len(entries) < len(seeds) {
				t.Errorf("%s: %d committed seeds (%v); regenerate with -write-fuzz-seeds", dir, len(entries), err)
			}
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, b := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestInvalidUTF8NeverStored puts invalid UTF-8 into each string of each
// seed command in turn: whatever Apply accepts must still marshal, or every
// later snapshot would fail.
func TestInvalidUTF8NeverStored(t *testing.T) {
	base := fuzzBase()
	tried := 0
	for _, b := range fuzzSeeds() {
		cmd, err := Decode(b)
		if err != nil {
			continue
		}
		for n := 0; ; n++ {
			c := proto.Clone(cmd).(*berthv1.Command)
			k := n
			if !corruptNth(c.ProtoReflect(), &k) {
				break
			}
			tried++
			s := NewState()
			for i, bc := range base {
				bc.NowUnixMs = 1_000_000
				s.Apply(uint64(i+1), bc)
			}
			before := stateBytes(t, s)
			res, evs := s.Apply(uint64(len(base)+1), c)
			checkApplied(t, s, c, res, evs, before)
			stateBytes(t, s) // fails the test if a stored string does not marshal
		}
	}
	if tried < 30 {
		t.Errorf("only %d strings corrupted", tried)
	}
}

// corruptNth sets the *n-th string in m (depth first; a map's keys count
// as one string, its values as another) to invalid UTF-8 and reports
// whether there was one.
func corruptNth(m protoreflect.Message, n *int) bool {
	const bad = "x\xffy"
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapKey().Kind() == protoreflect.StringKind {
				if *n == 0 {
					old := v.Map()
					fresh := m.NewField(fd).Map()
					old.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
						fresh.Set(protoreflect.ValueOfString(bad+k.String()).MapKey(), v)
						return true
					})
					m.Set(fd, protoreflect.ValueOfMap(fresh))
					found = true
					return false
				}
				*n--
			}
			if fd.MapValue().Kind() == protoreflect.StringKind {
				if *n == 0 {
					v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
						v.Map().Set(k, protoreflect.ValueOfString(bad))
						return true
					})
					found = true
					return false
				}
				*n--
			}
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				switch fd.Kind() {
				case protoreflect.StringKind:
					if *n == 0 {
						l.Set(i, protoreflect.ValueOfString(bad))
						found = true
						return false
					}
					*n--
				case protoreflect.MessageKind:
					if corruptNth(l.Get(i).Message(), n) {
						found = true
						return false
					}
				}
			}
		case fd.Kind() == protoreflect.StringKind:
			if *n == 0 {
				m.Set(fd, protoreflect.ValueOfString(bad))
				found = true
				return false
			}
			*n--
		case fd.Kind() == protoreflect.MessageKind:
			if corruptNth(v.Message(), n) {
				found = true
				return false
			}
		}
		return true
	})
	return found
}
