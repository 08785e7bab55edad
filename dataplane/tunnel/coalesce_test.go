package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// gatedConn records every Write as one batch; while the gate is shut,
// writes wait.
type gatedConn struct {
	net.Conn // nil: only Write and Close are used
	gate     chan struct{}
	entered  chan struct{} // if set, told when a Write waits at the gate
	fail     error

	mu      sync.Mutex
	batches [][]byte
	closed  bool
}

func (g *gatedConn) Write(b []byte) (int, error) {
	if g.gate != nil {
		if g.entered != nil {
			g.entered <- struct{}{}
		}
		<-g.gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return 0, g.fail
	}
	g.batches = append(g.batches, append([]byte(nil), b...))
	return len(b), nil
}

func (g *gatedConn) Read([]byte) (int, error) { return 0, io.EOF }

func (g *gatedConn) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return nil
}

func (g *gatedConn) written() ([]byte, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return bytes.Join(g.batches, nil), len(g.batches)
}

func dataHeader(length uint32) []byte {
	h := make([]byte, yamuxHeaderLen)
	h[1] = yamuxTypeData
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestBatchingConnBatchesWhileAWriteIsInTheKernel(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{})}
	c := newBatchingConn(g)
	var want []byte
	for i := range 10 {
		body := bytes.Repeat([]byte{byte('a' + i)}, 100)
		hdr := dataHeader(uint32(len(body)))
		for _, b := range [][]byte{hdr, body} {
			if n, err := c.Write(b); err != nil || n != len(b) {
				t.Fatalf("write %d: n=%d err=%v", i, n, err)
			}
		}
		want = append(append(want, hdr...), body...)
	}
	close(g.gate) // the first batch may have been taken alone; the rest queued behind it
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got, batches := g.written()
	if !bytes.Equal(got, want) {
		t.Fatalf("the bytes written differ from the frames sent (%d vs %d bytes)", len(got), len(want))
	}
	if batches > 2 {
		t.Fatalf("10 frames went out in %d writes; they should share at most 2", batches)
	}
	if !g.closed {
		t.Fatal("Close did not close the connection")
	}
}

func TestBatchingConnSendsAHeaderWithItsBody(t *testing.T) {
	g := &gatedConn{}
	c := newBatchingConn(g)
	defer c.Close()
	hdr, body := dataHeader(3), []byte("abc")
	_, _ = c.Write(hdr)
	time.Sleep(20 * time.Millisecond) // an idle flusher would have sent a lone header by now
	if _, n := g.written(); n != 0 {
		t.Fatal("a data header went out before its body")
	}
	_, _ = c.Write(body)
	// A window update (no body) goes out as it is.
	update := make([]byte, yamuxHeaderLen)
	update[1] = 1
	_, _ = c.Write(update)
	_ = c.Close()
	got, _ := g.written()
	if want := append(append(append([]byte(nil), hdr...), body...), update...); !bytes.Equal(got, want) {
		t.Fatalf("wrote %x, want %x", got, want)
	}
}

func TestBatchingConnKeepsTheFirstWriteError(t *testing.T) {
	broken := errors.New("connection reset")
	g := &gatedConn{fail: broken}
	c := newBatchingConn(g)
	defer c.Close()
	_, _ = c.Write([]byte("x"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Write([]byte("y"))
		if errors.Is(err, broken) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes still succeed after the connection failed (last error %v)", err)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestBatchingConnPushesBackOnASlowPeer(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{})}
	c := newBatchingConn(g)
	chunk := make([]byte, 64<<10)
	wrote := make(chan int, 16)
	go func() {
		for i := range 12 { // 768 KiB: well past maxQueued plus the batch in flight
			if _, err := c.Write(chunk); err != nil {
				return
			}
			wrote <- i
		}
		close(wrote)
	}()
	// With the first batch stuck in Write, at most maxQueued more may queue.
	time.Sleep(100 * time.Millisecond)
	if n := len(wrote); n*len(chunk) > 2*maxQueued {
		t.Fatalf("%d KiB queued behind a stuck write; the bound is %d KiB", n*len(chunk)>>10, maxQueued>>10)
	}
	close(g.gate)
	for range wrote {
	}
	_ = c.Close()
	if got, _ := g.written(); len(got) != 12*len(chunk) {
		t.Fatalf("wrote %d bytes, want %d", len(got), 12*len(chunk))
	}
}

func TestBatchingConnCloseGivesUpOnAStuckPeer(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{})}
	c := newBatchingConn(g)
	_, _ = c.Write([]byte("stuck"))
	done := make(chan struct{})
	go func() {
		time.Sleep(2 * closeFlush)
		close(g.gate) // what closing the real connection does to a blocked write
		close(done)
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	if _, err := c.Write([]byte("late")); err == nil {
		t.Fatal("a write after Close succeeded")
	}
}

// TestBatchingConnNeverWritesIntoABatchInFlight: after a batch too large
// to keep as the spare buffer, the next batches must still not share an
// array with the one being written.
func TestBatchingConnNeverWritesIntoABatchInFlight(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{}), entered: make(chan struct{})}
	c := newBatchingConn(g)
	defer func() { close(g.gate); _ = c.Close() }()
	var want []byte
	write := func(b []byte) {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		want = append(want, b...)
	}
	written := func(n int) { // wait until the connection has taken n batches
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for _, batches := g.written(); batches < n; _, batches = g.written() {
			if time.Now().After(deadline) {
				t.Fatalf("batch %d was not written", n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	release := func(n int) { // let the flusher's next write through
		t.Helper()
		<-g.entered
		g.gate <- struct{}{}
		written(n)
	}
	write(bytes.Repeat([]byte{'f'}, 4096)) // its buffer becomes the spare
	release(1)
	write(bytes.Repeat([]byte{'B'}, 3*maxQueued)) // too large to be kept as the spare
	release(2)
	write(bytes.Repeat([]byte{'x'}, 100))
	<-g.entered // the flusher holds the batch with x at the gate
	write(bytes.Repeat([]byte{'y'}, 100))
	g.gate <- struct{}{}
	written(3)
	release(4)
	if got, _ := g.written(); !bytes.Equal(got, want) {
		t.Fatalf("a queued write overwrote the batch being written")
	}
}
