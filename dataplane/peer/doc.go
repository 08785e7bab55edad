// Package peer holds a proxy's links to its peer proxies: one persistent,
// multiplexed tunnel session per peer and direction, over which a proxy
// forwards a request to the peer that holds a connection for it (at most
// one hop; the StreamHeader's hops field enforces that, not this package).
//
// Links are dialled lazily, on the first OpenStream or Connect, and every
// concurrent caller for a peer waits on the same dial. Each link has a
// gRPC-style connectivity state (IDLE, CONNECTING, READY,
// TRANSIENT_FAILURE) for ring-hash routing. A failed dial or a broken link
// puts the peer in back-off (exponential, full jitter): OpenStream then
// fails at once with ErrBackoff, because the caller has other holders to
// try and a request waiting on a redial would only add latency. Nothing
// redials on its own; the next OpenStream or Connect after the back-off
// does, so a peer nobody needs costs nothing.
//
// Every READY link is pinged each HeartbeatInterval. yamux's keepalive
// alone would notice a peer whose TCP connection stays open but which no
// longer answers only after its write timeout; the heartbeat bounds that
// by HeartbeatTimeout, so routing moves away from a dead peer quickly.
package peer
