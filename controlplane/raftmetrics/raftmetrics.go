// Package raftmetrics turns the metrics hashicorp/raft and raft-boltdb
// emit through go-metrics into Prometheus collectors.
//
// Raft reports through go-metrics' process-wide sink, not through anything
// a node is given, so the bridge is process-wide too: Register installs a
// Sink as that global once per process (berthd runs one node per process)
// and registers it into the node's registry. A process that runs several
// nodes (the tests) must not call it: every node's raft would feed the one
// sink and its series would mix. Without it raft's metrics go nowhere, as
// before.
//
// The sink keeps the handful of raft metrics an operator watches, as
// histograms in seconds and counters with Berth's names (go-metrics' own
// Prometheus sink makes expiring summaries in milliseconds named after the
// dotted keys); every other key is dropped.
package raftmetrics

import (
	"fmt"
	"strings"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
)

// Sink is a go-metrics sink that feeds Prometheus collectors. It is safe
// for concurrent use.
type Sink struct {
	timers   map[string]*prometheus.HistogramVec // by dotted go-metrics key; values in milliseconds
	counters map[string]*prometheus.CounterVec
	gauges   map[string]*prometheus.GaugeVec
	// byPeer are the keys raft labels with peer_id, kept as label peer.
	byPeer map[string]bool
	all    []prometheus.Collector
}

var _ gometrics.MetricSink = (*Sink)(nil)

// durationBuckets span 100µs to about 3s.
var durationBuckets = prometheus.ExponentialBuckets(0.0001, 2, 16)

// NewSink builds a sink with its collectors; register it and install it
// (Register does both).
func NewSink() *Sink {
	s := &Sink{
		timers:   map[string]*prometheus.HistogramVec{},
		counters: map[string]*prometheus.CounterVec{},
		gauges:   map[string]*prometheus.GaugeVec{},
		byPeer:   map[string]bool{},
	}
	timer := func(key, name, help string, labels ...string) {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "berth", Subsystem: "raft", Name: name, Help: help, Buckets: durationBuckets}, labels)
		s.timers[key] = h
		s.all = append(s.all, h)
	}
	counter := func(key, name, help string, labels ...string) {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "berth", Subsystem: "raft", Name: name, Help: help}, labels)
		s.counters[key] = c
		s.all = append(s.all, c)
	}
	timer("raft.commitTime", "commit_duration_seconds", "Leader: from dispatching a log entry to its commit by a quorum.")
	timer("raft.fsm.apply", "fsm_apply_duration_seconds", "Applying one committed entry to the registry FSM.")
	timer("raft.leader.lastContact", "leader_last_contact_seconds", "Leader: time since it last heard from its followers, sampled at each lease check.")
	timer("raft.replication.appendEntries.rpc", "replication_append_entries_duration_seconds", "Leader: one AppendEntries round trip to a follower.", "peer")
	timer("raft.boltdb.storeLogs", "store_logs_duration_seconds", "Writing a batch of log entries to the BoltDB log store (fsync included).")
	timer("raft.snapshot.create", "snapshot_create_duration_seconds", "Taking an FSM snapshot.")
	timer("raft.snapshot.persist", "snapshot_persist_duration_seconds", "Writing an FSM snapshot to disk.")
	counter("raft.apply", "applies_total", "Leader: log entries proposed.")
	counter("raft.replication.appendEntries.logs", "replication_logs_total", "Leader: log entries sent to a follower.", "peer")
	counter("raft.transition.heartbeat_timeout", "heartbeat_timeouts_total", "Follower: leader heartbeats missed, starting an election.")
	counter("raft.transition.leader_lease_timeout", "leader_lease_timeouts_total", "Leader: stepped down for lack of contact with a quorum.")
	for _, state := range []string{"follower", "candidate", "leader"} {
		counter("raft.state."+state, "became_"+state+"_total", "Times this node became "+state+".")
	}
	peers := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "berth", Subsystem: "raft", Name: "peers", Help: "Leader: servers in the latest Raft configuration (set when it leads)."}, nil)
	s.gauges["raft.peers"] = peers
	s.all = append(s.all, peers)
	s.byPeer["raft.replication.appendEntries.rpc"] = true
	s.byPeer["raft.replication.appendEntries.logs"] = true
	// Series without labels exist from the start, so a scrape before the
	// first election already lists them.
	for key, h := range s.timers {
		if !s.byPeer[key] {
			h.WithLabelValues()
		}
	}
	for key, c := range s.counters {
		if !s.byPeer[key] {
			c.WithLabelValues()
		}
	}
	return s
}

