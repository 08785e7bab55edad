package fsm

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// moveSetup: proxies a, b (ACTIVE), c (cordoned); connections a1, a2, a3
// on a and b1 on b.
func moveSetup(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	for _, p := range []string{"a", "b", "c"} {
		h.ok(registerProxy(p, "r-"+p))
	}
	h.ok(setAdmin("c", adminCordoned))
	h.ok(open("a", conn("a1", "web"), conn("a2", "web"), conn("a3", "web")))
	h.ok(open("b", conn("b1", "web")))
	return h
}

func TestCreateMoves(t *testing.T) {
	h := moveSetup(t)
	evs := h.ok(createMoves(mv("m1", "a1", "a", "b"), mv("m2", "a2", "a", "b")))
	if got := eventKeys(evs); !slices.Equal(got, []string{"UPSERT move m1 PENDING", "UPSERT conn a1", "UPSERT move m2 PENDING", "UPSERT conn a2"}) {
		t.Errorf("events %v", got)
	}
	if evs[0].Region != "r-a" {
		t.Errorf("move event region %q, want the from-proxy's r-a", evs[0].Region)
	}
	m := h.move("m1")
	if m.State != movePending || m.CreatedIndex != h.index || m.CreatedUnixMs != h.now || m.Version != h.index ||
		m.Reason != "balance" || m.DeadlineUnixMs != testDeadline {
		t.Errorf("move %v", m)
	}
	if c := h.conn("a1"); c.State != connMoving || c.MoveId != "m1" || c.Version != h.index {
		t.Errorf("connection %v", c)
	}
}

func TestCreateMovesRefused(t *testing.T) {
	many := make([]*berthv1.Move, MaxMovesPerCommand+1)
	for i := range many {
		many[i] = mv(fmt.Sprintf("m%d", i), "a1", "a", "b")
	}
	past := mv("m9", "a3", "a", "b")
	past.DeadlineUnixMs = 1
	longReason := mv("m9", "a3", "a", "b")
	longReason.Reason = strings.Repeat("x", MaxReasonLen+1)
	tests := []struct {
		name  string
		moves []*berthv1.Move
		code  berthv1.ResultCode
		msg   string
	}{
		{"empty", nil, codeInvalid, "create_moves.moves: empty"},
		{"too many", many, codeInvalid, "10001 moves, at most 10000"},
		{"nil move", []*berthv1.Move{nil}, codeInvalid, "moves[0]: missing"},
		{"bad id", []*berthv1.Move{mv("m 9", "a3", "a", "b")}, codeInvalid, "moves[0].id"},
		{"to is from", []*berthv1.Move{mv("m9", "a3", "a", "a")}, codeInvalid, "also the from_proxy_id"},
		{"deadline passed", []*berthv1.Move{past}, codeInvalid, "deadline_unix_ms"},
		{"long reason", []*berthv1.Move{longReason}, codeInvalid, "moves[0].reason"},
		{"id exists", []*berthv1.Move{mv("m1", "a3", "a", "b")}, codeExists, `move "m1" already exists`},
		{"id twice", []*berthv1.Move{mv("m9", "a3", "a", "b"), mv("m9", "b1", "b", "a")}, codeExists, "also moves[0]"},
		{"unknown connection", []*berthv1.Move{mv("m9", "zz", "a", "b")}, codeNotFound, `connection "zz"`},
		{"connection moving", []*berthv1.Move{mv("m9", "a1", "a", "b")}, codePrecondition, "MOVING, not ACTIVE"},
		{"connection twice", []*berthv1.Move{mv("m9", "a3", "a", "b"), mv("m10", "a3", "a", "b")}, codePrecondition, "also moved by moves[0]"},
		{"wrong from", []*berthv1.Move{mv("m9", "a3", "b", "c")}, codePrecondition, `held by proxy "a"`},
		{"unknown to", []*berthv1.Move{mv("m9", "a3", "a", "zz")}, codeNotFound, `to_proxy_id: proxy "zz"`},
		{"to cordoned", []*berthv1.Move{mv("m9", "a3", "a", "c")}, codePrecondition, "CORDONED, not ACTIVE"},
		// All or nothing: a good move before a bad one is not created.
		{"later move bad", []*berthv1.Move{mv("m9", "a3", "a", "b"), mv("m10", "b1", "b", "c")}, codePrecondition, "moves[1].to_proxy_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := moveSetup(t)
			h.ok(createMoves(mv("m1", "a1", "a", "b")))
			h.ok(connEvents("b", openMoveEv(conn("b2", "web"), "m1")))
			res := h.refused(createMoves(tt.moves...), tt.code)
			if !strings.Contains(res.Message, tt.msg) {
				t.Errorf("message %q does not contain %q", res.Message, tt.msg)
			}
		})
	}
}

