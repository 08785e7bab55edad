package discovery

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// leaveTimeout bounds how long Close waits for the leave message to go out.
const leaveTimeout = 5 * time.Second

// Gossip discovers addresses through a memberlist cluster. Each member
// publishes its gRPC address in its node meta; Discover returns the addresses
// of the members currently alive or suspect.
//
// All traffic is encrypted and authenticated with AES-GCM under
// SHA-256(secret), and unencrypted traffic is refused both ways, so a node
// with another secret (or none) can neither join nor be joined.
type Gossip struct {
	ml     *memberlist.Memberlist
	name   string   // this member's memberlist node name
	addr   string   // advertised gossip address, normalised
	self   string   // gRPC address, normalised; may be empty
	seeds  []string // normalised
	logger *slog.Logger

	stop      context.CancelFunc
	done      chan struct{}
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	joinRounds atomic.Int64 // join attempts made, for tests
}

func newGossip(cfg GossipConfig, poll time.Duration, self string, logger *slog.Logger) (*Gossip, error) {
	secret, err := loadSecret(cfg)
	if err != nil {
		return nil, err
	}
	key := sha256.Sum256([]byte(secret)) // 32 bytes: AES-256, whatever the passphrase
	meta := encodeMeta(self)
	if len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("self address %q too long for node meta", self)
	}
	seeds, err := normalizeList(cfg.Join)
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}

	var mc *memberlist.Config
	switch cfg.Profile {
	case ProfileLocal:
		mc = memberlist.DefaultLocalConfig()
	case ProfileWAN:
		mc = memberlist.DefaultWANConfig()
	default:
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = nodeName(self)
	bind, err := parseIPPort(cfg.Bind, true)
	if err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	mc.BindAddr = bind.Addr().String()
	mc.BindPort = int(bind.Port())
	mc.AdvertiseAddr, mc.AdvertisePort = "", 0 // from the bound socket
	if cfg.Advertise != "" {
		adv, err := parseIPPort(cfg.Advertise, false)
		if err != nil {
			return nil, fmt.Errorf("advertise: %w", err)
		}
		mc.AdvertiseAddr = adv.Addr().String()
		mc.AdvertisePort = int(adv.Port())
	}
	mc.SecretKey = key[:]
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Delegate = &delegate{meta: meta}
	mc.LogOutput = nil
	mc.Logger = log.New(logWriter{logger.With("component", "memberlist")}, "", 0)
	if cfg.tune != nil {
		cfg.tune(mc)
	}

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start memberlist: %w", err)
	}
	local := ml.LocalNode()
	ctx, stop := context.WithCancel(context.Background())
	g := &Gossip{
		ml:     ml,
		name:   mc.Name,
		addr:   net.JoinHostPort(local.Addr.String(), strconv.Itoa(int(local.Port))),
		self:   self,
		seeds:  seeds,
		logger: logger,
		stop:   stop,
		done:   make(chan struct{}),
	}
	logger.Info("gossip started", "member", g.name, "addr", g.addr, "seeds", seeds)
	go g.run(ctx, poll)
	return g, nil
}

func loadSecret(cfg GossipConfig) (string, error) {
	if cfg.SecretFile == "" {
		return strings.TrimSpace(cfg.Secret), nil
	}
	b, err := os.ReadFile(cfg.SecretFile)
	if err != nil {
		return "", fmt.Errorf("secret file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", cfg.SecretFile)
	}
	return s, nil
}

