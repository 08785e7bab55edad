package controlplanetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"
)

func TestDegradedLinkDelaysBothWaysInOrder(t *testing.T) {
	w := NewNetwork()
	ln, err := w.For("b").Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c) // echo
	}()
	w.Degrade(LinkFaults{Delay: 40 * time.Millisecond, Jitter: 30 * time.Millisecond, Loss: 0.3, Retransmit: 20 * time.Millisecond}, 1)
	c, err := w.For("a").Dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	var sent bytes.Buffer
	for i := range 200 {
		msg := fmt.Sprintf("%03d;", i)
		sent.WriteString(msg)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, sent.Len())
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("echo out of order:\n%s\nwant\n%s", got, sent.Bytes())
	}
	// Out and back, each held at least Delay-Jitter.
	if rtt := time.Since(start); rtt < 20*time.Millisecond {
		t.Fatalf("round trip took %v through a link delayed 40±30 ms each way", rtt)
	}

	if err := c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}

	// Clean again: existing links are cut, new ones are direct.
	w.Degrade(LinkFaults{}, 0)
	if _, err := c.Write([]byte("x")); err == nil {
		if err := c.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a degraded link survived Degrade(LinkFaults{})")
		}
	}
}
