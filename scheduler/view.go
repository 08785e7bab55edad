package scheduler

import (
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// ProxyView is what the planner knows about one proxy.
type ProxyView struct {
	ID, Region, Zone string
	// Weight is the proxy's capacity weight; 0 counts as 1.
	Weight uint32
	Status berthv1.ProxyStatus
	// Fresh is true when the leader saw a load sample recently. A stale
	// proxy is never a target and never sheds: the planner knows nothing
	// current about it.
	Fresh         bool
	CPUMillicores uint32 // last load sample
	MemoryBytes   uint64
	// BackoffUntil: a move to this proxy aborted recently; it is not a
	// target before this time.
	BackoffUntil time.Time
}

// ConnView is one connection (agent tunnel) and the proxy that holds it.
type ConnView struct {
	ID, ProxyID string
	Endpoints   []string
	Moving      bool // already has a move in flight
	OpenedAt    time.Time
	LastMovedAt time.Time // zero if never moved
}

// InFlight is an unfinished (PENDING or ACCEPTED) move.
type InFlight struct {
	ConnectionID, From, To string
	// Accepted: the agent has opened the new connection at To, which the
	// view lists; the old one only finishes its streams and then closes.
	Accepted bool
}

// View is the read-only state one Plan call works on. The planner never
// modifies it, keeps no reference to it, and reads no clock but Now.
type View struct {
	Now         time.Time
	Proxies     []ProxyView
	Connections []ConnView
	InFlight    []InFlight
}

// Reasons a Move is planned.
const (
	ReasonDrain      = "drain"      // the source is DRAINING
	ReasonOverloaded = "overloaded" // the source is over a CPU or memory limit
	ReasonBalance    = "balance"    // weighted connection counts are out of the band
	ReasonSpread     = "spread"     // an endpoint's connections all sit on one proxy
)

// Move is one planned move: connection ConnectionID leaves From for To.
// The runner assigns move ids and deadlines.
type Move struct{ ConnectionID, From, To, Reason string }