// TestChainedMove moves the new connection of an ACCEPTED move on before
// that move completes (its old connection still finishing a long stream):
// a drain must not wait for an unrelated WebSocket to end.
func TestChainedMove(t *testing.T) {
	h := moveSetup(t)
	h.ok(createMoves(mv("m1", "a1", "a", "b")))
	h.ok(connEvents("b", openMoveEv(conn("b2", "web"), "m1")))
	// b drains; b2 moves on to a while a1 still serves its stream.
	h.ok(createMoves(mv("m2", "b2", "b", "a")))
	if c := h.conn("b2"); c.State != connMoving || c.MoveId != "m2" {
		t.Errorf("b2 %v", c)
	}
	// A connection of an unfinished move can still not be the new side of
	// another.
	h.ok(connEvents("a", openMoveEv(conn("a9", "web"), "m2")))
	if m := h.move("m2"); m.State != moveAccepted || m.NewConnectionId != "a9" {
		t.Errorf("m2 %v", m)
	}
	// b closes b2 once its streams are done, which completes m2; m1 is
	// not aborted by it: its new connection moved on, it did not fail.
	h.ok(connEvents("b", closeEv("b2")))
	if m := h.move("m2"); m.State != moveCompleted {
		t.Errorf("m2 %v, want COMPLETED", m)
	}
	if c, ok := h.s.Connection("b2"); ok {
		t.Errorf("b2 still there after m2 completed: %v", c)
	}
	if m := h.move("m1"); m.State != moveAccepted {
		t.Errorf("m1 %v, want still ACCEPTED", m)
	}
	// a1's last stream ends: a completes m1 naming the connection the
	// agent first moved to, though it has moved on since.
	h.ok(updateMove("m1", moveCompleted, "b2", ""))
	if c, ok := h.s.Connection("a1"); ok {
		t.Errorf("a1 still there after m1 completed: %v", c)
	}
	if c := h.conn("a9"); c.State != connActive {
		t.Errorf("a9 %v", c)
	}
}

func TestCreateMovesTargetStatus(t *testing.T) {
	for _, tt := range []struct {
		name string
		cmd  *berthv1.Command
	}{
		{"draining", setAdmin("b", adminDraining)},
		{"unhealthy", setHealth("b", unhealthy, 0)},
		{"down", setHealth("b", down, 0)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := moveSetup(t)
			h.ok(tt.cmd)
			h.refused(createMoves(mv("m1", "a1", "a", "b")), codePrecondition)
		})
	}
}

