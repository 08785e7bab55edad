package fsm

import (
	"errors"
	"fmt"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Sentinel errors. Every refusal the FSM reports wraps exactly one of them,
// and each maps one-to-one to a berthv1.ResultCode, so a refusal survives
// leader forwarding (as a CommandResult) and is mapped to a gRPC code in one
// place with errors.Is.
var (
	// ErrInvalid means the input is malformed or breaks a limit; retrying
	// it unchanged can never succeed (RESULT_CODE_INVALID_ARGUMENT).
	ErrInvalid = errors.New("invalid argument")

	// ErrNotFound means a named object does not exist (RESULT_CODE_NOT_FOUND).
	ErrNotFound = errors.New("not found")

	// ErrFailedPrecondition means the input is well formed but the current
	// state does not allow it, e.g. a move that is no longer PENDING or a
	// stale if_version (RESULT_CODE_FAILED_PRECONDITION).
	ErrFailedPrecondition = errors.New("failed precondition")

	// ErrAlreadyExists means an object with that ID already exists and the
	// command may not replace it (RESULT_CODE_ALREADY_EXISTS).
	ErrAlreadyExists = errors.New("already exists")
)

// codedError is a refusal: a result code and a message naming the field.
// Its text is "<sentinel>: <msg>", the same as ResultError produces, so an
// error reads the same whether it came from local validation or from a
// CommandResult.
type codedError struct {
	code berthv1.ResultCode
	msg  string
}

func (e *codedError) Error() string { return sentinel(e.code).Error() + ": " + e.msg }
func (e *codedError) Unwrap() error { return sentinel(e.code) }

func refuse(code berthv1.ResultCode, format string, args ...any) error {
	return &codedError{code: code, msg: fmt.Sprintf(format, args...)}
}

func invalid(format string, args ...any) error {
	return refuse(berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT, format, args...)
}

func notFound(format string, args ...any) error {
	return refuse(berthv1.ResultCode_RESULT_CODE_NOT_FOUND, format, args...)
}

func precondition(format string, args ...any) error {
	return refuse(berthv1.ResultCode_RESULT_CODE_FAILED_PRECONDITION, format, args...)
}

func exists(format string, args ...any) error {
	return refuse(berthv1.ResultCode_RESULT_CODE_ALREADY_EXISTS, format, args...)
}

func sentinel(code berthv1.ResultCode) error {
	switch code {
	case berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT:
		return ErrInvalid
	case berthv1.ResultCode_RESULT_CODE_NOT_FOUND:
		return ErrNotFound
	case berthv1.ResultCode_RESULT_CODE_FAILED_PRECONDITION:
		return ErrFailedPrecondition
	case berthv1.ResultCode_RESULT_CODE_ALREADY_EXISTS:
		return ErrAlreadyExists
	}
	return nil
}

// codeAndMessage splits err into what a CommandResult carries.
func codeAndMessage(err error) (berthv1.ResultCode, string) {
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code, ce.msg
	}
	return ResultCode(err), err.Error()
}

// ResultError turns a CommandResult into an error: nil when the code is OK,
// else an error wrapping the code's sentinel with the result's message, so
// callers test it with errors.Is. A nil result or an unknown code gives an
// error that wraps no sentinel.
func ResultError(r *berthv1.CommandResult) error {
	if r == nil {
		return errors.New("fsm: no command result")
	}
	if r.GetCode() == berthv1.ResultCode_RESULT_CODE_OK {
		return nil
	}
	if s := sentinel(r.GetCode()); s != nil {
		return fmt.Errorf("%w: %s", s, r.GetMessage())
	}
	return fmt.Errorf("fsm: command failed (%v): %s", r.GetCode(), r.GetMessage())
}

// ResultCode maps err back to its result code with errors.Is: nil is OK, an
// error wrapping one of the sentinels is that sentinel's code, anything
// else is RESULT_CODE_UNSPECIFIED.
func ResultCode(err error) berthv1.ResultCode {
	switch {
	case err == nil:
		return berthv1.ResultCode_RESULT_CODE_OK
	case errors.Is(err, ErrInvalid):
		return berthv1.ResultCode_RESULT_CODE_INVALID_ARGUMENT
	case errors.Is(err, ErrNotFound):
		return berthv1.ResultCode_RESULT_CODE_NOT_FOUND
	case errors.Is(err, ErrFailedPrecondition):
		return berthv1.ResultCode_RESULT_CODE_FAILED_PRECONDITION
	case errors.Is(err, ErrAlreadyExists):
		return berthv1.ResultCode_RESULT_CODE_ALREADY_EXISTS
	}
	return berthv1.ResultCode_RESULT_CODE_UNSPECIFIED
}
