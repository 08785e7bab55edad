// Package tunnel is Berth's connection protocol between agents and proxies
// (tunnels) and between proxies (peer links).
//
// A connection starts with a 4-byte magic ("BRTA" for tunnels, "BRTP" for
// peer links) and a version byte, then one hello frame from the dialler and
// one welcome frame back; frames are a 4-byte big-endian length and a
// protobuf message, bounded by MaxFrameBytes. After the welcome the
// connection carries a yamux session. The dialler opens the first stream as
// the control stream (ControlMessage frames: reconnect, drain, moved).
// Every later stream starts with a StreamHeader from its opener and a
// StreamReply from its acceptor, then raw bytes both ways: HTTP/1.1 for
// STREAM_KIND_HTTP (upgrades included), anything for STREAM_KIND_TCP.
//
// Waiting for the StreamReply before sending data costs one round trip per
// stream, and buys a clean failure: a refused stream is an error from
// OpenStream, before any request byte was sent, so the caller can try
// another target.
package tunnel
