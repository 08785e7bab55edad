package controlplanetest

import (
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"
)

// LinkFaults degrade every node-to-node link in user space (tc netem is not
// available). Each chunk a connection carries, in either direction, is held
// for Delay ± Jitter (uniform) before it is delivered, in order; with
// probability Loss it is held a further Retransmit, which is how a lost
// segment shows on a TCP stream: the bytes arrive, after the sender's
// retransmission timeout.
type LinkFaults struct {
	Delay, Jitter time.Duration
	Loss          float64
	Retransmit    time.Duration
}

func (f LinkFaults) zero() bool { return f == LinkFaults{} }

// Degrade applies faults to every node-to-node connection: those open now
// are cut, so that Raft and gRPC reconnect through the degraded link, and
// new ones are degraded from the start. The zero LinkFaults restores clean
// links (again cutting the degraded ones). seed makes the delays
// repeatable.
func (w *Network) Degrade(faults LinkFaults, seed uint64) {
	w.mu.Lock()
	w.faults = faults
	w.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	cut := make([]*trackedConn, 0, len(w.conns))
	for c := range w.conns {
		cut = append(cut, c)
	}
	w.mu.Unlock()
	for _, c := range cut {
		_ = c.Close()
	}
}

// hold is how long the next chunk waits, or zero on a clean link.
func (w *Network) hold() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	f := w.faults
	if f.zero() {
		return 0
	}
	d := f.Delay
	if f.Jitter > 0 {
		d += time.Duration(w.rng.Int64N(int64(2*f.Jitter))) - f.Jitter
	}
	if w.rng.Float64() < f.Loss {
		d += f.Retransmit
	}
	return max(d, 0)
}

func (w *Network) degraded() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.faults.zero()
}

// lossyConn delays what it writes and what it reads by the network's
// LinkFaults: a writer and a reader goroutine carry chunks to and from the
// real connection at their delivery times. Only the dialling side wraps its
// connection, so each direction is delayed once.
type lossyConn struct {
	net.Conn
	w      *Network
	out    chan chunk
	in     chan chunk
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex
	writeErr error
	lastOut  time.Time
	rest     []byte // the unread part of the chunk Read is on
	readErr  error
	deadline time.Time
	wake     chan struct{} // closed and replaced when the deadline changes
}

type chunk struct {
	data []byte
	due  time.Time
	err  error
}

func newLossyConn(c net.Conn, w *Network) *lossyConn {
	lc := &lossyConn{Conn: c, w: w, out: make(chan chunk, 1024), in: make(chan chunk, 1024),
		closed: make(chan struct{}), wake: make(chan struct{})}
	go lc.writeLoop()
	go lc.readLoop()
	return lc
}

func (c *lossyConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if err := c.writeErr; err != nil {
		c.mu.Unlock()
		return 0, err
	}
	due := later(time.Now().Add(c.w.hold()), c.lastOut) // in order
	c.lastOut = due
	c.mu.Unlock()
	select {
	case c.out <- chunk{data: append([]byte(nil), b...), due: due}:
		return len(b), nil
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *lossyConn) writeLoop() {
	for {
		select {
		case ch := <-c.out:
			if !sleepUntil(ch.due, c.closed) {
				return
			}
			if _, err := c.Conn.Write(ch.data); err != nil {
				c.mu.Lock()
				c.writeErr = err
				c.mu.Unlock()
				_ = c.Close()
				return
			}
		case <-c.closed:
			return
		}
	}
}

func (c *lossyConn) readLoop() {
	var last time.Time
	for {
		buf := make([]byte, 32<<10)
		n, err := c.Conn.Read(buf)
		due := later(time.Now().Add(c.w.hold()), last)
		last = due
		select {
		case c.in <- chunk{data: buf[:n], due: due, err: err}:
		case <-c.closed:
			return
		}
		if err != nil {
			return
		}
	}
}

func (c *lossyConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if len(c.rest) > 0 {
		n := copy(b, c.rest)
		c.rest = c.rest[n:]
		c.mu.Unlock()
		return n, nil
	}
	if err := c.readErr; err != nil {
		c.mu.Unlock()
		return 0, err
	}
	deadline, wake := c.deadline, c.wake
	c.mu.Unlock()
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case ch := <-c.in:
		if !sleepUntil(ch.due, c.closed) {
			return 0, net.ErrClosed
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		n := copy(b, ch.data)
		c.rest = ch.data[n:]
		if ch.err != nil {
			c.readErr = ch.err
			if n == 0 {
				return 0, ch.err
			}
		}
		return n, nil
	case <-timeout:
		return 0, os.ErrDeadlineExceeded
	case <-wake:
		return c.Read(b) // the deadline moved
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

// SetReadDeadline bounds Read; the real connection's reads run without
// one, ahead of delivery.
func (c *lossyConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	close(c.wake)
	c.wake = make(chan struct{})
	return nil
}

// SetWriteDeadline is accepted and ignored: writes are queued at once.
func (c *lossyConn) SetWriteDeadline(time.Time) error { return nil }

func (c *lossyConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *lossyConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// sleepUntil waits for t and reports false if done closed first.
func sleepUntil(t time.Time, done <-chan struct{}) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-done:
		return false
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
