package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/berthhq/berth/controlplane/discovery"
	"github.com/berthhq/berth/controlplane/pki"
	"github.com/berthhq/berth/controlplane/token"
	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Clock tells the time, through which tests move or step it. Now is the
// wall clock: it stamps commands, and those stamps are read on other nodes.
// Monotonic is for measuring intervals on this node only (heartbeat
// silence, the leader's grace period): a wall clock stepped by NTP or by
// hand does not move it. Never compare a Monotonic reading with a stamp
// from the log.
type Clock interface {
	Now() time.Time
	Monotonic() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Monotonic is time.Now: its monotonic reading is what Sub and After use
// when both sides carry one.
func (realClock) Monotonic() time.Time { return time.Now() }

// MaxMessageBytes bounds every gRPC message a node accepts or sends; it is
// above fsm.MaxCommandBytes so the largest valid command fits.
const MaxMessageBytes = fsm.MaxCommandBytes + 1<<20

// Deps are what a node uses but does not configure from flags.
type Deps struct {
	// Clock; nil is the wall clock.
	Clock Clock
	// Network for Raft and node-to-node gRPC; nil is plain TCP.
	Network Network
	// GRPCListener, when set, is used instead of listening on GRPCAddr.
	GRPCListener net.Listener
	// Registerer receives the node's metrics; nil makes a private registry
	// served on HTTPAddr.
	Registry *prometheus.Registry
	// WrapLogStore, when set, wraps the Raft log store (under the log
	// cache): tests inject disk errors through it.
	WrapLogStore func(raft.LogStore) raft.LogStore
	// DebugHandlers, when set, adds handlers (the runtime's profiles) to the
	// HTTPAddr mux; berthd sets it for --pprof.
	DebugHandlers func(*http.ServeMux)
	// Build is the berthd build this node reports to peers and operators
	// (berthctl version); nil reports none. Its berth_build_info gauge goes
	// on Registry, which the caller fills.
	Build *berthv1.BuildInfo
}

// Node is one control-plane server: Raft, the registry FSM, the event broker
// and the gRPC services, plus the leader's heartbeat tracker.
type Node struct {
	cfg     Config
	build   *berthv1.BuildInfo
	logger  *slog.Logger
	clock   Clock
	network Network

	fsm       *fsm.FSM
	applied   *indexWaiter
	broker    *Broker
	raft      *raft.Raft
	stores    *raftStores
	peers     *peerPool
	beats     *heartbeats
	relay     *loadRelay
	proposer  *proposer
	forwarder *forwarder
	metrics   *metrics

	tls *pki.Reloader // nil in insecure mode
	// bootstrapToken is always accepted as an operate admin token ("" none).
	bootstrapToken string
	adminRoles     map[string]token.AdminRole // by full method name, from admin.proto
	grpcServer     *grpc.Server
	grpcLn         net.Listener
	health         *health.Server
	httpServer     *http.Server
	httpLn         net.Listener

	leaderNotify chan bool
	lead         leaderState
	reb          atomic.Pointer[rebalancer] // this term's planner runner while leading
	ops          raftOps                    // Raft calls in flight, waited for before shutdown

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// New opens the node's Raft state, starts listening and serving, and begins
// cluster formation. Close stops it.
func New(cfg Config, logger *slog.Logger, deps Deps) (n *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("node", cfg.ID)
	if deps.Clock == nil {
		deps.Clock = realClock{}
	}
	if deps.Network == nil {
		deps.Network = tcpNetwork{}
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	ctx, cancel := context.WithCancel(context.Background())
	n = &Node{
		build:        deps.Build,
		cfg:          cfg,
		logger:       logger.With("subsystem", "controlplane"),
		clock:        deps.Clock,
		network:      deps.Network,
		applied:      &indexWaiter{},
		leaderNotify: make(chan bool, 16),
		ctx:          ctx,
		cancel:       cancel,
	}
	var cleanup []func()
	defer func() {
		if err != nil {
			cancel()
			for i := len(cleanup) - 1; i >= 0; i-- {
				cleanup[i]()
			}
		}
	}()

	if n.adminRoles, err = adminRoles(); err != nil {
		return nil, err
	}
	if n.bootstrapToken, err = loadBootstrapToken(cfg.AdminBootstrapTokenFile); err != nil {
		return nil, err
	}
	raftNetwork := deps.Network
	grpcCreds := insecure.NewCredentials()
	if cfg.TLS.Enabled() {
		if n.tls, err = pki.NewReloader(cfg.TLS, logger.With("subsystem", "tls")); err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		cleanup = append(cleanup, n.tls.Close)
		raftNetwork = &tlsNetwork{inner: deps.Network, server: n.tls.ServerConfig(pki.RoleServer), client: n.tls.ClientConfig("", pki.RoleServer)}
		grpcCreds = credentials.NewTLS(n.tls.ClientConfig("", pki.RoleServer))
	} else {
		logger.Warn("INSECURE: control-plane node runs without TLS; anyone who reaches its ports can join Raft and change the registry (development only)")
	}

	n.broker = NewBroker(cfg.Broker, logger.With("subsystem", "broker"))
	n.fsm = fsm.New(n.broker)
	n.beats = newHeartbeats()
	n.peers = newPeerPool(deps.Network, grpcCreds)
	cleanup = append(cleanup, func() { n.peers.Close() })

	raftLn, err := raftNetwork.Listen(cfg.RaftAddr)
	if err != nil {
		return nil, fmt.Errorf("raft listen: %w", err)
	}
	if n.cfg.RaftAdvertise == "" {
		n.cfg.RaftAdvertise = raftLn.Addr().String()
	}
	n.grpcLn = deps.GRPCListener
	if n.grpcLn == nil {
		if n.grpcLn, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
			_ = raftLn.Close()
			return nil, fmt.Errorf("grpc listen: %w", err)
		}
	}
	cleanup = append(cleanup, func() { _ = n.grpcLn.Close() })
	if n.cfg.GRPCAdvertise == "" {
		n.cfg.GRPCAdvertise = n.grpcLn.Addr().String()
	}

	n.raft, n.stores, err = newRaft(&n.cfg, appliedFSM{FSM: n.fsm, applied: n.applied}, raftLn, raftNetwork, deps.WrapLogStore, n.leaderNotify, logger)
	if err != nil {
		_ = raftLn.Close()
		return nil, err
	}
	cleanup = append(cleanup, func() {
		_ = n.raft.Shutdown().Error()
		_ = n.stores.Close()
	})
	n.metrics = newMetrics(deps.Registry, n)
	n.relay = newLoadRelay(n)
	n.proposer = newProposer(n)
	n.forwarder = newForwarder(n)

	if cfg.Bootstrap && !n.stores.hadState {
		boot := raft.Configuration{Servers: []raft.Server{n.selfRaftServer()}}
		if err := n.raft.BootstrapCluster(boot).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		n.logger.Info("bootstrapped a single-node cluster")
	}

	serverOpts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(n.metrics.unaryInterceptor, n.authUnary),
		grpc.ChainStreamInterceptor(n.authStream),
	}
	if n.tls != nil {
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(n.tls.ServerConfig(pki.RoleServer, pki.RoleProxy, pki.RoleClient))))
	}
	n.grpcServer = grpc.NewServer(serverOpts...)
	berthv1.RegisterAdminServiceServer(n.grpcServer, &adminServer{n: n})
	berthv1.RegisterRegistryServiceServer(n.grpcServer, &registryServer{n: n})
	berthv1.RegisterClusterServiceServer(n.grpcServer, &clusterServer{n: n})
	n.health = health.NewServer()
	healthpb.RegisterHealthServer(n.grpcServer, n.health)
	reflection.Register(n.grpcServer)
	n.goRun("grpc", func() {
		if err := n.grpcServer.Serve(n.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			n.logger.Error("grpc server stopped", "err", err)
		}
	})

	if cfg.HTTPAddr != "" {
		if err := n.serveHTTP(deps.Registry, deps.DebugHandlers, logger); err != nil {
			return nil, err
		}
	}

	n.goRun("leadership", n.watchLeadership)
	n.goRun("load-relay", n.relay.run)
	n.goRun("proposer", n.proposer.run)
	n.goRun("forwarder", n.forwarder.run)
	if cfg.Discovery.Mode != "" {
		d, err := discovery.New(cfg.Discovery, n.cfg.grpcAdvertise(), logger)
		if err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		n.goRun("formation", func() { n.runFormation(d) })
	}
	n.logger.Info("control-plane node started",
		"raft", n.cfg.raftAdvertise(), "grpc", n.cfg.grpcAdvertise(), "had_state", n.stores.hadState)
	return n, nil
}

