package discovery

import (
	"bytes"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventually polls cond every few milliseconds until it holds or timeout
// passes, then fails the test with msg.
func eventually(t *testing.T, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not synchronisation
	}
}

// testLogger sends logs to t.Log. Background goroutines (memberlist's) may
// log after the test ends, which t.Log forbids, so logging stops once the
// test's last cleanup has run. Call it before creating anything that logs, so
// its cleanup runs last.
func testLogger(t *testing.T) *slog.Logger {
	t.Helper()
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.done = true
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// checkNoLeaks fails the test if goroutines of memberlist or of this package
// outlive the test's cleanups. Register it before the things it checks, so
// it runs after their cleanups. Tests using it must not run in parallel.
func checkNoLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		var stacks []byte
		leaked := func() bool {
			buf := make([]byte, 1<<20)
			stacks = buf[:runtime.Stack(buf, true)]
			return bytes.Contains(stacks, []byte("hashicorp/memberlist.")) ||
				bytes.Contains(stacks, []byte("discovery.(*Gossip)."))
		}
		deadline := time.Now().Add(5 * time.Second)
		for leaked() {
			if time.Now().After(deadline) {
				t.Errorf("goroutines leaked:\n%s", stacks)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