// nodeName makes a memberlist name unique per process: a node restarted with
// another gossip address must not collide with its own not-yet-dead entry,
// which memberlist would refuse until that entry is reaped.
func nodeName(self string) string {
	base := self
	if base == "" {
		base, _ = os.Hostname()
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	return base + "-" + hex.EncodeToString(b[:])
}

// LocalAddr returns the gossip address this member advertises (useful when
// binding port 0).
func (g *Gossip) LocalAddr() string { return g.addr }

// Discover returns the gRPC addresses of the known live members.
func (g *Gossip) Discover(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if g.closed.Load() {
		return nil, ErrClosed
	}
	var addrs []string
	for _, n := range g.ml.Members() {
		if n.Name == g.name {
			continue
		}
		if a, ok := decodeMeta(n.Meta); ok {
			addrs = append(addrs, a)
		}
	}
	return finish(addrs, g.self), nil
}

// run joins the seeds now and then every interval, so nodes started in any
// order find each other and split clusters heal.
func (g *Gossip) run(ctx context.Context, interval time.Duration) {
	defer close(g.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		g.joinSeeds()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// joinSeeds joins the seeds that are not live members already. Seeds given
// by name cannot be matched to members and are joined every round; that is a
// cheap state exchange.
func (g *Gossip) joinSeeds() {
	known := map[string]bool{g.addr: true}
	members := g.ml.Members()
	for _, n := range members {
		known[net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))] = true
	}
	var missing []string
	for _, s := range g.seeds {
		if !known[s] {
			missing = append(missing, s)
		}
	}
	if len(missing) == 0 {
		return
	}
	g.joinRounds.Add(1)
	n, err := g.ml.Join(missing)
	switch {
	case err == nil:
		g.logger.Debug("joined gossip seeds", "contacted", n, "seeds", missing)
	case len(members) <= 1:
		g.logger.Warn("cannot reach any gossip seed; retrying next round", "seeds", missing, "err", err)
	default:
		g.logger.Debug("some gossip seeds unreachable", "seeds", missing, "err", err)
	}
}

// Close leaves the cluster (so peers drop this member at once instead of
// after failure detection) and shuts memberlist down. It waits for an
// in-flight join round to end. Calling it again returns the first result.
func (g *Gossip) Close() error {
	g.closeOnce.Do(func() {
		g.closed.Store(true)
		g.stop()
		<-g.done
		var errs []error
		if err := g.ml.Leave(leaveTimeout); err != nil {
			errs = append(errs, fmt.Errorf("leave: %w", err))
		}
		if err := g.ml.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("shutdown: %w", err))
		}
		if err := errors.Join(errs...); err != nil {
			g.closeErr = fmt.Errorf("gossip: %w", err)
		}
		g.logger.Info("gossip stopped", "member", g.name)
	})
	return g.closeErr
}

// metaVersion prefixes node meta so the format can change.
const metaVersion = 1

// encodeMeta puts a gRPC address in node meta. Members without one (proxies,
// berthctl) publish nothing and are not discovered.
func encodeMeta(grpcAddr string) []byte {
	if grpcAddr == "" {
		return nil
	}
	return append([]byte{metaVersion}, grpcAddr...)
}

// decodeMeta reads node meta from any member, so it trusts nothing.
func decodeMeta(b []byte) (string, bool) {
	if len(b) < 2 || b[0] != metaVersion {
		return "", false
	}
	a, err := normalizeAddr(string(b[1:]))
	if err != nil {
		return "", false
	}
	return a, true
}

// delegate publishes this node's meta. It sends no user messages or state.
type delegate struct {
	meta []byte
}

func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return nil
	}
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                {}
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *delegate) LocalState(bool) []byte          { return nil }
func (d *delegate) MergeRemoteState([]byte, bool)   {}

// logWriter routes memberlist's log.Logger lines to slog. memberlist is
// chatty, so its DEBUG and INFO lines go to Debug; WARN and ERR keep their
// level because they report things an operator acts on, such as a node with
// the wrong secret knocking.
type logWriter struct{ l *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	for _, pl := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		{"[INFO]", slog.LevelDebug},
		{"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelError},
		{"[ERROR]", slog.LevelError},
	} {
		if rest, ok := strings.CutPrefix(msg, pl.prefix); ok {
			msg, level = strings.TrimSpace(rest), pl.level
			break
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.l.Log(context.Background(), level, msg)
	return len(p), nil
}
