package client

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The ErrorInfo that marks a "not leader" answer. Servers build it with
// NotLeaderStatus (or return a *NotLeaderError); clients read it with
// AsNotLeader. Nothing else should spell these strings.
const (
	notLeaderReason = "NOT_LEADER"
	errorDomain     = "berth.v1"
	metaLeaderID    = "leader_id"
	metaLeaderAddr  = "leader_address"
)

// NotLeaderError says the node that answered is not the Raft leader and
// cannot forward the call. LeaderAddress is the leader's gRPC address when
// the node knows it; both fields are empty during an election.
type NotLeaderError struct {
	LeaderID      string
	LeaderAddress string
}

// Error implements error.
func (e *NotLeaderError) Error() string {
	switch {
	case e.LeaderID == "" && e.LeaderAddress == "":
		return "not leader: no leader known"
	case e.LeaderAddress == "":
		return fmt.Sprintf("not leader: leader is %s (address unknown)", e.LeaderID)
	default:
		return fmt.Sprintf("not leader: leader is %s at %s", e.LeaderID, e.LeaderAddress)
	}
}

// GRPCStatus lets a server handler return a *NotLeaderError directly; gRPC
// sends it as NotLeaderStatus.
func (e *NotLeaderError) GRPCStatus() *status.Status {
	return NotLeaderStatus(e.LeaderID, e.LeaderAddress)
}

// NotLeaderStatus is how servers encode "not leader": codes.Unavailable (so
// generic gRPC clients retry elsewhere) with an errdetails.ErrorInfo
// {Reason: "NOT_LEADER", Domain: "berth.v1"} carrying the leader's ID and
// gRPC address (either may be empty).
func NotLeaderStatus(leaderID, leaderAddr string) *status.Status {
	e := &NotLeaderError{LeaderID: leaderID, LeaderAddress: leaderAddr}
	st := status.New(codes.Unavailable, e.Error())
	withInfo, err := st.WithDetails(&errdetails.ErrorInfo{
		Reason: notLeaderReason,
		Domain: errorDomain,
		Metadata: map[string]string{
			metaLeaderID:   leaderID,
			metaLeaderAddr: leaderAddr,
		},
	})
	if err != nil {
		// Only fails for an OK status or an unmarshalable detail; neither
		// can happen here, and the bare code still makes clients fail over.
		return st
	}
	return withInfo
}

// AsNotLeader reports whether err (possibly wrapped) is a "not leader"
// answer, and decodes it. It accepts the ErrorInfo under any status code so
// that a server answering FailedPrecondition is still understood.
func AsNotLeader(err error) (*NotLeaderError, bool) {
	if err == nil {
		return nil, false
	}
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetReason() != notLeaderReason || info.GetDomain() != errorDomain {
			continue
		}
		md := info.GetMetadata()
		return &NotLeaderError{LeaderID: md[metaLeaderID], LeaderAddress: md[metaLeaderAddr]}, true
	}
	return nil, false
}
