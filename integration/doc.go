// Package integration holds Berth's multi-node tests: real control-plane
// clusters over real sockets with faults injected (leader kills, partitions),
// histories checked for linearizability with porcupine, end-to-end runs of
// the real binaries, and the harness behind the benchmark commands.
package integration
