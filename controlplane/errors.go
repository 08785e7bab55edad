package controlplane

import (
	"context"
	"errors"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/client"
	"github.com/berthhq/berth/fsm"
)

// Errors a node returns besides the fsm package's (ErrInvalid, ErrNotFound,
// ErrFailedPrecondition, ErrAlreadyExists), the broker's
// (ErrInvalidSubscription, ErrSubscriptionReset, ErrSubscriptionClosed, in
// broker.go) and *client.NotLeaderError, which carries the leader's address
// so callers can retry there.
var (
	// ErrInvalidArgument is a request the node refuses before it reaches
	// Raft: an unknown consistency, a bad page token, a missing field.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrShutdown is returned once the node is closing.
	ErrShutdown = errors.New("node is shutting down")
	// ErrOutcomeUnknown means leadership was lost, or the deadline passed,
	// after the write was appended: it may or may not commit. A caller may
	// resend the same command (same request id): it never applies twice.
	ErrOutcomeUnknown = errors.New("leadership lost while applying: outcome unknown")
)

// toStatus maps any error a node produces to a gRPC status. It is the one
// place that does so, and it uses errors.Is / errors.As, so wrapped errors
// keep their code.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var notLeader *client.NotLeaderError
	switch {
	case errors.As(err, &notLeader):
		return client.NotLeaderStatus(notLeader.LeaderID, notLeader.LeaderAddress).Err()
	case errors.Is(err, fsm.ErrInvalid), errors.Is(err, ErrInvalidArgument), errors.Is(err, ErrInvalidSubscription):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, fsm.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, fsm.ErrFailedPrecondition):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, fsm.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, ErrOutcomeUnknown):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrNotVoter):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, raft.ErrRaftShutdown), errors.Is(err, ErrShutdown):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
