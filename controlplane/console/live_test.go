package console_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/berthhq/berth/controlplane"
	"github.com/berthhq/berth/controlplane/controlplanetest"
	"github.com/berthhq/berth/controlplane/token"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// TestConsoleOnANodeWithTLSAndAdminAuth runs the console on a real node
// with mutual TLS and admin auth. The console reaches its node over the
// node's own server certificate, which the node otherwise trusts as a
// forwarding peer: the page must still need a token, and a read token
// must be enough.
func TestConsoleOnANodeWithTLSAndAdminAuth(t *testing.T) {
	boot, _, err := token.NewAdminToken("bootstrap", token.RoleOperate, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	bootFile := filepath.Join(t.TempDir(), "bootstrap")
	if err := os.WriteFile(bootFile, []byte(boot+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := controlplanetest.MakeCluster(t, 1, controlplanetest.Options{TLS: true, Configure: func(_ int, cfg *controlplane.Config) {
		cfg.AdminAuth = true
		cfg.AdminBootstrapTokenFile = bootFile
		cfg.HTTPAddr = "127.0.0.1:0"
	}})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	viewer, err := c.Admin(0).CreateAdminToken(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+boot),
		&berthv1.CreateAdminTokenRequest{Name: "viewer", Role: "read"})
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + c.Node(0).HTTPAddr()

	do := func(path, tok string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		return http.DefaultClient.Do(req)
	}
	for _, tc := range []struct {
		name, tok string
		want      int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"forged token", viewer.Token[:len(viewer.Token)-4] + "AAAA", http.StatusUnauthorized},
		{"read token", viewer.Token, http.StatusOK},
	} {
		resp, err := do("/ui/api/snapshot", tc.tok)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("%s: %d %s, want %d", tc.name, resp.StatusCode, b, tc.want)
		}
	}

	// A live stream ends when its node closes, without holding up the
	// gRPC server's graceful stop.
	resp, err := do("/ui/events", viewer.Token)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "event: snapshot") {
	}
	start := time.Now()
	c.Stop(0)
	for sc.Scan() {
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("closing the node took %s with a console stream open", d)
	}
}
