package proxy

import (
	"net"
	rtmetrics "runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berthhq/berth/dataplane/ring"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// loadSampler measures what a proxy reports every second: connections,
// active streams, CPU, memory, bytes per second, and each endpoint's
// aggregate connectivity.
type loadSampler struct {
	p        *Proxy
	bytesIn  atomic.Uint64
	bytesOut atomic.Uint64
	active   atomic.Int64

	mu       sync.Mutex
	lastAt   time.Time
	lastCPU  time.Duration
	lastIn   uint64
	lastOut  uint64
	memStats []rtmetrics.Sample
}

func newLoadSampler(p *Proxy) *loadSampler {
	return &loadSampler{p: p, lastAt: time.Now(), lastCPU: cpuTime(),
		memStats: []rtmetrics.Sample{{Name: "/memory/classes/total:bytes"}}}
}

// wrap counts a stream's bytes and activity; onClose (if set) runs once
// when the stream is closed.
func (l *loadSampler) wrap(c net.Conn, onClose func()) net.Conn {
	l.active.Add(1)
	return &stream{Conn: c, l: l, onClose: onClose}
}

// stream is a tunnel stream as the proxy hands it out.
type stream struct {
	net.Conn
	l       *loadSampler
	onClose func()
	once    sync.Once
}

func (s *stream) Read(b []byte) (int, error) {
	n, err := s.Conn.Read(b)
	s.l.bytesIn.Add(uint64(n))
	return n, err
}

func (s *stream) Write(b []byte) (int, error) {
	n, err := s.Conn.Write(b)
	s.l.bytesOut.Add(uint64(n))
	return n, err
}

// CloseWrite half-closes (a yamux stream's Close sends FIN and keeps
// reading) without ending the stream's accounting.
func (s *stream) CloseWrite() error { return closeWrite(s.Conn) }

func (s *stream) Close() error {
	s.once.Do(func() {
		s.l.active.Add(-1)
		if s.onClose != nil {
			s.onClose()
		}
	})
	return s.Conn.Close()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (l *loadSampler) sample() *berthv1.LoadSample {
	l.mu.Lock()
	now, cpu, in, out := time.Now(), cpuTime(), l.bytesIn.Load(), l.bytesOut.Load()
	elapsed := now.Sub(l.lastAt).Seconds()
	s := &berthv1.LoadSample{
		ProxyId:        l.p.cfg.ID,
		Connections:    uint32(l.p.conns.count()),
		ActiveStreams:  uint32(max(0, l.active.Load())),
		EndpointStates: map[string]berthv1.ConnectivityState{},
		SentUnixMs:     now.UnixMilli(),
	}
	if elapsed > 0 {
		s.CpuMillicores = uint32(float64(cpu-l.lastCPU) / float64(time.Second) / elapsed * 1000)
		s.BytesInPerSecond = uint64(float64(in-l.lastIn) / elapsed)
		s.BytesOutPerSecond = uint64(float64(out-l.lastOut) / elapsed)
	}
	rtmetrics.Read(l.memStats)
	if v := l.memStats[0].Value; v.Kind() == rtmetrics.KindUint64 {
		s.MemoryBytes = v.Uint64()
	}
	l.lastAt, l.lastCPU, l.lastIn, l.lastOut = now, cpu, in, out
	l.mu.Unlock()
	for name, st := range l.p.endpointStates() {
		s.EndpointStates[name] = st.ToProto()
	}
	return s
}

// endpointStates is each known endpoint's aggregate connectivity over its
// ring targets, by gRPC ring_hash's rules; when the aggregate says so, one
// IDLE target is asked to connect.
func (p *Proxy) endpointStates() map[string]ring.State {
	names := map[string]bool{}
	for _, e := range p.conns.endpoints() {
		names[e] = true
	}
	for _, e := range p.dir.endpointNames() {
		names[e] = true
	}
	out := make(map[string]ring.State, len(names))
	for name := range names {
		targets := p.dir.ring(name, p.conns.forEndpoint(name)).Targets()
		states := make([]ring.State, len(targets))
		for i, t := range targets {
			states[i] = p.targetState(t.ID)
		}
		out[name] = ring.Aggregate(states)
		if i, ok := ring.ToConnect(states); ok {
			p.connectTarget(targets[i].ID)
		}
	}
	return out
}
