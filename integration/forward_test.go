package integration

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/berthhq/berth/dataplane/dataplanetest"
)

// headerUpstream answers /headers with the request headers it got (JSON),
// /trailers with a chunked body and two trailers, /hop with hop-by-hop
// headers a proxy must drop, and /cut and /cut-chunked with half a body.
func headerUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("Host", r.Host)
		_ = json.NewEncoder(w).Encode(h)
	})
	mux.HandleFunc("/trailers", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Checksum", "abc")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	})
	mux.HandleFunc("/hop", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "X-Private")
		w.Header().Set("X-Private", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Kept", "yes")
		_, _ = io.WriteString(w, "hop")
	})
	mux.HandleFunc("/cut", func(w http.ResponseWriter, _ *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
		_ = brw.Flush()
		_ = conn.Close()
	})
	mux.HandleFunc("/cut-chunked", func(w http.ResponseWriter, _ *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n")
		_ = brw.Flush()
		_ = conn.Close()
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// TestProxyForwardsHeadersAndTrailers checks what the proxy itself adds to
// and removes from an exchange, local and forwarded one hop.
func TestProxyForwardsHeadersAndTrailers(t *testing.T) {
	e := dataplanetest.Start(t, dataplanetest.Options{})
	up := headerUpstream(t)
	e.Agent("a1", e.TunnelAddrs()[:1], map[string]string{"hdr": up})
	e.WaitConnections("hdr", 1)
	c := httpClient(t)
	expectBody(t, e, c, 1, "hdr", "/hop", "hop")
	for p := range 2 {
		send := func(path string, set map[string]string) (*http.Response, error) {
			req, _ := http.NewRequest("GET", "http://"+e.DownstreamAddr(p)+path, nil)
			req.Host = "hdr.berth.test"
			for k, v := range set {
				req.Header.Set(k, v)
			}
			return c.Do(req)
		}
		do := func(path string, set map[string]string) *http.Response {
			t.Helper()
			resp, err := send(path, set)
			if err != nil {
				t.Fatalf("proxy %d %s: %v", p, path, err)
			}
			return resp
		}

		// Request side: hop-by-hop headers dropped (and those Connection
		// names), X-Forwarded-* set, Host and end-to-end headers kept.
		resp := do("/headers", map[string]string{
			"Connection":          "X-Hop",
			"X-Hop":               "drop me",
			"Proxy-Authorization": "Basic eA==",
			"X-Forwarded-For":     "192.0.2.7",
			"X-Custom":            "kept",
		})
		var got http.Header
		err := json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("proxy %d: %v", p, err)
		}
		for _, k := range []string{"X-Hop", "Proxy-Authorization"} {
			if v := got.Get(k); v != "" {
				t.Errorf("proxy %d passed hop-by-hop %s: %q", p, k, v)
			}
		}
		if got.Get("X-Custom") != "kept" || got.Get("Host") != "hdr.berth.test" || got.Get("X-Forwarded-Host") != "hdr.berth.test" ||
			got.Get("X-Forwarded-Proto") != "http" || got.Get("X-Forwarded-For") != "192.0.2.7, 127.0.0.1" {
			t.Errorf("proxy %d: upstream saw %v", p, got)
		}
		if ua := got.Get("User-Agent"); ua != "Go-http-client/1.1" {
			t.Errorf("proxy %d: User-Agent %q, want the client's", p, ua)
		}

		// Response side: hop-by-hop headers dropped, the rest kept.
		resp = do("/hop", nil)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Header.Get("X-Private") != "" || resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("X-Kept") != "yes" {
			t.Errorf("proxy %d: response headers %v", p, resp.Header)
		}

		// Trailers, declared and undeclared, arrive after the body.
		resp = do("/trailers", nil)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "body" || resp.Trailer.Get("X-Checksum") != "abc" || resp.Trailer.Get("X-Late") != "late" {
			t.Errorf("proxy %d: body %q err %v trailers %v", p, b, err, resp.Trailer)
		}

		// An answer cut short upstream is cut short downstream too: the
		// client must see an error (no answer, a cut body, or a 502 from
		// the forwarding proxy), never a shorter body that looks whole.
		for _, path := range []string{"/cut", "/cut-chunked"} {
			if resp, err = send(path, nil); err == nil {
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode == http.StatusOK {
					t.Errorf("proxy %d: %s answer read whole: %d %q", p, path, resp.StatusCode, b)
				}
			}
		}
	}
}