func (n *Node) goRun(name string, fn func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		fn()
		n.logger.Debug("stopped", "task", name)
	}()
}

// ID is the node's Raft server ID.
func (n *Node) ID() string { return n.cfg.ID }

// GRPCAddr is the address the node's gRPC services are reachable at.
func (n *Node) GRPCAddr() string { return n.cfg.grpcAdvertise() }

// RaftAddr is the address peers reach the node's Raft transport at.
func (n *Node) RaftAddr() string { return n.cfg.raftAdvertise() }

// HTTPAddr is where /metrics is served ("" when off).
func (n *Node) HTTPAddr() string {
	if n.httpLn == nil {
		return ""
	}
	return n.httpLn.Addr().String()
}

// Raft exposes the node's Raft for tests and status.
func (n *Node) Raft() *raft.Raft { return n.raft }

// FSM exposes the node's registry state machine (read-only use).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// IsLeader reports whether this node is the Raft leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

func (n *Node) selfRaftServer() raft.Server {
	return raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n.cfg.ID), Address: raft.ServerAddress(n.cfg.raftAdvertise())}
}

func (n *Node) selfServer() *berthv1.Server {
	return &berthv1.Server{Id: n.cfg.ID, RaftAddress: n.cfg.raftAdvertise(), GrpcAddress: n.cfg.grpcAdvertise()}
}

