package tunnel

import (
	"encoding/binary"
	"net"
)

// coalescingConn merges each yamux data-frame header with the body written
// right after it into one write, halving the write syscalls of a busy
// tunnel. yamux's send loop (its only writer) writes a frame as Write(12-byte
// header) then Write(body); the header says whether a body follows (a data
// frame with a non-zero length, per the yamux spec), so nothing is ever held
// back waiting for a write that does not come.
type coalescingConn struct {
	net.Conn
	hdr     [yamuxHeaderLen]byte
	pending bool
	buf     []byte
}

const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0
)

func (c *coalescingConn) Write(b []byte) (int, error) {
	if c.pending {
		c.pending = false
		c.buf = append(append(c.buf[:0], c.hdr[:]...), b...)
		n, err := c.Conn.Write(c.buf)
		if cap(c.buf) > 1<<20 {
			c.buf = nil
		}
		return max(0, n-yamuxHeaderLen), err
	}
	if len(b) == yamuxHeaderLen && b[1] == yamuxTypeData && binary.BigEndian.Uint32(b[8:12]) > 0 {
		copy(c.hdr[:], b)
		c.pending = true
		return len(b), nil
	}
	return c.Conn.Write(b)
}