// TestMakeBeforeBreak follows DESIGN.md's move protocol through the
// commands proxies send.
func TestMakeBeforeBreak(t *testing.T) {
	h := moveSetup(t)
	h.ok(createMoves(mv("m1", "a1", "a", "b")))

	// The agent dials b with the move id: b commits the new connection.
	evs := h.ok(connEvents("b", openMoveEv(conn("a1-new", "web"), "m1")))
	if got := eventKeys(evs); !slices.Equal(got, []string{"UPSERT conn a1-new", "UPSERT move m1 ACCEPTED", "UPSERT endpoint web"}) {
		t.Errorf("events %v", got)
	}
	if m := h.move("m1"); m.State != moveAccepted || m.NewConnectionId != "a1-new" {
		t.Errorf("move %v", m)
	}
	// A retried open is harmless.
	if evs := h.ok(connEvents("b", openMoveEv(conn("a1-new", "web"), "m1"))); len(evs) != 0 {
		t.Errorf("retried open: %v", eventKeys(evs))
	}

	// a drains and closes the old connection: the move is complete.
	evs = h.ok(connEvents("a", closeEv("a1")))
	if got := eventKeys(evs); !slices.Equal(got, []string{"DELETE conn a1", "UPSERT move m1 COMPLETED", "UPSERT endpoint web"}) {
		t.Errorf("events %v", got)
	}
	if c := h.conn("a1-new"); c.State != connActive || c.ProxyId != "b" {
		t.Errorf("new connection %v", c)
	}
	// The completion report that follows is idempotent.
	if evs := h.ok(updateMove("m1", moveCompleted, "a1-new", "")); len(evs) != 0 {
		t.Errorf("repeated completion: %v", eventKeys(evs))
	}
	// The finished move can not be accepted again.
	h.refused(connEvents("b", openMoveEv(conn("other", "web"), "m1")), codePrecondition)
}

func TestMoveEndsWhenAConnectionCloses(t *testing.T) {
	t.Run("source closed while pending", func(t *testing.T) {
		h := moveSetup(t)
		h.ok(createMoves(mv("m1", "a1", "a", "b")))
		evs := h.ok(connEvents("a", closeEv("a1")))
		if got := eventKeys(evs); !slices.Equal(got, []string{"DELETE conn a1", "UPSERT move m1 ABORTED", "UPSERT endpoint web"}) {
			t.Errorf("events %v", got)
		}
		if m := h.move("m1"); m.AbortReason != "connection closed" {
			t.Errorf("move %v", m)
		}
	})
	t.Run("new connection closed while accepted", func(t *testing.T) {
		h := moveSetup(t)
		h.ok(createMoves(mv("m1", "a1", "a", "b")))
		h.ok(connEvents("b", openMoveEv(conn("n1", "web"), "m1")))
		evs := h.ok(connEvents("b", closeEv("n1")))
		if got := eventKeys(evs); !slices.Equal(got, []string{"DELETE conn n1", "UPSERT move m1 ABORTED", "UPSERT conn a1", "UPSERT endpoint web"}) {
			t.Errorf("events %v", got)
		}
		if m := h.move("m1"); m.AbortReason != "new connection closed" {
			t.Errorf("move %v", m)
		}
		if c := h.conn("a1"); c.State != connActive || c.MoveId != "" {
			t.Errorf("old connection %v", c)
		}
	})
}

