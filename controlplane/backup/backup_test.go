package backup

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func file(t testing.TB, data []byte, edit func(*berthv1.BackupHeader)) []byte {
	t.Helper()
	sum := sha256.Sum256(data)
	h := &berthv1.BackupHeader{FormatVersion: FormatVersion, Index: 7, Size: uint64(len(data)), Sha256: sum[:]}
	if edit != nil {
		edit(h)
	}
	var buf bytes.Buffer
	if err := WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	buf.Write(data)
	return buf.Bytes()
}

func TestVerifyFile(t *testing.T) {
	data := []byte("snapshot bytes")
	good := file(t, data, nil)
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"good", good, nil},
		{"empty", nil, ErrNotBackup},
		{"other file", []byte("PK\x03\x04 a zip file, say"), ErrNotBackup},
		{"magic only", []byte(Magic), ErrTruncated},
		{"header cut", good[:len(Magic)+6], ErrTruncated},
		{"data cut", good[:len(good)-1], ErrTruncated},
		{"data longer", append(bytes.Clone(good), 'x'), ErrCorrupt},
		{"data changed", flipped, ErrCorrupt},
		{"huge header length", append([]byte(Magic), 0xff, 0xff, 0xff, 0xff), ErrCorrupt},
		{"zero header length", append([]byte(Magic), 0, 0, 0, 0), ErrCorrupt},
		{"header not proto", append([]byte(Magic), 0, 0, 0, 2, 0xff, 0xff), ErrCorrupt},
		{"future format", file(t, data, func(h *berthv1.BackupHeader) { h.FormatVersion = 2 }), ErrFormat},
		{"no checksum", file(t, data, func(h *berthv1.BackupHeader) { h.Sha256 = nil }), ErrCorrupt},
		{"no data", file(t, nil, nil), ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := VerifyFile(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && h.Index != 7 {
				t.Fatalf("header %v", h)
			}
		})
	}
}

func FuzzVerifyFile(f *testing.F) {
	f.Add(file(f, []byte("snapshot bytes"), nil))
	f.Add([]byte(Magic + "\x00\x00\x00\x01\x08"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := VerifyFile(bytes.NewReader(in))
		if err == nil && (h.Size == 0 || len(h.Sha256) != sha256.Size) {
			t.Fatalf("accepted a header that fails CheckHeader: %v", h)
		}
	})
}
