package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/berthhq/berth/fsm"
)

// Network is how a node listens for Raft traffic and dials its peers (Raft
// and node-to-node gRPC). The default is plain TCP; the test harness
// supplies one that can cut a node off, and TLS wraps it.
type Network interface {
	Listen(addr string) (net.Listener, error)
	Dial(ctx context.Context, addr string) (net.Conn, error)
}

type tcpNetwork struct{}

func (tcpNetwork) Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

func (tcpNetwork) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// streamLayer adapts a Network to raft.StreamLayer. It tracks every
// connection it hands out and closes them all on Close: Raft's transport
// closes only the listener, which would leave peers' handlers blocked on
// connections from a node that has shut down.
type streamLayer struct {
	ln        net.Listener
	advertise net.Addr
	network   Network

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newStreamLayer(ln net.Listener, advertise net.Addr, network Network) *streamLayer {
	return &streamLayer{ln: ln, advertise: advertise, network: network, conns: make(map[net.Conn]struct{})}
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := s.network.Dial(ctx, string(addr))
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

func (s *streamLayer) track(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Close()
		return nil, net.ErrClosed
	}
	tc := &layerConn{Conn: c, layer: s}
	s.conns[tc] = struct{}{}
	return tc, nil
}

func (s *streamLayer) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = make(map[net.Conn]struct{})
	s.mu.Unlock()
	for c := range conns {
		_ = c.(*layerConn).Conn.Close()
	}
	return s.ln.Close()
}

type layerConn struct {
	net.Conn
	layer *streamLayer
}

func (c *layerConn) Close() error {
	c.layer.mu.Lock()
	delete(c.layer.conns, c)
	c.layer.mu.Unlock()
	return c.Conn.Close()
}

// raftStores are the durable pieces of a node's Raft, closed after Raft
// shuts down.
type raftStores struct {
	bolt      *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	// hadState says the data dir held Raft state before this start: such a
	// node rejoins from it and is never bootstrapped again.
	hadState bool
}

func (s *raftStores) Close() error {
	return errors.Join(s.transport.Close(), s.bolt.Close())
}

// logCacheEntries is how many recent log entries stay in memory.
const logCacheEntries = 1024

// newRaft opens (or creates) the node's Raft state under cfg.DataDir: a
// bbolt-backed log and stable store that fsyncs every batch, file snapshots,
// and a TCP transport on ln. wrap, when set, wraps the log store.
func newRaft(cfg *Config, machine raft.FSM, ln net.Listener, network Network, wrap func(raft.LogStore) raft.LogStore, notify chan<- bool, logger *slog.Logger) (*raft.Raft, *raftStores, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("data dir: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(cfg.DataDir, "raft.db"),
		// Every commit still fsyncs; the freelist is rebuilt on open
		// instead of written on every commit (fewer pages per fsync).
		BoltOptions: &bbolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("raft store: %w", err)
	}
	hlog := newHCLog(logger, "raft")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, cfg.Raft.SnapshotRetain, hlog)
	if err != nil {
		_ = bolt.Close()
		return nil, nil, fmt.Errorf("snapshot store: %w", err)
	}
	hadState, err := raft.HasExistingState(bolt, bolt, snaps)
	if err != nil {
		_ = bolt.Close()
		return nil, nil, fmt.Errorf("raft state: %w", err)
	}
	advertise, err := net.ResolveTCPAddr("tcp", cfg.raftAdvertise())
	if err != nil {
		_ = bolt.Close()
		return nil, nil, fmt.Errorf("raft advertise address: %w", err)
	}
	transport := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  newStreamLayer(ln, advertise, network),
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hlog,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.Raft.HeartbeatTimeout
	rc.ElectionTimeout = cfg.Raft.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.Raft.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.Raft.CommitTimeout
	rc.SnapshotInterval = cfg.Raft.SnapshotInterval
	rc.SnapshotThreshold = cfg.Raft.SnapshotThreshold
	rc.TrailingLogs = cfg.Raft.TrailingLogs
	rc.MaxAppendEntries = cfg.Raft.MaxAppendEntries
	// Group concurrent proposals into one log append (and one fsync).
	rc.BatchApplyCh = true
	// A member removed from the configuration stays up as a follower
	// outside it, failing what it is asked with "not leader", rather than
	// shutting Raft down under the node: a Raft that shuts itself down
	// drops the futures still queued in its channels, so their callers
	// (and Close, which waits for them) would wait for ever.
	rc.ShutdownOnRemove = false
	rc.NotifyCh = notify
	if err := raft.ValidateConfig(rc); err != nil {
		_ = transport.Close()
		_ = bolt.Close()
		return nil, nil, fmt.Errorf("raft config: %w", err)
	}
	// Replication and the FSM read back entries just written; the cache
	// serves them without a bbolt read and msgpack decode each.
	var store raft.LogStore = bolt
	if wrap != nil {
		store = wrap(bolt)
	}
	logs, err := raft.NewLogCache(logCacheEntries, store)
	if err != nil {
		_ = transport.Close()
		_ = bolt.Close()
		return nil, nil, fmt.Errorf("raft log cache: %w", err)
	}
	r, err := raft.NewRaft(rc, machine, logs, bolt, snaps, pipelinedTransport{transport})
	if err != nil {
		_ = transport.Close()
		_ = bolt.Close()
		return nil, nil, fmt.Errorf("raft: %w", err)
	}
	return r, &raftStores{bolt: bolt, transport: transport, hadState: hadState}, nil
}

// appliedFSM is the thin adapter Raft drives: it hands every entry to
// fsm.FSM and then tells readers waiting for an index that it was reached.
type appliedFSM struct {
	*fsm.FSM
	applied *indexWaiter
}

// Apply must be deterministic; fsm.FSM.Apply is.
func (a appliedFSM) Apply(l *raft.Log) any {
	r := a.FSM.Apply(l)
	a.applied.advance(l.Index)
	return r
}

// Restore replaces the state with a snapshot and moves the applied index to
// the snapshot's.
func (a appliedFSM) Restore(rc io.ReadCloser) error {
	err := a.FSM.Restore(rc)
	a.applied.advance(a.FSM.AppliedIndex())
	return err
}

// indexWaiter lets readers block until the FSM has applied an index.
type indexWaiter struct {
	mu      sync.Mutex
	current uint64
	changed chan struct{} // closed and replaced on advance; nil when nobody waits
}

func (w *indexWaiter) advance(index uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if index > w.current {
		w.current = index
	}
	if w.changed != nil {
		close(w.changed)
		w.changed = nil
	}
}

// wait returns once index has been applied, or ctx ends.
func (w *indexWaiter) wait(ctx context.Context, index uint64) error {
	for {
		w.mu.Lock()
		if w.current >= index {
			w.mu.Unlock()
			return nil
		}
		if w.changed == nil {
			w.changed = make(chan struct{})
		}
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for index %d: %w", index, ctx.Err())
		}
	}
}
