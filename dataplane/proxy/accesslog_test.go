package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// logged runs handler behind the access log and returns the line it wrote.
func logged(t *testing.T, cfg EdgeConfig, r *http.Request, handler func(w http.ResponseWriter, aw *accessWriter)) map[string]any {
	t.Helper()
	var buf bytes.Buffer
	l := newAccessLog(cfg, slog.New(slog.NewJSONHandler(&buf, nil)))
	rec := httptest.NewRecorder()
	aw := l.begin(r.Context(), rec)
	if aw == nil {
		t.Fatal("access log is off")
	}
	handler(aw, aw)
	l.end(r.Context(), aw, r)
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("log line %q: %v", buf.String(), err)
	}
	return line
}

func TestAccessLogLine(t *testing.T) {
	cfg := DefaultEdge()
	cfg.AccessLogHeaders = []string{"user-agent", "X-Request-Id"}
	r := httptest.NewRequest("POST", "/a/b?secret=1", nil)
	r.Header.Set("User-Agent", "test/1")
	r.Header.Set("Authorization", "Bearer not-logged")

	line := logged(t, cfg, r, func(w http.ResponseWriter, aw *accessWriter) {
		aw.endpoint = "web"
		aw.served(target{local: &localConn{id: "c1"}})
		w.WriteHeader(201)
		_, _ = io.WriteString(w, "hello")
	})
	want := map[string]any{"subsystem": "access", "msg": "request", "endpoint": "web", "method": "POST",
		"path": "/a/b", "status": 201.0, "bytes": 5.0, "served": "local", "connection": "c1"}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s = %v, want %v (line %v)", k, line[k], v, line)
		}
	}
	hs, _ := line["headers"].(map[string]any)
	if hs["User-Agent"] != "test/1" || len(hs) != 1 {
		t.Errorf("headers = %v, want only User-Agent", line["headers"])
	}
	if _, ok := line["duration"]; !ok {
		t.Error("no duration")
	}

	line = logged(t, DefaultEdge(), httptest.NewRequest("GET", "/", nil), func(w http.ResponseWriter, aw *accessWriter) {
		aw.served(target{peer: "proxy-b"})
		aw.failed("upstream-unreachable")
		w.WriteHeader(502)
	})
	if line["served"] != "peer" || line["peer"] != "proxy-b" || line["error"] != "upstream-unreachable" || line["status"] != 502.0 {
		t.Errorf("peer/error line: %v", line)
	}
	if _, ok := line["headers"]; ok {
		t.Errorf("headers logged without an allow-list: %v", line)
	}
}

func TestAccessLogOff(t *testing.T) {
	cfg := DefaultEdge()
	cfg.AccessLog = false
	if l := newAccessLog(cfg, slog.Default()); l.begin(context.Background(), httptest.NewRecorder()) != nil {
		t.Fatal("disabled access log wraps the writer")
	}
	quiet := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if newAccessLog(DefaultEdge(), quiet).begin(context.Background(), httptest.NewRecorder()) != nil {
		t.Fatal("access log below the logger's level wraps the writer")
	}
}

// The log's cost per request stays small: the pooled writer is reused and
// building a line allocates only inside the handler.
func TestAccessLogAllocations(t *testing.T) {
	l := newAccessLog(DefaultEdge(), slog.New(slog.NewJSONHandler(io.Discard, nil)))
	r := httptest.NewRequest("GET", "/x", nil)
	rec := httptest.NewRecorder()
	ctx := context.Background()
	allocs := testing.AllocsPerRun(200, func() {
		aw := l.begin(ctx, rec)
		aw.endpoint = "web"
		aw.WriteHeader(200)
		l.end(ctx, aw, r)
	})
	t.Logf("%.1f allocations per logged request", allocs)
	// 1 normally (slog's record past five attributes); the race detector
	// makes sync.Pool drop items at random, hence the slack.
	if allocs > 4 {
		t.Fatalf("%.1f allocations per logged request; want at most 4", allocs)
	}
}
