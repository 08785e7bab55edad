// Package backup is the file format of a saved registry, written by
// `berthctl snapshot save` and read by `berthctl snapshot restore` and the
// control plane's RestoreSnapshot: the magic "BERTHBAK", a 4-byte
// big-endian length and a berthv1.BackupHeader, then exactly header.size
// bytes of FSM snapshot whose SHA-256 is header.sha256.
//
// The snapshot bytes are the fsm package's snapshot stream, which carries
// its own format version, applied index and record counts; this wrapper
// adds what a file on an operator's disk needs: a way to tell it from any
// other file, and a checksum over everything, so a truncated or damaged
// copy is refused before it reaches a cluster.
package backup

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Magic opens every backup file.
const Magic = "BERTHBAK"

// FormatVersion is the BackupHeader.format_version this code writes and
// the only one it reads.
const FormatVersion = 1

// Bounds on what a reader accepts.
const (
	MaxHeaderBytes = 64 << 10
	// MaxSize bounds the snapshot bytes: a restoring node holds them in
	// memory while it checks them.
	MaxSize = 1 << 30
)

// Errors a backup is refused with; wrapped with details.
var (
	// ErrNotBackup: the file does not start with the magic.
	ErrNotBackup = errors.New("not a berth backup (no BERTHBAK magic)")
	// ErrTruncated: the file ends before its header or data does.
	ErrTruncated = errors.New("backup truncated")
	// ErrCorrupt: the header does not decode, the data is longer than the
	// header says, or the checksum does not match.
	ErrCorrupt = errors.New("backup corrupt")
	// ErrFormat: a format version this build does not read.
	ErrFormat = errors.New("unsupported backup format")
)

// WriteHeader writes the magic and h.
func WriteHeader(w io.Writer, h *berthv1.BackupHeader) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(h)
	if err != nil {
		return fmt.Errorf("encode backup header: %w", err)
	}
	var buf bytes.Buffer
	buf.WriteString(Magic)
	_ = binary.Write(&buf, binary.BigEndian, uint32(len(b)))
	buf.Write(b)
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("write backup header: %w", err)
	}
	return nil
}

// ReadHeader reads the magic and the header from r and checks the header
// (CheckHeader). r is left at the first byte of the data.
func ReadHeader(r io.Reader) (*berthv1.BackupHeader, error) {
	var magic [len(Magic)]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrNotBackup
		}
		return nil, fmt.Errorf("read backup: %w", err)
	}
	if string(magic[:]) != Magic {
		return nil, ErrNotBackup
	}
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, fmt.Errorf("%w: in the header length: %w", ErrTruncated, err)
	}
	if n == 0 || n > MaxHeaderBytes {
		return nil, fmt.Errorf("%w: header length %d", ErrCorrupt, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: in the header: %w", ErrTruncated, err)
	}
	h := &berthv1.BackupHeader{}
	if err := proto.Unmarshal(b, h); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrCorrupt, err)
	}
	if err := CheckHeader(h); err != nil {
		return nil, err
	}
	return h, nil
}

// CheckHeader refuses a header this build cannot restore.
func CheckHeader(h *berthv1.BackupHeader) error {
	switch {
	case h == nil:
		return fmt.Errorf("%w: no header", ErrCorrupt)
	case h.FormatVersion != FormatVersion:
		return fmt.Errorf("%w: version %d, this build reads %d", ErrFormat, h.FormatVersion, FormatVersion)
	case h.Size == 0:
		return fmt.Errorf("%w: header says the data is empty", ErrCorrupt)
	case h.Size > MaxSize:
		return fmt.Errorf("%w: %d bytes of data, at most %d", ErrCorrupt, h.Size, MaxSize)
	case len(h.Sha256) != sha256.Size:
		return fmt.Errorf("%w: checksum is %d bytes, not %d", ErrCorrupt, len(h.Sha256), sha256.Size)
	}
	return nil
}

// Verify checks that data is what h describes: its length and SHA-256.
func Verify(h *berthv1.BackupHeader, size uint64, sum []byte) error {
	switch {
	case size < h.Size:
		return fmt.Errorf("%w: %d of %d bytes of data", ErrTruncated, size, h.Size)
	case size > h.Size:
		return fmt.Errorf("%w: %d bytes of data, the header says %d", ErrCorrupt, size, h.Size)
	case !bytes.Equal(sum, h.Sha256):
		return fmt.Errorf("%w: SHA-256 %x, the header says %x", ErrCorrupt, sum, h.Sha256)
	}
	return nil
}

// VerifyFile reads a whole backup from r and checks its header, length
// and checksum without keeping the data.
func VerifyFile(r io.Reader) (*berthv1.BackupHeader, error) {
	h, err := ReadHeader(r)
	if err != nil {
		return nil, err
	}
	sum := sha256.New()
	// One byte past the declared size tells "too long" from "exact".
	n, err := io.Copy(sum, io.LimitReader(r, int64(h.Size)+1))
	if err != nil {
		return nil, fmt.Errorf("read backup data: %w", err)
	}
	if err := Verify(h, uint64(n), sum.Sum(nil)); err != nil {
		return nil, err
	}
	return h, nil
}
