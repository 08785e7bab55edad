package fsm

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func BenchmarkApplyConnectionEvents(b *testing.B) {
	for _, via := range []string{"State", "FSM"} {
		b.Run(via, func(b *testing.B) {
			s := NewState()
			const proxies, conns = 100, 100_000
			idx := buildLarge(b, s, proxies, conns)
			f := &FSM{state: s, applied: idx, obs: nopObserver{}}
			// Each batch on proxy p opens 500 connections and closes the
			// 500 that the previous batch on p opened, so the state keeps
			// 100k connections (+500 per proxy touched).
			opened := make([][]string, proxies)
			nextID := conns
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				p := i % proxies
				var evs []*berthv1.ConnectionEvent
				for _, id := range opened[p] {
					evs = append(evs, closeEv(id))
				}
				opened[p] = opened[p][:0]
				for len(evs) < 1000 {
					c := largeConn(nextID)
					nextID++
					opened[p] = append(opened[p], c.Id)
					evs = append(evs, openEv(c))
				}
				cmd := connEvents(fmt.Sprintf("proxy-%04d", p), evs...)
				cmd.NowUnixMs = int64(2_000_000 + i)
				idx++
				var log *raft.Log
				if via == "FSM" {
					log = commandLog(b, idx, cmd)
				}
				b.StartTimer()
				var res *berthv1.CommandResult
				if via == "FSM" {
					res = f.Apply(log).(*berthv1.CommandResult)
				} else {
					res, _ = s.Apply(idx, cmd)
				}
				if res.Code != codeOK || len(res.EventErrors) > 0 {
					b.Fatal(res)
				}
			}
			b.ReportMetric(float64(b.N)*1000/b.Elapsed().Seconds(), "events/s")
		})
	}
}

type nopObserver struct{}

func (nopObserver) Publish(uint64, []*berthv1.Event) {}
func (nopObserver) Reset(uint64)                     {}

// BenchmarkSnapshotRestore takes a snapshot of 100k connections on 1,000
// proxies, persists it and restores it into a fresh FSM.
func BenchmarkSnapshotRestore(b *testing.B) {
	s := NewState()
	idx := buildLarge(b, s, 1000, 100_000)
	f := &FSM{state: s, applied: idx}
	var snapDur, persistDur, restoreDur time.Duration
	var size int
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		snap, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		var sink memSink
		if err := snap.Persist(&sink); err != nil {
			b.Fatal(err)
		}
		snap.Release()
		t2 := time.Now()
		if err := New(nil).Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		snapDur += t1.Sub(t0)
		persistDur += t2.Sub(t1)
		restoreDur += t3.Sub(t2)
		size = sink.Len()
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
	b.ReportMetric(ms(snapDur), "snapshot-ms")
	b.ReportMetric(ms(persistDur), "persist-ms")
	b.ReportMetric(ms(restoreDur), "restore-ms")
	b.ReportMetric(ms(snapDur+persistDur+restoreDur), "total-ms")
	if c := cpuTime() - cpu0; c > 0 {
		b.ReportMetric(ms(c), "cpu-ms")
	}
	b.ReportMetric(float64(size), "snapshot-bytes")
}

// BenchmarkMemoryPerConnection measures the live heap of a registry of
// 100k connections (3 endpoints each) on 1,000 proxies, per connection:
// objects, strings, maps and indexes.
func BenchmarkMemoryPerConnection(b *testing.B) {
	const conns = 100_000
	var perConn float64
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := NewState()
		buildLarge(b, s, 1000, conns)
		runtime.GC()
		runtime.ReadMemStats(&after)
		perConn = float64(after.HeapAlloc-before.HeapAlloc) / conns
		runtime.KeepAlive(s)
	}
	b.ReportMetric(perConn, "bytes/conn")
}
