package raftmetrics

import (
	"context"
	"fmt"
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/berthhq/berth/controlplane/controlplanetest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// gather returns the families of reg by name.
func gather(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func TestSinkMapsRaftKeys(t *testing.T) {
	s := NewSink()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s)
	peer := []gometrics.Label{{Name: "peer_id", Value: "cp1"}}

	s.AddSample([]string{"raft", "commitTime"}, 250) // milliseconds
	s.AddSample([]string{"raft", "commitTime"}, 750)
	s.AddSampleWithLabels([]string{"raft", "replication", "appendEntries", "rpc"}, 2, peer)
	// raft's legacy duplicate puts the peer in the key: not counted twice.
	s.AddSample([]string{"raft", "replication", "appendEntries", "rpc", "cp1"}, 2)
	// a labelled timer without its label is dropped, not a panic.
	s.AddSample([]string{"raft", "replication", "appendEntries", "rpc"}, 2)
	s.IncrCounterWithLabels([]string{"raft", "replication", "appendEntries", "logs"}, 3, peer)
	s.IncrCounter([]string{"raft", "state", "leader"}, 1)
	s.IncrCounter([]string{"raft", "apply"}, 1)
	s.IncrCounter([]string{"raft", "apply"}, -1) // a counter never goes down
	s.SetGauge([]string{"raft", "peers"}, 3)
	s.AddSample([]string{"raft", "something", "else"}, 1) // not kept
	s.EmitKey([]string{"raft", "commitTime"}, 1)

	fams := gather(t, reg)
	h := fams["berth_raft_commit_duration_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 2 || h.GetSampleSum() != 1.0 {
		t.Errorf("commit duration: count %d sum %v, want 2 and 1.0 s", h.GetSampleCount(), h.GetSampleSum())
	}
	rpc := fams["berth_raft_replication_append_entries_duration_seconds"].GetMetric()
	if len(rpc) != 1 || rpc[0].GetLabel()[0].GetValue() != "cp1" || rpc[0].GetHistogram().GetSampleCount() != 1 {
		t.Errorf("append entries rpc = %v, want one observation for peer cp1", rpc)
	}
	if v := fams["berth_raft_replication_logs_total"].GetMetric()[0].GetCounter().GetValue(); v != 3 {
		t.Errorf("replication logs = %v, want 3", v)
	}
	if v := fams["berth_raft_became_leader_total"].GetMetric()[0].GetCounter().GetValue(); v != 1 {
		t.Errorf("became leader = %v, want 1", v)
	}
	if v := fams["berth_raft_applies_total"].GetMetric()[0].GetCounter().GetValue(); v != 1 {
		t.Errorf("applies = %v, want 1", v)
	}
	if v := fams["berth_raft_peers"].GetMetric()[0].GetGauge().GetValue(); v != 3 {
		t.Errorf("peers = %v, want 3", v)
	}
	// Unlabelled series exist before raft reports anything.
	if f := fams["berth_raft_fsm_apply_duration_seconds"]; f == nil || f.GetMetric()[0].GetHistogram().GetSampleCount() != 0 {
		t.Errorf("fsm apply duration = %v, want an empty series", f)
	}
	for name := range fams {
		if len(name) < len("berth_raft_") || name[:len("berth_raft_")] != "berth_raft_" {
			t.Errorf("unexpected family %s", name)
		}
	}
}

// Register bridges a real cluster's raft into the registry. It installs
// the process-wide sink, so this is the package's only test that calls
// it; the three nodes here all feed it, which is why berthd (one node per
// process) is the only caller outside tests.
func TestRegisterBridgesRealRaft(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := Register(reg); err != nil {
		t.Fatal(err)
	}
	if err := Register(reg); err == nil {
		t.Fatal("registering twice into one registry was accepted")
	}
	c := controlplanetest.MakeCluster(t, 3, controlplanetest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Registry(c.Leader()).RegisterProxy(ctx, &berthv1.RegisterProxyRequest{Proxy: &berthv1.Proxy{
		Id: "p1", Region: "eu", Zone: "eu-a", CapacityWeight: 1,
		Addresses: &berthv1.ProxyAddresses{Tunnel: "127.0.0.1:9001", Downstream: "127.0.0.1:9002", Peer: "127.0.0.1:9003"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	controlplanetest.Eventually(t, 10*time.Second, func() error {
		fams := gather(t, reg)
		for _, name := range []string{"berth_raft_commit_duration_seconds", "berth_raft_fsm_apply_duration_seconds",
			"berth_raft_replication_append_entries_duration_seconds", "berth_raft_store_logs_duration_seconds"} {
			f := fams[name]
			if f == nil || len(f.GetMetric()) == 0 || f.GetMetric()[0].GetHistogram().GetSampleCount() == 0 {
				return fmt.Errorf("%s: no observation yet", name)
			}
		}
		if v := fams["berth_raft_became_leader_total"].GetMetric()[0].GetCounter().GetValue(); v < 1 {
			return fmt.Errorf("became leader = %v", v)
		}
		if v := fams["berth_raft_peers"]; v == nil || v.GetMetric()[0].GetGauge().GetValue() != 3 {
			return fmt.Errorf("peers = %v", v)
		}
		return nil
	})
}
