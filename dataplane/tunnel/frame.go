package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Protocol constants.
const (
	// ProtocolVersion is the version this build speaks; the preamble and the
	// hellos carry it.
	ProtocolVersion = 1
	// MaxFrameBytes bounds every frame: hellos, welcomes, control messages
	// and stream headers are all small.
	MaxFrameBytes = 64 << 10

	tunnelMagic = "BRTA"
	peerMagic   = "BRTP"
)

// Errors of the framing layer.
var (
	// ErrFrameTooLarge is a frame longer than MaxFrameBytes.
	ErrFrameTooLarge = errors.New("tunnel: frame too large")
	// ErrBadPreamble is a connection that does not start with the
	// expected magic (e.g. HTTP or TLS sent to a plaintext tunnel port).
	ErrBadPreamble = errors.New("tunnel: bad preamble")
	// ErrUnsupportedVersion is a peer speaking another protocol version.
	ErrUnsupportedVersion = errors.New("tunnel: unsupported protocol version")
)

// Error is a refusal the other side sent: a refused hello or stream.
type Error struct {
	Code    berthv1.TunnelErrorCode
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("tunnel: %s: %s", e.Code, e.Message)
}

func fromWire(e *berthv1.TunnelError) error {
	if e == nil {
		return nil
	}
	return &Error{Code: e.Code, Message: e.Message}
}

// Refusal builds the wire form of a refusal.
func Refusal(code berthv1.TunnelErrorCode, format string, args ...any) *berthv1.TunnelError {
	return &berthv1.TunnelError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// WriteFrame writes m as one length-prefixed frame.
func WriteFrame(w io.Writer, m proto.Message) error {
	body, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("tunnel: encode frame: %w", err)
	}
	if len(body) > MaxFrameBytes {
		return fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(body))
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err = w.Write(buf)
	return err
}

// ReadFrame reads one frame into m. A frame over MaxFrameBytes is refused
// before its body is read.
func ReadFrame(r io.Reader, m proto.Message) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrameBytes {
		return fmt.Errorf("%w: %d bytes announced", ErrFrameTooLarge, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return fmt.Errorf("tunnel: frame body: %w", err)
	}
	if err := proto.Unmarshal(body, m); err != nil {
		return fmt.Errorf("tunnel: decode frame: %w", err)
	}
	return nil
}

func writePreamble(w io.Writer, magic string) error {
	_, err := w.Write(append([]byte(magic), ProtocolVersion))
	return err
}

func readPreamble(r io.Reader, magic string) error {
	var p [5]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		return fmt.Errorf("tunnel: preamble: %w", err)
	}
	if string(p[:4]) != magic {
		return fmt.Errorf("%w: got %q", ErrBadPreamble, p[:4])
	}
	if p[4] != ProtocolVersion {
		return fmt.Errorf("%w: %d (this build speaks %d)", ErrUnsupportedVersion, p[4], ProtocolVersion)
	}
	return nil
}
