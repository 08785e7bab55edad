package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	"github.com/berthhq/berth/cmd/internal/conftest"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func TestVersion(t *testing.T) {
	f := &fakeAdmin{cluster: &berthv1.ClusterStatusResponse{
		LeaderId: "cp0",
		ServedBy: "cp1",
		Servers: []*berthv1.ServerStatus{
			{Id: "cp0", State: "Leader", Build: &berthv1.BuildInfo{Version: "v0.2.0", Revision: "r2", GoVersion: "go1.26.8"}},
			{Id: "cp1", State: "Follower", Build: &berthv1.BuildInfo{Version: "v0.1.0", GoVersion: "go1.26.8"}},
			{Id: "cp2", State: "Unreachable", Error: "connection refused"},
		},
	}}
	addr := serve(t, f)

	r := berthctl(t, addr, "version")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	want := []string{
		"berthctl " + buildinfo.Read().String(),
		"server cp0 v0.2.0 (revision r2) go1.26.8 [Leader]",
		"server cp1 v0.1.0 go1.26.8 [Follower]",
		"server cp2 unknown (no answer) [Unreachable: connection refused]",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("version printed\n%s\nwant\n%s", r.stdout, strings.Join(want, "\n"))
	}

	r = berthctl(t, addr, "version", "-o", "json")
	var rep versionReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 {
		t.Fatalf("json: %v (exit %d): %s", err, r.code, r.stdout)
	}
	if len(rep.Servers) != 3 || rep.Servers[0].Build.Version != "v0.2.0" || rep.Servers[2].Build != nil || rep.Client.GoVersion == "" {
		t.Fatalf("json report %+v", rep)
	}

	// --client asks nobody.
	before := len(requestsOf[*berthv1.ClusterStatusRequest](f))
	r = berthctl(t, addr, "version", "--client")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 1 || len(requestsOf[*berthv1.ClusterStatusRequest](f)) != before {
		t.Fatalf("version --client: exit %d, %q", r.code, r.stdout)
	}
}

func TestVersionWithoutServer(t *testing.T) {
	r := berthctl(t, "127.0.0.1:1", "--retries", "0", "--timeout", "5s", "version")
	if r.code != 1 || !strings.HasPrefix(r.stdout, "berthctl ") || !strings.Contains(r.stderr, "cluster status") {
		t.Fatalf("exit %d; stdout %q; stderr %q: want berthctl's own version and the error", r.code, r.stdout, r.stderr)
	}
}

func TestVersionFlag(t *testing.T) {
	r := berthctlEnv(t, nil, "--version")
	if r.code != 0 || r.stdout != "berthctl "+buildinfo.Read().String()+"\n" {
		t.Fatalf("--version: exit %d, %q", r.code, r.stdout)
	}
}

// TestEveryGlobalFlagFromItsVariable: each global flag's BERTH_ variable,
// as --help names it, is read.
func TestEveryGlobalFlagFromItsVariable(t *testing.T) {
	var help bytes.Buffer
	if code := execute(t.Context(), newRootCmd(&help, &help, func(string) string { return "" }), []string{"--help"}, &help); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	var env map[string]string
	var stdout, stderr bytes.Buffer
	root := newRootCmd(&stdout, &stderr, func(k string) string { return env[k] })
	conftest.CheckEveryFlagFromEnv(t, help.String(), root.PersistentFlags(), map[string]string{"output": "json"}, func(e map[string]string) error {
		env = e
		root.SetArgs([]string{"version", "--client"})
		return root.Execute()
	})
}

// TestInsecureWarningOnlyVerbose: plaintext is the operator's choice
// (--insecure); berthctl mentions it only when asked to say more.
func TestInsecureWarningOnlyVerbose(t *testing.T) {
	f := &fakeAdmin{cluster: &berthv1.ClusterStatusResponse{LeaderId: "cp0"}}
	addr := serve(t, f)
	if r := berthctl(t, addr, "status", "cluster"); r.code != 0 || strings.Contains(r.stderr, "INSECURE") {
		t.Errorf("without -v: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := berthctl(t, addr, "-v", "status", "cluster"); r.code != 0 || strings.Count(r.stderr, "INSECURE") != 1 {
		t.Errorf("with -v: exit %d, stderr %q, want one INSECURE line", r.code, r.stderr)
	}
}
