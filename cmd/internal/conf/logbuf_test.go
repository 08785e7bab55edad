package conf

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLogLinesHeldUntilWarnOrClose(t *testing.T) {
	var sink syncBuffer
	out := newBufferedOutput(&sink, time.Hour) // no tick during the test
	logger := slog.New(flushingHandler{Handler: slog.NewJSONHandler(out, nil), out: out}).With("subsystem", "access")
	logger.Info("request", "n", 1)
	if got := sink.String(); got != "" {
		t.Fatalf("an info line was written at once: %q", got)
	}
	logger.Warn("slow", "n", 2)
	got := sink.String()
	if i, w := strings.Index(got, `"n":1`), strings.Index(got, `"n":2`); i < 0 || w < i {
		t.Fatalf("a warning did not write itself and what came before, in order: %q", got)
	}
	logger.Info("request", "n", 3)
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sink.String(), `"n":3`) {
		t.Fatalf("Close lost a held line: %q", sink.String())
	}
}

func TestLogLinesWrittenWithinTheInterval(t *testing.T) {
	var sink syncBuffer
	logger, closer, err := Logger(&sink, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	logger.Info("request")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(sink.String(), `"msg":"request"`) {
		if time.Now().After(deadline) {
			t.Fatal("an info line was never written")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, err := Logger(&sink, "json", "loud"); err == nil {
		t.Fatal("a bad level was accepted")
	}
}
