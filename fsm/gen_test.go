package fsm

import (
	"fmt"
	"math/rand/v2"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// chooser is where the random command generator gets its choices: a seeded
// PRNG for property tests, the fuzzer's bytes for FuzzApply.
type chooser interface {
	intn(n int) int
}

type randChooser struct{ r *rand.Rand }

func (c randChooser) intn(n int) int { return c.r.IntN(n) }

func newRandChooser(seed uint64) randChooser {
	return randChooser{rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// byteChooser reads choices from fuzz input; exhausted, it chooses 0.
type byteChooser struct {
	b []byte
}

func (c *byteChooser) intn(n int) int {
	if n <= 1 {
		return 0
	}
	if len(c.b) == 0 {
		return 0
	}
	v := int(c.b[0])
	c.b = c.b[1:]
	if n > 256 && len(c.b) > 0 {
		v = v<<8 | int(c.b[0])
		c.b = c.b[1:]
	}
	return v % n
}

func (c *byteChooser) done() bool { return len(c.b) == 0 }

// Small pools make collisions, the interesting cases, common.
const (
	genProxies   = 5
	genConns     = 24
	genMoves     = 40
	genEndpoints = 4
)

func pick(ch chooser, prefix string, n int) string {
	return fmt.Sprintf("%s%d", prefix, ch.intn(n))
}

func genEndpointList(ch chooser) []string {
	var eps []string
	for i := range genEndpoints {
		if ch.intn(3) == 0 {
			eps = append(eps, fmt.Sprintf("e%d", i))
		}
	}
	if ch.intn(25) == 0 {
		eps = append(eps, "Bad_Name")
	}
	if ch.intn(25) == 0 && len(eps) > 0 {
		eps = append(eps, eps[0])
	}
	return eps
}

func genConn(ch chooser) *berthv1.Connection {
	c := &berthv1.Connection{Id: pick(ch, "c", genConns), Slot: pick(ch, "s", 8), AgentId: pick(ch, "g", 3), Endpoints: genEndpointList(ch)}
	if ch.intn(20) == 0 {
		c.ProxyId = pick(ch, "p", genProxies)
	}
	return c
}

// randomCommand makes a command, mostly plausible, sometimes wrong. It
// peeks at s to make moves and acceptances that can succeed.
func randomCommand(ch chooser, s *State, now int64) *berthv1.Command {
	var cmd *berthv1.Command
	switch ch.intn(16) {
	case 0, 1:
		p := &berthv1.Proxy{Id: pick(ch, "p", genProxies), Region: pick(ch, "r", 2), Zone: pick(ch, "z", 3), CapacityWeight: uint32(ch.intn(3))}
		if ch.intn(3) == 0 {
			p.Labels = map[string]string{pick(ch, "k", 3): pick(ch, "v", 3)}
		}
		if ch.intn(3) == 0 {
			p.Addresses = &berthv1.ProxyAddresses{Tunnel: fmt.Sprintf("10.0.0.%d:7000", ch.intn(5))}
		}
		cmd = registerFull(p)
	case 2:
		cmd = setAdmin(pick(ch, "p", genProxies), berthv1.AdminState(ch.intn(4)))
	case 3:
		var ifv uint64
		if ch.intn(4) == 0 {
			ifv = uint64(ch.intn(50))
		}
		// DOWN is rarer than the others, or nothing would hold connections.
		h := []berthv1.Health{healthy, healthy, unhealthy, down, berthv1.Health_HEALTH_UNSPECIFIED}[ch.intn(5)]
		cmd = setHealth(pick(ch, "p", genProxies), h, ifv)
	case 4:
		switch ch.intn(6) {
		case 0, 1:
			cmd = deregister(pick(ch, "p", genProxies))
		case 2:
			cmd = cmdOf(&berthv1.RemoveProxyCommand{ProxyId: pick(ch, "p", genProxies)})
		default:
			cmd = registerProxy(pick(ch, "p", genProxies), "r0")
		}
	case 5, 6, 7, 8:
		pid := pick(ch, "p", genProxies)
		var evs []*berthv1.ConnectionEvent
		for range 1 + ch.intn(5) {
			switch ch.intn(5) {
			case 0, 1:
				evs = append(evs, openEv(genConn(ch)))
			case 2:
				// Accept a pending move to this proxy, when there is one.
				mid := pick(ch, "m", genMoves)
				for m := range s.moveIDs.after("") {
					if mm := s.moves[m]; mm.State == movePending && mm.ToProxyId == pid && ch.intn(2) == 0 {
						mid = m
						break
					}
				}
				evs = append(evs, openMoveEv(genConn(ch), mid))
			case 3:
				evs = append(evs, closeEv(pick(ch, "c", genConns)))
			case 4:
				if ch.intn(10) == 0 {
					evs = append(evs, &berthv1.ConnectionEvent{})
				} else {
					evs = append(evs, closeEv(pick(ch, "c", genConns)))
				}
			}
		}
		cmd = connEvents(pid, evs...)
	case 9:
		var conns []*berthv1.Connection
		for range ch.intn(7) {
			conns = append(conns, genConn(ch))
		}
		cmd = reconcile(pick(ch, "p", genProxies), conns...)
	case 10, 11, 12:
		var moves []*berthv1.Move
		for range 1 + ch.intn(3) {
			cid := pick(ch, "c", genConns)
			from := pick(ch, "p", genProxies)
			if c := s.conns[cid]; c != nil && ch.intn(4) != 0 {
				from = c.ProxyId
			}
			m := mv(pick(ch, "m", genMoves), cid, from, pick(ch, "p", genProxies))
			m.DeadlineUnixMs = now + 1 - int64(ch.intn(2))
			moves = append(moves, m)
		}
		cmd = createMoves(moves...)
	case 13, 14:
		mid := pick(ch, "m", genMoves)
		st := berthv1.MoveState(ch.intn(5))
		newConn := ""
		if m := s.moves[mid]; m != nil && st == moveAccepted {
			ids := s.connsByProxy[m.ToProxyId].keys()
			if len(ids) > 0 {
				newConn = ids[ch.intn(len(ids))]
			}
		}
		if newConn == "" && (st == moveAccepted || ch.intn(5) == 0) {
			newConn = pick(ch, "c", genConns)
		}
		cmd = updateMove(mid, st, newConn, []string{"", "deadline", "agent gone"}[ch.intn(3)])
	case 15:
		if ch.intn(3) == 0 {
			cmd = removeServer(pick(ch, "s", 3))
		} else {
			cmd = upsertServer(pick(ch, "s", 3), fmt.Sprintf("10.1.0.%d:7000", ch.intn(3)), "")
		}
	}
	cmd.NowUnixMs = now
	return cmd
}

// randomCommands generates n commands against a scratch state, applying
// each so the next one can peek at its effects. It returns the commands
// and the state they lead to.
func randomCommands(seed uint64, n int) ([]*berthv1.Command, *State) {
	ch := newRandChooser(seed)
	s := NewState()
	cmds := make([]*berthv1.Command, 0, n)
	for i := range n {
		cmd := randomCommand(ch, s, int64(1_000_000+i*100))
		s.Apply(uint64(i+1), cmd)
		cmds = append(cmds, cmd)
	}
	return cmds, s
}
