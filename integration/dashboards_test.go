package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/berthhq/berth/dataplane/dataplanetest"
)

// The Grafana dashboards in deploy/grafana query metrics by name; these
// tests fail when a dashboard names a metric no binary exports, checked
// against the live /metrics of real berthd, berth-proxy and berth-agent
// processes.

// dashboardsDir is deploy/grafana, relative to this package.
const dashboardsDir = "../deploy/grafana"

// dashboardExprs reads every dashboard in dir and returns the PromQL
// expressions of its panels (every "expr" field, at any depth), by file.
func dashboardExprs(t *testing.T, dir string) map[string][]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no dashboards in %s", dir)
	}
	out := map[string][]string{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			UID    string `json:"uid"`
			Title  string `json:"title"`
			Panels []any  `json:"panels"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
			t.Fatalf("%s: want a uid, a title and panels", f)
		}
		var all any
		_ = json.Unmarshal(raw, &all)
		var walk func(v any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if s, ok := x.(string); ok && k == "expr" {
						out[filepath.Base(f)] = append(out[filepath.Base(f)], s)
					}
					walk(x)
				}
			case []any:
				for _, x := range v {
					walk(x)
				}
			}
		}
		walk(all)
		if len(out[filepath.Base(f)]) == 0 {
			t.Fatalf("%s: no queries", f)
		}
	}
	return out
}

var (
	promStrings = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	// Label matchers, range and subquery selectors, and the label lists of
	// grouping and vector-matching modifiers: their words are labels, not
	// metrics.
	promMatchers  = regexp.MustCompile(`\{[^{}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\[\]]*\]`)
	promModifiers = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promOffset    = regexp.MustCompile(`\boffset\s+-?[0-9a-zA-Z_$]+`)
	// A number (durations and exponents included) or a name; a name
	// followed by "(" is a function or an aggregation.
	promTokens   = regexp.MustCompile(`(?:0x[0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?[a-zA-Z]*)|\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?|([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?`)
	promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "group_left": true, "group_right": true,
		"by": true, "without": true, "on": true, "ignoring": true, "offset": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
)

// exprMetrics returns the metric names a PromQL expression selects, or an
// error when its brackets do not balance (a broken query).
func exprMetrics(expr string) ([]string, error) {
	s := promStrings.ReplaceAllString(expr, `""`)
	depth := map[rune]int{}
	pairs := map[rune]rune{')': '(', '}': '{', ']': '['}
	for _, r := range s {
		switch r {
		case '(', '{', '[':
			depth[r]++
		case ')', '}', ']':
			if depth[pairs[r]]--; depth[pairs[r]] < 0 {
				return nil, fmt.Errorf("%q: unbalanced %c", expr, r)
			}
		}
	}
	for r, d := range depth {
		if d != 0 {
			return nil, fmt.Errorf("%q: unclosed %c", expr, r)
		}
	}
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRanges.ReplaceAllString(s, " ")
	s = promModifiers.ReplaceAllString(s, " ")
	s = promOffset.ReplaceAllString(s, " ")
	var names []string
	for _, m := range promTokens.FindAllStringSubmatch(s, -1) {
		name, call := m[1], m[2]
		if name == "" || call != "" || promKeywords[name] {
			continue
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names, nil
}

// exportedNames are the series names a scrape offers: every family, and a
// histogram's or summary's _bucket, _sum and _count.
func exportedNames(fams map[string]*dto.MetricFamily, into map[string]bool) {
	for name, f := range fams {
		if len(f.GetMetric()) == 0 {
			continue
		}
		into[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			into[name+"_bucket"], into[name+"_sum"], into[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			into[name+"_sum"], into[name+"_count"] = true, true
		}
	}
}

// missingMetrics lists, as "file: name (in expr)", every metric a
// dashboard query names that exported does not have, and every query that
// does not parse.
func missingMetrics(exprs map[string][]string, exported map[string]bool) []string {
	var missing []string
	for file, list := range exprs {
		for _, e := range list {
			names, err := exprMetrics(e)
			if err != nil {
				missing = append(missing, file+": "+err.Error())
				continue
			}
			if len(names) == 0 {
				missing = append(missing, fmt.Sprintf("%s: %q selects no metric", file, e))
			}
			for _, n := range names {
				if !exported[n] {
					missing = append(missing, fmt.Sprintf("%s: %s (in %q)", file, n, e))
				}
			}
		}
	}
	sort.Strings(missing)
	return missing
}

func TestExprMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`berth_cp_is_leader`: {"berth_cp_is_leader"},
		`histogram_quantile(0.99, sum by (le, endpoint) (rate(berth_proxy_request_duration_seconds_bucket{code=~"5xx|4xx"}[$__rate_interval])))`: {"berth_proxy_request_duration_seconds_bucket"},
		`max by (proxy) (berth_cp_proxy_target_connections * on (instance) group_left berth_cp_is_leader)`:                                       {"berth_cp_proxy_target_connections", "berth_cp_is_leader"},
		`scalar(max(berth_cp_raft_commit_index)) - berth_cp_applied_index`:                                                                       {"berth_cp_raft_commit_index", "berth_cp_applied_index"},
		`sum(rate(a_total{x="sum(b)"}[5m] offset 1h)) / 1e3 > bool 0.5 unless c_total`:                                                           {"a_total", "c_total"},
		`sum without (instance) (increase(berth_cp_moves_total{event="aborted"}[1h:5m]))`:                                                        {"berth_cp_moves_total"},
		`sum(x_total) by (reason)`: {"x_total"},
	} {
		got, err := exprMetrics(expr)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("exprMetrics(%q) = %v, %v; want %v", expr, got, err, want)
		}
	}
	for _, bad := range []string{`sum(rate(x[5m])`, `x{a="b"`, `x]`} {
		if _, err := exprMetrics(bad); err == nil {
			t.Errorf("exprMetrics(%q) accepted a broken query", bad)
		}
	}
}

// A dashboard with a typo in a metric name, or a histogram suffix on a
// gauge, is caught; a histogram's _bucket is not.
func TestMissingMetricsCatchesTypos(t *testing.T) {
	exported := map[string]bool{}
	exportedNames(map[string]*dto.MetricFamily{
		"berth_proxy_request_duration_seconds": {Type: dto.MetricType_HISTOGRAM.Enum(), Metric: []*dto.Metric{{}}},
		"berth_proxy_tunnels":                  {Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{{}}},
	}, exported)
	got := missingMetrics(map[string][]string{"d.json": {
		`histogram_quantile(0.99, sum by (le) (rate(berth_proxy_request_duration_seconds_bucket[5m])))`,
		`sum(berth_proxy_tunels)`,
		`berth_proxy_tunnels_count`,
		`sum(rate(berth_proxy_tunnels[5m])`,
	}}, exported)
	want := []string{
		`d.json: "sum(rate(berth_proxy_tunnels[5m])": unclosed (`,
		`d.json: berth_proxy_tunels (in "sum(berth_proxy_tunels)")`,
		`d.json: berth_proxy_tunnels_count (in "berth_proxy_tunnels_count")`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("missingMetrics =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDashboardsQueryExportedMetrics runs the whole topology as real
// processes (three berthd, two berth-proxy, two berth-agent with
// --http-addr, a move between the proxies and requests through both, so
// series made on first use exist) and checks every dashboard query
// against what their /metrics export.
func TestDashboardsQueryExportedMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	exprs := dashboardExprs(t, dashboardsDir)
	bin := consoleBuild(t)
	c := consoleCluster(t, bin, "")
	cp := strings.Join(c.grpcAddrs(), ",")
	ports := e2eFreeAddrs(t, 10)
	var downstream, scrape []string
	for _, n := range c.nodes {
		scrape = append(scrape, n.httpAddr)
	}
	for i := range 2 {
		p := ports[4*i : 4*i+4]
		downstream = append(downstream, p[0])
		scrape = append(scrape, p[3])
		consoleProc(t, bin, fmt.Sprintf("berth-proxy proxy-%d", i), "--id", fmt.Sprintf("proxy-%d", i), "--region", "eu",
			"--zone", fmt.Sprintf("zone-%c", 'a'+i), "--insecure", "--addr", cp,
			"--downstream-addr", p[0], "--tunnel-addr", p[1], "--peer-addr", p[2], "--http-addr", p[3], "--drain-timeout", "2s")
	}
	upstream := startDemo(t)
	// Both agents start on proxy-0, so the rebalancer moves one to proxy-1.
	for i := range 2 {
		admin := ports[8+i]
		scrape = append(scrape, admin)
		consoleProc(t, bin, fmt.Sprintf("berth-agent agent-%d", i), "serve", "--proxy", ports[1],
			"--endpoint", "demo="+upstream, "--slot", fmt.Sprintf("slot-%d", i), "--agent-id", fmt.Sprintf("agent-%d", i),
			"--drain-timeout", "2s", "--http-addr", admin)
	}
	e2eEventually(t, e2eWait, "a connection moved to proxy-1", func() (bool, string) {
		conns, _, r := registryCounts(t, c)
		return conns["proxy-0"] == 1 && conns["proxy-1"] == 1, r.stdout + r.stderr
	})

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(addr, host string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	var missing []string
	e2eEventually(t, e2eWait, "every dashboard metric exported", func() (bool, string) {
		for _, d := range downstream {
			if code := get(d, "demo.localhost"); code != http.StatusOK {
				return false, fmt.Sprintf("GET demo via %s: %d", d, code)
			}
			get(d, "nosuch.localhost") // a Berth error: route_errors_total
		}
		exported := map[string]bool{}
		for _, addr := range scrape {
			fams, err := dataplanetest.Scrape(context.Background(), addr)
			if err != nil {
				return false, err.Error()
			}
			exportedNames(fams, exported)
		}
		missing = missingMetrics(exprs, exported)
		return len(missing) == 0, "missing:\n" + strings.Join(missing, "\n")
	})

	// Beyond names: each berthd bridges its own raft, and the leader's
	// targets cover both proxies' two connections.
	e2eEventually(t, e2eWait, "raft series on every berthd, targets on the leader", func() (bool, string) {
		targets := 0.0
		for _, node := range c.nodes {
			fams, err := dataplanetest.Scrape(context.Background(), node.httpAddr)
			if err != nil {
				return false, err.Error()
			}
			if m := dataplanetest.Find(fams, "berth_raft_fsm_apply_duration_seconds", nil); m.GetHistogram().GetSampleCount() == 0 {
				return false, node.id + ": no FSM apply observed"
			}
			if dataplanetest.Find(fams, "berth_cp_is_leader", nil).GetGauge().GetValue() == 1 {
				// raft sets its peers gauge when it leads.
				if m := dataplanetest.Find(fams, "berth_raft_peers", nil); m.GetGauge().GetValue() != 3 {
					return false, fmt.Sprintf("leader %s: berth_raft_peers %v", node.id, m)
				}
				for _, m := range fams["berth_cp_proxy_target_connections"].GetMetric() {
					targets += m.GetGauge().GetValue()
				}
			}
		}
		return targets == 2, fmt.Sprintf("leader's targets sum to %v, want 2", targets)
	})
	n := 0
	for _, list := range exprs {
		n += len(list)
	}
	t.Logf("%d dashboard queries in %d dashboards, every metric exported", n, len(exprs))
}
