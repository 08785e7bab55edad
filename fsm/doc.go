// Package fsm is Berth's replicated state machine: the registry of proxies,
// connections, moves and control-plane servers, the endpoints derived from
// connections, the indexes that keep queries O(result), and snapshot and
// restore. FSM adapts it to hashicorp/raft; State is the command processor
// and the read model.
//
// Every change is a berthv1.Command in the Raft log. Applying one is
// deterministic — time comes inside the command, IDs are chosen before
// proposing, nothing is read from a clock or from I/O — and a refused
// command changes nothing. Each applied command yields ordered
// berthv1.Events (topics and filters defined by Match) for the control
// plane's event broker.
//
// The package does no I/O except reading and writing snapshot streams,
// starts no goroutines, and reads no clock. See DESIGN.md for why stored
// objects are immutable, the snapshot format, and what is validated where.
package fsm
