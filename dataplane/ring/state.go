package ring

import (
	"fmt"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// State is the connectivity state of one target, or the aggregate of an
// endpoint's targets. The values follow gRPC's connectivity states; the zero
// value is Idle (nothing tried yet).
type State int

const (
	// Idle: no connection and none being made; Pick asks for one.
	Idle State = iota
	// Connecting: a connection is being made.
	Connecting
	// Ready: requests can be sent now.
	Ready
	// TransientFailure: the last attempt failed; Pick skips the target.
	TransientFailure
)

// String returns the gRPC name of s, e.g. "TRANSIENT_FAILURE".
func (s State) String() string {
	switch s {
	case Idle:
		return "IDLE"
	case Connecting:
		return "CONNECTING"
	case Ready:
		return "READY"
	case TransientFailure:
		return "TRANSIENT_FAILURE"
	default:
		return fmt.Sprintf("State(%d)", int(s))
	}
}

// ToProto returns s as the wire enum. A State outside the four values maps
// to CONNECTIVITY_STATE_UNSPECIFIED.
func (s State) ToProto() berthv1.ConnectivityState {
	switch s {
	case Idle:
		return berthv1.ConnectivityState_CONNECTIVITY_STATE_IDLE
	case Connecting:
		return berthv1.ConnectivityState_CONNECTIVITY_STATE_CONNECTING
	case Ready:
		return berthv1.ConnectivityState_CONNECTIVITY_STATE_READY
	case TransientFailure:
		return berthv1.ConnectivityState_CONNECTIVITY_STATE_TRANSIENT_FAILURE
	default:
		return berthv1.ConnectivityState_CONNECTIVITY_STATE_UNSPECIFIED
	}
}

// FromProto converts the wire enum. UNSPECIFIED and unknown values are
// ErrUnknownState (with TransientFailure, the state Pick skips): a peer that
// did not say is not claiming any state.
func FromProto(s berthv1.ConnectivityState) (State, error) {
	switch s {
	case berthv1.ConnectivityState_CONNECTIVITY_STATE_IDLE:
		return Idle, nil
	case berthv1.ConnectivityState_CONNECTIVITY_STATE_CONNECTING:
		return Connecting, nil
	case berthv1.ConnectivityState_CONNECTIVITY_STATE_READY:
		return Ready, nil
	case berthv1.ConnectivityState_CONNECTIVITY_STATE_TRANSIENT_FAILURE:
		return TransientFailure, nil
	default:
		return TransientFailure, fmt.Errorf("connectivity state %v: %w", s, ErrUnknownState)
	}
}

// Aggregate is an endpoint's state from its targets' states, by gRPC
// ring_hash's rules (see the package comment). A value outside the four
// states counts as TransientFailure. The order of states does not matter.
func Aggregate(states []State) State {
	var ready, connecting, idle, failed int
	for _, s := range states {
		switch s {
		case Ready:
			ready++
		case Connecting:
			connecting++
		case Idle:
			idle++
		default:
			failed++
		}
	}
	switch {
	case ready > 0:
		return Ready
	case failed >= 2:
		return TransientFailure
	case connecting > 0:
		return Connecting
	case failed == 1 && len(states) > 1:
		return Connecting
	case idle > 0:
		return Idle
	default:
		return TransientFailure
	}
}

// ToConnect returns the index of the one IDLE target to ask to connect: the
// first IDLE in states, when the aggregate is Connecting or TransientFailure
// and no target is Connecting. Otherwise ok is false: the endpoint is READY
// or IDLE (a request will pick, and so connect, a target), an attempt is
// already under way, or there is nothing left to try. Pass states in the
// order of Ring.Targets so that every proxy tries the same target first.
//
// Call it after every state change and connect the target it names; a
// target it names moves to Connecting, so the next call returns false until
// that attempt ends.
func ToConnect(states []State) (int, bool) {
	if agg := Aggregate(states); agg != Connecting && agg != TransientFailure {
		return 0, false
	}
	first := -1
	for i, s := range states {
		switch s {
		case Connecting:
			return 0, false
		case Idle:
			if first < 0 {
				first = i
			}
		}
	}
	return first, first >= 0
}
