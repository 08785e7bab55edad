// Package agent is Berth's upstream side: it keeps a tunnel to a proxy up
// and hands the streams proxies open on it to the service behind it.
//
// An Agent dials one of its proxies outbound, says hello with its slot and
// endpoints, and serves the session: every stream whose header names one
// of its endpoints is handed to Accept; others are refused. When the tunnel
// drops or a proxy refuses it, the agent dials again, rotating through its
// proxies with full-jitter exponential backoff; Run never gives up while its
// context lives.
//
// Moves are make-before-break. On Reconnect{move id, address} the agent
// dials the target with the same slot and the move id while the old tunnel
// keeps serving; once the new tunnel is welcomed it says Moved on the old
// control stream and lets the old tunnel finish its streams (the old proxy
// closes it; the agent closes it itself after DrainTimeout). An unreachable
// target leaves the old tunnel in place: the control plane aborts the move.
// Drain does the same towards another configured proxy, without a move id.
//
// Listen wraps all of this as a net.Listener for one endpoint (the Go SDK);
// Forward pipes streams to local addresses (berth-agent serve); DialEndpoint
// and Relay are the downstream TCP client mode (berth-agent connect).
package agent
