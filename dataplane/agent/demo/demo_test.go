package demo

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestHandler(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, "inst-1", nil) }()
	base := "http://" + ln.Addr().String()
	c := &http.Client{Timeout: 10 * time.Second}

	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"GET", "/", "", 200, "hello from inst-1\n"},
		{"POST", "/echo", "abc", 200, "abc"},
		{"GET", "/stream?n=2", "", 200, "inst-1 line 1/2\ninst-1 line 2/2\n"},
		{"GET", "/stream?n=0", "", 200, ""},
		{"GET", "/stream?n=x", "", 400, ""},
		{"GET", "/stream?n=100000", "", 400, ""},
		{"GET", "/nope", "", 404, ""},
		{"GET", "/echo", "", 405, ""},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || (tc.code == 200 && string(b) != tc.want) {
			t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, b, tc.code, tc.want)
		}
	}

	ws, _, err := websocket.Dial(t.Context(), "ws://"+ln.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Write(t.Context(), websocket.MessageBinary, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	typ, msg, err := ws.Read(t.Context())
	if err != nil || typ != websocket.MessageBinary || string(msg) != "\x01\x02\x03" {
		t.Fatalf("ws echo = %v %q %v", typ, msg, err)
	}
	_ = ws.Close(websocket.StatusNormalClosure, "")

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve = %v", err)
	}
}