func TestUpdateMove(t *testing.T) {
	// prepare brings m1 (a1: a->b) to the given state; b holds n1 and n2,
	// a holds a3.
	prepare := func(t *testing.T, st berthv1.MoveState) *harness {
		h := moveSetup(t)
		h.ok(open("b", conn("n1", "web"), conn("n2", "web")))
		h.ok(createMoves(mv("m1", "a1", "a", "b"), mv("m-b1", "b1", "b", "a")))
		switch st {
		case moveAccepted:
			h.ok(updateMove("m1", moveAccepted, "n1", ""))
		case moveCompleted:
			h.ok(updateMove("m1", moveAccepted, "n1", ""))
			h.ok(updateMove("m1", moveCompleted, "", ""))
		case moveAborted:
			h.ok(updateMove("m1", moveAborted, "", "deadline passed"))
		}
		return h
	}
	tests := []struct {
		name string
		from berthv1.MoveState
		cmd  *berthv1.Command
		code berthv1.ResultCode
		msg  string
	}{
		{"pending to accepted", movePending, updateMove("m1", moveAccepted, "n1", ""), codeOK, ""},
		{"pending to aborted", movePending, updateMove("m1", moveAborted, "", "x"), codeOK, ""},
		{"pending to completed", movePending, updateMove("m1", moveCompleted, "", ""), codePrecondition, "only an ACCEPTED move"},
		{"accept unknown connection", movePending, updateMove("m1", moveAccepted, "zz", ""), codeNotFound, `connection "zz"`},
		{"accept connection on wrong proxy", movePending, updateMove("m1", moveAccepted, "a3", ""), codePrecondition, `not the target "b"`},
		{"accept the moved connection", movePending, updateMove("m1", moveAccepted, "a1", ""), codePrecondition, "the connection being moved"},
		{"accept a moving connection", movePending, updateMove("m1", moveAccepted, "b1", ""), codePrecondition, "itself being moved"},
		{"accept without connection", movePending, updateMove("m1", moveAccepted, "", ""), codeInvalid, "new_connection_id: empty"},
		{"accepted again same", moveAccepted, updateMove("m1", moveAccepted, "n1", ""), codeOK, ""},
		{"accepted again other", moveAccepted, updateMove("m1", moveAccepted, "n2", ""), codePrecondition, `accepted with connection "n1"`},
		{"accepted to completed", moveAccepted, updateMove("m1", moveCompleted, "n1", ""), codeOK, ""},
		{"complete with wrong connection", moveAccepted, updateMove("m1", moveCompleted, "n2", ""), codePrecondition, `new connection "n1", not "n2"`},
		{"accepted to aborted", moveAccepted, updateMove("m1", moveAborted, "", "x"), codeOK, ""},
		{"completed again", moveCompleted, updateMove("m1", moveCompleted, "", ""), codeOK, ""},
		{"completed to aborted", moveCompleted, updateMove("m1", moveAborted, "", ""), codePrecondition, "can no longer be ABORTED"},
		{"completed to accepted", moveCompleted, updateMove("m1", moveAccepted, "n1", ""), codePrecondition, "only a PENDING move"},
		{"aborted again", moveAborted, updateMove("m1", moveAborted, "", "other"), codeOK, ""},
		{"aborted to accepted", moveAborted, updateMove("m1", moveAccepted, "n1", ""), codePrecondition, "only a PENDING move"},
		{"aborted to completed", moveAborted, updateMove("m1", moveCompleted, "", ""), codePrecondition, "only an ACCEPTED move"},
		{"to pending", movePending, updateMove("m1", movePending, "", ""), codeInvalid, "want ACCEPTED, COMPLETED or ABORTED"},
		{"to unspecified", movePending, updateMove("m1", berthv1.MoveState_MOVE_STATE_UNSPECIFIED, "", ""), codeInvalid, "update_move.state"},
		{"to unknown enum", movePending, updateMove("m1", berthv1.MoveState(9), "", ""), codeInvalid, "update_move.state"},
		{"unknown move", movePending, updateMove("zz", moveAborted, "", ""), codeNotFound, `move "zz"`},
		{"bad reason", movePending, updateMove("m1", moveAborted, "", "\xff"), codeInvalid, "abort_reason: not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := prepare(t, tt.from)
			if tt.code != codeOK {
				res := h.refused(tt.cmd, tt.code)
				if !strings.Contains(res.Message, tt.msg) {
					t.Errorf("message %q does not contain %q", res.Message, tt.msg)
				}
				return
			}
			before := h.move("m1")
			evs := h.ok(tt.cmd)
			after := h.move("m1")
			if before.State == after.State {
				if len(evs) != 0 || before != after {
					t.Errorf("repeated %v changed something: %v", after.State, eventKeys(evs))
				}
				return
			}
			if after.Version != h.index {
				t.Errorf("move version %d, want %d", after.Version, h.index)
			}
			switch after.State {
			case moveAccepted:
				if after.NewConnectionId != "n1" || h.conn("a1").State != connMoving {
					t.Errorf("move %v, a1 %v", after, h.conn("a1"))
				}
			case moveCompleted:
				if _, ok := h.s.Connection("a1"); ok {
					t.Error("completed move left the old connection")
				}
				if c := h.conn("n1"); c.State != connActive {
					t.Errorf("new connection %v", c)
				}
			case moveAborted:
				if after.AbortReason != "x" {
					t.Errorf("abort reason %q", after.AbortReason)
				}
				if c := h.conn("a1"); c.State != connActive || c.MoveId != "" {
					t.Errorf("connection %v after abort", c)
				}
				if c := h.conn("n1"); c.State != connActive {
					t.Errorf("new connection %v after abort", c)
				}
			}
		})
	}
}

