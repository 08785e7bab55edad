package fsm

import (
	"bytes"
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// TestRollbackRestoresEverything applies random commands without
// committing them (dispatch, prune and endpoint flush, then rollback) and
// checks the state, indexes included, is exactly as before.
func TestRollbackRestoresEverything(t *testing.T) {
	cmds, _ := randomCommands(21, 1500)
	s := NewState()
	rolledBack := 0
	for i, cmd := range cmds {
		idx := uint64(i + 1)
		if i%3 == 0 && ValidateCommand(cmd) == nil {
			before := stateBytes(t, s)
			s.index, s.now, s.events = idx, cmd.NowUnixMs, nil
			if err := s.dispatch(cmd, &berthv1.CommandResult{}); err == nil {
				s.pruneFinishedMoves()
				s.flushEndpoints()
			}
			changed := len(s.undo) > 0
			s.rollback(0)
			clear(s.dirty)
			s.events = nil
			if err := checkInvariants(s); err != nil {
				t.Fatalf("after rolling back %v: %v", cmd, err)
			}
			if !bytes.Equal(before, stateBytes(t, s)) {
				t.Fatalf("rolling back %v left changes", cmd)
			}
			if changed {
				rolledBack++
			}
		}
		s.Apply(idx, cmd)
	}
	if rolledBack < 100 {
		t.Errorf("only %d commands with changes were rolled back", rolledBack)
	}
}

// TestPanicIsRolledBack breaks an internal invariant by hand so that Apply
// panics halfway through a change: the result is an internal error and the
// state is as before, not half changed.
func TestPanicIsRolledBack(t *testing.T) {
	h := twoProxies(t)
	h.ok(open("a", conn("c1", "web")))
	h.ok(createMoves(mv("m1", "c1", "a", "b")))
	h.ok(connEvents("b", openMoveEv(conn("n1", "web"), "m1")))
	// Lose the move but keep the index pointing at it.
	h.s.unsetMove("m1")
	h.s.acceptedBy["n1"] = "m1"
	before := stateBytes(t, h.s)

	res, evs := h.s.Apply(100, connEvents("b", closeEv("n1")))
	if res.Code != berthv1.ResultCode_RESULT_CODE_UNSPECIFIED || !strings.Contains(res.Message, "internal error") {
		t.Fatalf("result %v", res)
	}
	if ResultError(res) == nil || res.Index != 100 || len(evs) != 0 {
		t.Errorf("error %v, index %d, events %d", ResultError(res), res.Index, len(evs))
	}
	if !bytes.Equal(before, stateBytes(t, h.s)) {
		t.Error("the half-applied change was not rolled back")
	}
	if _, ok := h.s.Connection("n1"); !ok {
		t.Error("n1 deleted")
	}
	if len(h.s.undo) != 0 || len(h.s.dirty) != 0 || h.s.events != nil {
		t.Error("scratch left over")
	}
}
