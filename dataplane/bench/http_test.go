package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func echoServer(t *testing.T, mangle func(seen int64, body []byte) []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var seen atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := seen.Add(1)
		if got := r.Header.Get("X-Test"); got != "yes" {
			http.Error(w, "missing header", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if mangle != nil {
			body = mangle(n, body)
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &seen
}

func testConfig(url string) Config {
	cfg := Default()
	cfg.URL = url
	cfg.Headers = http.Header{"X-Test": {"yes"}}
	cfg.Clients = 4
	cfg.Duration = 0
	cfg.Requests = 200
	cfg.Warmup = 0
	cfg.Timeout = 5 * time.Second
	return cfg
}

func TestRunCountsCheckedEchoes(t *testing.T) {
	srv, seen := echoServer(t, nil)
	res, err := Run(context.Background(), testConfig(srv.URL+"/echo"))
	if err != nil {
		t.Fatal(err)
	}
	if res.ErrorCount() != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	// Clients may each finish one in-flight request after the count is hit.
	if res.Requests < 200 || res.Requests > 200+4 {
		t.Fatalf("requests = %d, want 200..204", res.Requests)
	}
	// Requests still in flight when the count is reached are cut off, not
	// counted.
	if n := seen.Load(); n < res.Requests || n >= res.Requests+4 {
		t.Fatalf("server saw %d requests, result counts %d", n, res.Requests)
	}
	if res.BytesRecv != res.Requests*1024 {
		t.Fatalf("bytes received = %d, want %d", res.BytesRecv, res.Requests*1024)
	}
	if res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.Max {
		t.Fatalf("percentiles out of order: p50 %v p99 %v max %v", res.P50, res.P99, res.Max)
	}
}

func TestRunCatchesWrongBodies(t *testing.T) {
	// Every tenth answer is someone else's: the sequence number differs.
	srv, _ := echoServer(t, func(n int64, body []byte) []byte {
		if n%10 == 0 {
			body[7]++
		}
		return body
	})
	res, err := Run(context.Background(), testConfig(srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Errors[ErrBody]; got < 15 {
		t.Fatalf("body mismatches = %d (errors %v), want about one in ten", got, res.Errors)
	}
}

func TestRunCountsStatusAndTooLarge(t *testing.T) {
	srv, _ := echoServer(t, func(n int64, body []byte) []byte { return append(body, body...) })
	res, err := Run(context.Background(), testConfig(srv.URL))
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors[ErrTooLarge] < 200 {
		t.Fatalf("doubled bodies: requests %d errors %v", res.Requests, res.Errors)
	}

	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no upstream", http.StatusBadGateway)
	}))
	defer bad.Close()
	cfg := testConfig(bad.URL)
	cfg.Requests = 0
	cfg.Duration = 300 * time.Millisecond
	res, err = Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors["status-502"] == 0 {
		t.Fatalf("502 server: requests %d errors %v", res.Requests, res.Errors)
	}
}

func TestRunDialErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	cfg := testConfig(url)
	cfg.Requests = 0
	cfg.Duration = 200 * time.Millisecond
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors[ErrDial] == 0 {
		t.Fatalf("closed port: requests %d errors %v", res.Requests, res.Errors)
	}
}

func TestValidate(t *testing.T) {
	for name, c := range map[string]func(*Config){
		"no url":        func(c *Config) { c.URL = "" },
		"https":         func(c *Config) { c.URL = "https://x/" },
		"no clients":    func(c *Config) { c.Clients = 0 },
		"no limit":      func(c *Config) { c.Duration, c.Requests = 0, 0 },
		"tiny echo":     func(c *Config) { c.BodySize = 4 },
		"huge body":     func(c *Config) { c.BodySize = maxBody + 1 },
		"no timeout":    func(c *Config) { c.Timeout = 0 },
		"negative warm": func(c *Config) { c.Warmup = -time.Second },
	} {
		cfg := testConfig("http://127.0.0.1:1/")
		c(&cfg)
		if err := cfg.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, cfg)
		}
	}
	if err := testConfig("http://127.0.0.1:1/").Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), Config{}); err == nil || !strings.Contains(err.Error(), "url") {
		t.Fatalf("Run(empty) = %v", err)
	}
}