func TestCompletedMoveWhenOldConnectionAlreadyGone(t *testing.T) {
	h := moveSetup(t)
	h.ok(createMoves(mv("m1", "a1", "a", "b")))
	h.ok(connEvents("b", openMoveEv(conn("n1", "web"), "m1")))
	h.ok(updateMove("m1", moveCompleted, "", ""))
	if _, ok := h.s.Connection("a1"); ok {
		t.Fatal("old connection kept")
	}
	// a closes a1 late: nothing left to do.
	if evs := h.ok(connEvents("a", closeEv("a1"))); len(evs) != 0 {
		t.Errorf("late close: %v", eventKeys(evs))
	}
}

func TestFinishedMovesBounded(t *testing.T) {
	h := newHarness(t)
	h.ok(registerProxy("a", "r"))
	h.ok(registerProxy("b", "r"))
	const n = MaxFinishedMoves + 25
	// Open n connections and move each once, aborting in batches.
	const batch = 5000
	for start := 0; start < n; start += batch {
		var conns []*berthv1.Connection
		var moves []*berthv1.Move
		for i := start; i < min(start+batch, n); i++ {
			id := fmt.Sprintf("c%05d", i)
			conns = append(conns, conn(id, "web"))
			// Later-created moves get smaller ids, so pruning by id would
			// pick the wrong ones.
			moves = append(moves, mv(fmt.Sprintf("m%05d", n-i), id, "a", "b"))
		}
		h.ok(open("a", conns...))
		h.ok(createMoves(moves...))
	}
	if got := h.s.Counts().Moves; got != n {
		t.Fatalf("%d moves, want %d", got, n)
	}
	// Batch 0 (created first) holds m10025..m05026, batch 1 m05025..m00026,
	// batch 2 m00025..m00001: pruning by id alone would drop batch 2.
	h.ok(deregister("b")) // aborts all n at once
	if got := h.s.Counts().Moves; got != MaxFinishedMoves {
		t.Fatalf("%d moves kept, want %d", got, MaxFinishedMoves)
	}
	for i := 5026; i <= 5050; i++ {
		if _, ok := h.s.Move(fmt.Sprintf("m%05d", i)); ok {
			t.Errorf("move m%05d kept; the oldest (batch 0, smallest ids) go first", i)
		}
	}
	for _, i := range []int{1, 26, 5025, 5051, 10025} {
		if _, ok := h.s.Move(fmt.Sprintf("m%05d", i)); !ok {
			t.Errorf("move m%05d pruned", i)
		}
	}

	// One more finished move prunes exactly the next oldest, with a DELETE.
	h.ok(registerProxy("b", "r"))
	h.ok(createMoves(mv("z-last", "c00000", "a", "b")))
	evs := h.ok(updateMove("z-last", moveAborted, "", "test"))
	want := []string{"UPSERT move z-last ABORTED", "UPSERT conn c00000", "DELETE move m05051 ABORTED"}
	if got := eventKeys(evs); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if h.s.Counts().Moves != MaxFinishedMoves {
		t.Errorf("%d moves", h.s.Counts().Moves)
	}
}
