package tunnel

import (
	"bufio"
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// batchingConn is the connection under a yamux session. It cuts the
// syscalls a busy tunnel makes, which on loopback and in VMs cost more
// than everything else a request does in the proxy and the agent:
//
//   - Writes are batched. yamux's send loop (its only writer) hands frames
//     over one at a time and waits for each; batchingConn queues them and a
//     flusher goroutine writes whatever has queued in one syscall. While
//     one write is in the kernel the next frames queue behind it, so under
//     load many frames share a write, and an idle tunnel sends each frame
//     at once (nothing waits for a timer, as Nagle's algorithm would).
//   - A data frame's header and its body go into the queue together: the
//     send loop writes them as two calls, and the header says whether a
//     body follows (a data frame with a non-zero length, per the yamux
//     spec), so a header is never left waiting for a body that does not
//     come.
//   - Reads go through a large buffer, so one read takes every frame that
//     has arrived (yamux's own reader holds 4 KiB).
//
// Queued bytes are bounded by maxQueued: a writer beyond it waits for the
// flusher, so a slow peer still pushes back on yamux. The first write
// error is kept and returned by every later Write; yamux then ends the
// session.
type batchingConn struct {
	net.Conn
	br *bufio.Reader

	// Used only by the send loop, so not under mu.
	hdr     [yamuxHeaderLen]byte
	pending bool

	mu      sync.Mutex
	cond    sync.Cond
	queued  []byte
	spare   []byte
	err     error
	closing bool
	done    chan struct{} // closed when the flusher has returned

	closeOnce sync.Once
	closeErr  error
}

const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0

	// maxQueued bounds the bytes waiting for the flusher.
	maxQueued = 256 << 10
	// readBuffer is the size of one read from the connection.
	readBuffer = 64 << 10
	// closeFlush bounds how long Close waits to send what is queued (the
	// session's go-away, say) before it closes the connection anyway.
	closeFlush = 250 * time.Millisecond
)

func newBatchingConn(conn net.Conn) *batchingConn {
	c := &batchingConn{Conn: conn, br: bufio.NewReaderSize(conn, readBuffer), done: make(chan struct{})}
	c.cond.L = &c.mu
	go c.flush()
	return c
}

func (c *batchingConn) Read(b []byte) (int, error) { return c.br.Read(b) }

func (c *batchingConn) Write(b []byte) (int, error) {
	if !c.pending && len(b) == yamuxHeaderLen && b[1] == yamuxTypeData && binary.BigEndian.Uint32(b[8:12]) > 0 {
		copy(c.hdr[:], b)
		c.pending = true
		return len(b), nil
	}
	withHeader := c.pending
	c.pending = false

	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closing && len(c.queued) >= maxQueued {
		c.cond.Wait()
	}
	switch {
	case c.err != nil:
		return 0, c.err
	case c.closing:
		return 0, net.ErrClosed
	}
	if withHeader {
		c.queued = append(c.queued, c.hdr[:]...)
	}
	c.queued = append(c.queued, b...)
	c.cond.Broadcast()
	return len(b), nil
}

// flush writes out what has queued, one syscall per batch, until the
// connection fails or is closed with nothing left to send.
func (c *batchingConn) flush() {
	defer close(c.done)
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		for len(c.queued) == 0 && !c.closing {
			c.cond.Wait()
		}
		if len(c.queued) == 0 {
			return
		}
		batch := c.queued
		c.queued, c.spare = c.spare[:0], nil // batch and queued never share an array
		c.mu.Unlock()
		_, err := c.Conn.Write(batch)
		c.mu.Lock()
		if cap(batch) <= 2*maxQueued {
			c.spare = batch[:0]
		}
		c.cond.Broadcast() // writers waiting for room
		if err != nil {
			c.err = err
			c.queued = nil
			return
		}
	}
}

// Close sends what is queued (for at most closeFlush), then closes the
// connection and waits for the flusher.
func (c *batchingConn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.cond.Broadcast()
		c.mu.Unlock()
		select {
		case <-c.done:
		case <-time.After(closeFlush):
		}
		c.closeErr = c.Conn.Close()
		<-c.done
	})
	return c.closeErr
}
