// Package scheduler is Berth's rebalance planner: Plan is a pure,
// deterministic function from a View of the registry (proxies,
// connections, unfinished moves, the time) and Limits to the moves to
// start now. It does no I/O, reads no clock, starts no goroutines and
// uses no randomness; ties are broken by id, so the same view and limits
// give the same moves in the same order. The runner on the Raft leader
// (package controlplane) builds the view, assigns move ids and deadlines,
// and commits the moves; proxies carry them out make-before-break.
//
// # Who gives and who takes
//
// Proxies are balanced in groups: one per region, or one for the whole
// cluster with Limits.CrossRegion. A proxy is
//
//   - eligible (a target) if ACTIVE, Fresh, not in back-off
//     (Now >= BackoffUntil) and not overloaded;
//   - overloaded if ACTIVE, Fresh and its last sample is over
//     CPULimitMillicores or MemoryLimitBytes (a limit of 0 is none);
//   - draining if DRAINING;
//   - ignored with its connections if DOWN (the control plane removes
//     them);
//   - left alone otherwise (CORDONED, UNHEALTHY, stale, in back-off): its
//     connections count, it neither gives nor takes.
//
// Only eligible proxies receive connections.
//
// # The balance rule
//
// Let N be the group's connections on proxies that are not DOWN, with a
// PENDING move's connection counted on its target and an ACCEPTED move's
// old connection not counted (its new one is), and W the sum of the
// eligible proxies' weights (0 counts as 1). An eligible proxy of weight
// w has
//
//	target t = N × w / W
//	hi       = ceil(t × (1 + Band))
//	lo       = floor(t × (1 − Band))
//
// and is within the band when lo <= count <= hi: it is over only when
// count > hi, and then sheds down to hi, never further (a proxy above t
// but within the band gives only in the fill pass below). Since
// hi >= ceil(t) and
// lo <= floor(t), a proxy holding the integer next to its target is never
// out of band: 2 and 1 connections on two equal proxies is balanced.
// Since the sum of ceil(t) over eligible proxies is at least N, every
// group can be brought within the band whenever the connections are all
// on eligible proxies and the limits allow the moves.
//
// Excess is what a proxy must give: everything a draining proxy holds;
// what an overloaded proxy holds above its shed floor
// floor(s × (1 − Band)), where s = N × w / (W + overloaded weight) is its
// share as if it were healthy (the lower edge of its band); what an
// eligible proxy holds above hi. Deficit is what an eligible proxy holds
// below lo. E and D are a group's sums.
//
// Plan runs three passes over one shared budget
// (min(MaxPerPlan, MaxInFlight − len(InFlight))):
//
//  1. Shed: sources by reason (overloaded, then drain, then balance), the
//     one with most excess first. A move goes to a proxy under lo if any
//     can take it; to a proxy merely under hi only while E > D, or when
//     every proxy under lo is ruled out by the spread rule below.
//  2. Fill: while D > E − B, eligible proxies above their target t give
//     to proxies under lo, the one furthest above target first; a giver
//     stops at t, so it never falls under its own lo. B is the excess
//     shed found blocked: sources with movable connections and receivers,
//     every pairing of which the spread rule forbids (a drain whose
//     connection can go only to a proxy holding its endpoint's others).
//     Fill then makes room elsewhere for a later round.
//  3. Spread: see below.
//
// Every shed or fill move lowers max(E, D) by exactly one and no move
// (spread included) raises E or D: receivers never pass hi, givers never
// pass lo. So the balance moves needed, summed over rounds, are exactly
// max(E, D) of the first view: the minimum, as each move removes at most
// one unit of excess and one of deficit. The minimum is counted over the
// band's edges (hi and lo), not over the target, and there is no
// rounding allowance. The one exception is the spread rule's: a move sent
// to a proxy with mere room because every proxy under lo would have left
// an endpoint on one proxy, or a fill move that makes room for blocked
// excess, costs one move more. The property tests see
// at most 1.04× the minimum, and exactly the minimum in almost every run.
//
// A proxy with PENDING moves arriving neither sheds nor gives until they
// are accepted. An ACCEPTED move may last as long as the old connection's
// longest stream, so it holds nothing back: its old connection no longer
// counts, and its new one counts where it is.
//
// # Which connection, which target
//
// For each move Plan scores the source's first movable connections (id
// order) against the neediest receivers (under lo first, then the lowest
// count/target) and takes the best by: receiver under lo; then the
// change in how many proxies hold each of the connection's endpoints
// (prefer a receiver holding none of them, and a connection whose
// endpoints stay on the source); then the same for zones; then the
// receiver's neediness, then connection id. A move that would leave all
// of an endpoint's two or more connections on one proxy is never made,
// except to drain into a group's only eligible proxy.
//
// The spread pass then takes each endpoint with two or more connections
// that all sit on one eligible proxy, in name order, and moves one of
// them to another eligible proxy of the group (another zone first) if the
// source stays at or above lo and the receiver at or below hi: spread
// never takes balance out of the band, and it moves at most one
// connection per endpoint per plan.
//
// # Limits
//
// No plan exceeds MaxPerPlan, MaxInFlight (View.InFlight counted) or
// MaxInFlightPerProxy (moves leaving or reaching each proxy, View.InFlight
// counted). A connection is never moved if Moving, in View.InFlight,
// younger than MinAge, or moved less than CoolDown ago, and never to the
// proxy it is on.
//
// DESIGN.md beside this file says why.
package scheduler
