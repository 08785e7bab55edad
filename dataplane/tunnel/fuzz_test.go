package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// frame is WriteFrame into a byte slice, for seeds.
func frame(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := WriteFrame(&buf, m); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func frameSeeds(tb testing.TB) [][]byte {
	hello := frame(tb, &berthv1.TunnelHello{ProtocolVersion: 1, AgentId: "agent-1", Slot: "slot-1", Endpoints: []string{"web", "api"}, Token: "t", MoveId: "m1"})
	control := frame(tb, &berthv1.ControlMessage{Kind: &berthv1.ControlMessage_Reconnect{Reconnect: &berthv1.Reconnect{MoveId: "m1", ProxyId: "b", Address: "127.0.0.1:7443"}}})
	header := frame(tb, &berthv1.StreamHeader{Endpoint: "web", Kind: berthv1.StreamKind_STREAM_KIND_HTTP, Hops: 1, ClientAddress: "192.0.2.1:1234"})
	var huge [4]byte
	binary.BigEndian.PutUint32(huge[:], MaxFrameBytes+1)
	return [][]byte{
		{},
		{0, 0, 0, 0},
		hello,
		control,
		header,
		hello[:len(hello)-1],
		append(bytes.Clone(header), control...),
		huge[:],
		{0, 0, 0, 2, 0x0a, 0xff},          // field 1 as bytes with a huge length
		{0, 0, 0, 3, 0x12, 0x01, 0xc3},    // agent_id with invalid UTF-8
		{0, 0, 0, 2, 0x08, 0x80},          // truncated varint
		{0, 0, 0, 4, 0xfa, 0xff, 0x03, 0}, // unknown field
	}
}

// FuzzReadFrame feeds arbitrary bytes to ReadFrame as every message the
// protocol reads from the wire: it must never panic, never accept a frame
// over MaxFrameBytes, and what it accepts must survive a round trip.
func FuzzReadFrame(f *testing.F) {
	for _, s := range frameSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, m := range []proto.Message{&berthv1.TunnelHello{}, &berthv1.ControlMessage{}, &berthv1.StreamHeader{}, &berthv1.TunnelWelcome{}, &berthv1.StreamReply{}} {
			err := ReadFrame(bytes.NewReader(data), m)
			if len(data) >= 4 && binary.BigEndian.Uint32(data) > MaxFrameBytes {
				if !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("%T: oversize frame: err = %v", m, err)
				}
				continue
			}
			if err != nil {
				continue
			}
			var buf bytes.Buffer
			if err := WriteFrame(&buf, m); err != nil {
				t.Fatalf("%T: re-encode %v: %v", m, m, err)
			}
			again := m.ProtoReflect().New().Interface()
			if err := ReadFrame(&buf, again); err != nil {
				t.Fatalf("%T: decode re-encoded: %v", m, err)
			}
			if !proto.Equal(m, again) {
				t.Fatalf("%T: round trip changed %v into %v", m, m, again)
			}
		}
	})
}

// FuzzReadTunnelHello plays arbitrary bytes as a connection into
// ReadTunnelHello: it must return (never hang past the handshake timeout,
// never panic), and a hello it accepts came after a good preamble.
func FuzzReadTunnelHello(f *testing.F) {
	preamble := []byte(tunnelMagic + "\x01")
	for _, s := range frameSeeds(f) {
		f.Add(append(bytes.Clone(preamble), s...))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte(peerMagic + "\x01"))
	f.Add([]byte(tunnelMagic + "\x02"))
	f.Add([]byte(tunnelMagic))
	cfg := DefaultConfig()
	cfg.HandshakeTimeout = time.Second
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			_, _ = client.Write(data)
			_ = client.Close()
		}()
		hello, err := ReadTunnelHello(server, cfg)
		_ = server.Close() // unblocks a writer the reader stopped short of
		<-wrote
		if err != nil {
			return
		}
		if !bytes.HasPrefix(data, preamble) {
			t.Fatalf("hello %v accepted without the preamble", hello)
		}
	})
}