// Describe sends every collector's descriptors.
func (s *Sink) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range s.all {
		c.Describe(ch)
	}
}

// Collect sends every series.
func (s *Sink) Collect(ch chan<- prometheus.Metric) {
	for _, c := range s.all {
		c.Collect(ch)
	}
}

// labelValues are the Prometheus label values of a sample for key: none,
// or the peer_id label's value for the keys kept by peer. ok is false when
// that label is absent.
func (s *Sink) labelValues(key string, labels []gometrics.Label) ([]string, bool) {
	if !s.byPeer[key] {
		return nil, true
	}
	for _, l := range labels {
		if l.Name == "peer_id" {
			return []string{l.Value}, true
		}
	}
	return nil, false
}

// SetGauge implements go-metrics' MetricSink.
func (s *Sink) SetGauge(key []string, val float32) { s.SetGaugeWithLabels(key, val, nil) }

// SetGaugeWithLabels implements go-metrics' MetricSink.
func (s *Sink) SetGaugeWithLabels(key []string, val float32, labels []gometrics.Label) {
	k := strings.Join(key, ".")
	if g := s.gauges[k]; g != nil {
		if vals, ok := s.labelValues(k, labels); ok {
			g.WithLabelValues(vals...).Set(float64(val))
		}
	}
}

// EmitKey implements go-metrics' MetricSink; raft emits no keys.
func (s *Sink) EmitKey([]string, float32) {}

// IncrCounter implements go-metrics' MetricSink.
func (s *Sink) IncrCounter(key []string, val float32) { s.IncrCounterWithLabels(key, val, nil) }

// IncrCounterWithLabels implements go-metrics' MetricSink.
func (s *Sink) IncrCounterWithLabels(key []string, val float32, labels []gometrics.Label) {
	k := strings.Join(key, ".")
	if c := s.counters[k]; c != nil && val >= 0 {
		if vals, ok := s.labelValues(k, labels); ok {
			c.WithLabelValues(vals...).Add(float64(val))
		}
	}
}

// AddSample implements go-metrics' MetricSink.
func (s *Sink) AddSample(key []string, val float32) { s.AddSampleWithLabels(key, val, nil) }

// AddSampleWithLabels implements go-metrics' MetricSink. Raft's samples
// are timings in milliseconds (go-metrics' default timer granularity,
// which Register keeps); they are observed in seconds.
func (s *Sink) AddSampleWithLabels(key []string, val float32, labels []gometrics.Label) {
	k := strings.Join(key, ".")
	if h := s.timers[k]; h != nil {
		if vals, ok := s.labelValues(k, labels); ok {
			h.WithLabelValues(vals...).Observe(float64(val) / 1000)
		}
	}
}

// Register builds a Sink, registers it into reg and installs it as the
// process's go-metrics sink, which raft and raft-boltdb report to. Call it
// once per process, before the node starts (see the package comment).
func Register(reg prometheus.Registerer) error {
	s := NewSink()
	if err := reg.Register(s); err != nil {
		return fmt.Errorf("raft metrics: %w", err)
	}
	cfg := gometrics.DefaultConfig("") // no service name: keys stay raft.*
	cfg.EnableHostname = false         // no hostname prefix on gauges
	cfg.EnableRuntimeMetrics = false   // the registry has the Go collector
	if _, err := gometrics.NewGlobal(cfg, s); err != nil {
		return fmt.Errorf("raft metrics: %w", err)
	}
	return nil
}
