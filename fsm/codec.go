package fsm

import (
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
	"google.golang.org/protobuf/proto"
)

// MaxCommandBytes bounds an encoded command, so one log entry can neither
// exhaust memory on decode nor stall replication.
const MaxCommandBytes = 8 << 20

// Encode marshals cmd for the Raft log. The encoding is deterministic
// (sorted map keys), so the same command gives the same bytes. It refuses a
// nil command or one larger than MaxCommandBytes with ErrInvalid; it does
// not validate the content (see ValidateCommand).
func Encode(cmd *berthv1.Command) ([]byte, error) {
	if cmd == nil {
		return nil, invalid("command: missing")
	}
	if n := proto.Size(cmd); n > MaxCommandBytes {
		return nil, invalid("command: %d bytes, at most %d", n, MaxCommandBytes)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		return nil, invalid("command: %v", err)
	}
	return b, nil
}

// Decode unmarshals a command from a Raft log entry. Anything that is not a
// well-formed Command of at most MaxCommandBytes is ErrInvalid.
func Decode(b []byte) (*berthv1.Command, error) {
	if len(b) > MaxCommandBytes {
		return nil, invalid("command: %d bytes, at most %d", len(b), MaxCommandBytes)
	}
	cmd := &berthv1.Command{}
	if err := proto.Unmarshal(b, cmd); err != nil {
		return nil, invalid("command: %v", err)
	}
	return cmd, nil
}