// leader returns the current leader's ID and gRPC address, as far as this
// node knows; the address is empty until the leader's metadata is applied.
func (n *Node) leader() (id, grpcAddr string) {
	_, lid := n.raft.LeaderWithID()
	if lid == "" {
		return "", ""
	}
	id = string(lid)
	if id == n.cfg.ID {
		return id, n.cfg.grpcAdvertise()
	}
	n.fsm.View(func(s *fsm.State, _ uint64) {
		if srv, ok := s.Server(id); ok {
			grpcAddr = srv.GrpcAddress
		}
	})
	return id, grpcAddr
}

// raftOpsDrain bounds how long Close waits for Raft operations in flight.
// A leader that lost its quorum fails them within its lease, so this is
// only reached if Raft itself is stuck.
const raftOpsDrain = 10 * time.Second

// Close stops serving, shuts Raft down and releases the data dir. A closed
// node can be started again with New on the same data dir.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.logger.Info("control-plane node stopping")
		n.health.Shutdown()
		n.cancel()
		if !n.ops.close(raftOpsDrain) {
			n.logger.Warn("Raft operations still running at shutdown", "waited", raftOpsDrain)
		}
		stopped := make(chan struct{})
		go func() { n.grpcServer.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			n.grpcServer.Stop()
		}
		var errs []error
		if n.httpServer != nil {
			errs = append(errs, n.httpServer.Close())
		}
		errs = append(errs, n.raft.Shutdown().Error())
		n.wg.Wait()
		n.peers.Close()
		errs = append(errs, n.stores.Close())
		if n.tls != nil {
			n.tls.Close()
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}
