// Package ring is the proxy's hash-based router: a ring hash over an
// endpoint's connections and the connectivity-state rules that go with it,
// following gRPC's ring_hash policy (gRFC A42, with the A61 picker changes,
// as grpc-go implements them). It is pure: no I/O, goroutines or clocks. The
// proxy owns the connections and their states and calls in.
//
// # Placement
//
// A connection (Target) is placed on the ring by its slot, the agent's stable
// listener identity, not by its connection ID: entry i of a target sits at
// xxhash(slot + "_" + i). A connection that moves to another proxy comes back
// with a new ID but the same slot, so it takes exactly the same positions and
// requests keep hashing to it. Each target gets entries in proportion to its
// weight; the ring is sized as in A42 so the lightest target still gets about
// MinRingSize times its share, capped at MaxRingSize. Targets are put in a
// canonical order (slot, then ID) before anything is computed, so every proxy
// builds the same ring from the same set, whatever order it learned it in.
//
// # Picking
//
// Pick starts at the first entry at or after the request's hash and walks
// clockwise, looking at each distinct target once, and returns the first
// READY one. TRANSIENT_FAILURE targets are skipped, as A61 made gRPC do,
// rather than failing the request: a proxy whose peer link is down must not
// black-hole the keys that hash to its connections while other holders are
// up. Where gRPC stops at the first IDLE or CONNECTING target and queues the
// request until it connects, Pick asks an IDLE target to connect and walks
// on to a READY one: a proxy has no pick queue, and a request should not wait
// for a dial when a connection is ready now. The key goes back to its own
// target once that target is READY.
//
// # Aggregate state
//
// The state an endpoint reports is gRPC ring_hash's aggregate, in order:
//
//  1. any READY: READY;
//  2. two or more TRANSIENT_FAILURE: TRANSIENT_FAILURE;
//  3. any CONNECTING: CONNECTING;
//  4. exactly one TRANSIENT_FAILURE among several targets: CONNECTING;
//  5. any IDLE: IDLE;
//  6. otherwise TRANSIENT_FAILURE, which covers no targets at all and a
//     single target in TRANSIENT_FAILURE (rule 4 needs several targets).
//
// Rule 2 comes before rule 3 so that a few broken targets are reported at
// once even while others are still dialling; rule 4 keeps one bad target out
// of many from flapping the whole endpoint to failure.
//
// These rules alone can stick: with {TF, TF, IDLE} the aggregate is TF and,
// since nothing picks an IDLE target until a request arrives, nothing ever
// leaves TF (grpc-go hit this when a READY target went IDLE, and when the only
// CONNECTING target was removed). ToConnect is the fix grpc-go applies: while
// the aggregate is CONNECTING or TRANSIENT_FAILURE and no target is
// CONNECTING, ask exactly one IDLE target, the first in ring order, to
// connect. Waiting while one is CONNECTING keeps a recovering endpoint to
// one dial at a time instead of dialling every target at once.
package ring
