package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// The chart test renders deploy/helm/berth with helm, pinned in
// tools/go.mod and run through `go tool -modfile`, and checks the objects
// against each other and against the real binaries: every flag a container
// passes is parsed by the binary it runs.

// k8sObject is the part of a rendered Kubernetes object the test reads.
// Selectors differ by kind (a map on a Service, matchLabels elsewhere), so
// spec stays a node and is decoded per kind.
type k8sObject struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec yaml.Node `yaml:"spec"`
}

type k8sWorkload struct {
	Replicas            int    `yaml:"replicas"`
	ServiceName         string `yaml:"serviceName"`
	PodManagementPolicy string `yaml:"podManagementPolicy"`
	Selector            struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	Template struct {
		Metadata struct {
			Labels map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
		Spec struct {
			Containers []k8sContainer `yaml:"containers"`
			Volumes    []struct {
				Name   string `yaml:"name"`
				Secret *struct {
					SecretName string `yaml:"secretName"`
				} `yaml:"secret"`
			} `yaml:"volumes"`
		} `yaml:"spec"`
	} `yaml:"template"`
	VolumeClaimTemplates []struct {
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
	} `yaml:"volumeClaimTemplates"`
}

type k8sContainer struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	VolumeMounts   []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
	} `yaml:"resources"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sService struct {
	ClusterIP                string            `yaml:"clusterIP"`
	PublishNotReadyAddresses bool              `yaml:"publishNotReadyAddresses"`
	Selector                 map[string]string `yaml:"selector"`
	Ports                    []struct {
		Name       string `yaml:"name"`
		Port       int    `yaml:"port"`
		TargetPort string `yaml:"targetPort"`
	} `yaml:"ports"`
}

type k8sPDB struct {
	MinAvailable int `yaml:"minAvailable"`
	Selector     struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
}

// rendered is one `helm template` output, indexed by kind and name.
type rendered struct {
	objects map[string]map[string]k8sObject
}

func (r rendered) names(kind string) []string {
	var out []string
	for name := range r.objects[kind] {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func (r rendered) get(t *testing.T, kind, name string, into any) {
	t.Helper()
	o, ok := r.objects[kind][name]
	if !ok {
		t.Fatalf("no %s %q rendered (have %v)", kind, name, r.names(kind))
	}
	if err := o.Spec.Decode(into); err != nil {
		t.Fatalf("%s %s: spec: %v", kind, name, err)
	}
}

// helmEnv is what the chart test needs: the repository root, the built
// binaries, and a way to run helm.
type helmEnv struct {
	root string
	bin  string
}

func (h helmEnv) helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"tool", "-modfile=" + filepath.Join(h.root, "tools", "go.mod"), "helm"}, args...)...)
	cmd.Dir = h.root
	cmd.Env = e2eEnv("HELM_CACHE_HOME="+filepath.Join(h.bin, "helm-cache"), "HELM_CONFIG_HOME="+filepath.Join(h.bin, "helm-config"), "HELM_DATA_HOME="+filepath.Join(h.bin, "helm-data"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out, nil
}

func newHelmEnv(t *testing.T) helmEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root := moduleRoot(t)
	h := helmEnv{root: root, bin: t.TempDir()}

	// Building helm the first time takes minutes; go caches it after.
	began := time.Now()
	build := exec.CommandContext(ctx, "go", "build", "-modfile="+filepath.Join(h.root, "tools", "go.mod"), "-o", os.DevNull, "helm.sh/helm/v4/cmd/helm")
	build.Dir = h.root
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("helm (pinned in tools/go.mod) cannot be built here, so the chart is not checked: %v\n%s", err, out)
	}
	t.Logf("helm built (or cached) in %s", time.Since(began).Round(time.Millisecond))

	cmd := exec.CommandContext(ctx, "go", "build", "-o", h.bin+string(filepath.Separator), "./cmd/berthd", "./cmd/berth-proxy", "./cmd/berth-agent")
	cmd.Dir = h.root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return h
}

// render lints the chart and renders it with release name "berth" in
// namespace "edge" and the given --set values.
func (h helmEnv) render(t *testing.T, set ...string) rendered {
	t.Helper()
	chart := filepath.Join(h.root, "deploy", "helm", "berth")
	var args []string
	for _, s := range set {
		args = append(args, "--set", s)
	}
	if out, err := h.helm(t, append([]string{"lint", "--strict", chart}, args...)...); err != nil {
		t.Fatalf("%v", err)
	} else if !bytes.Contains(out, []byte("0 chart(s) failed")) {
		t.Fatalf("helm lint did not pass:\n%s", out)
	}
	out, err := h.helm(t, append([]string{"template", "berth", chart, "--namespace", "edge"}, args...)...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	r := rendered{objects: make(map[string]map[string]k8sObject)}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, out)
		}
		if o.Kind == "" {
			continue
		}
		if r.objects[o.Kind] == nil {
			r.objects[o.Kind] = make(map[string]k8sObject)
		}
		if _, dup := r.objects[o.Kind][o.Metadata.Name]; dup {
			t.Fatalf("%s %s rendered twice", o.Kind, o.Metadata.Name)
		}
		r.objects[o.Kind][o.Metadata.Name] = o
	}
	return r
}

// flagValue is the value of --name=value in args ("" and false if absent);
// a bare --name is "true".
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if a == "--"+name {
			return "true", true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// expandArgs resolves $(VAR) in args the way the kubelet does, from the
// container's env: fieldRef variables get the sample value. A reference to
// a variable the container does not define is an error (the kubelet would
// pass it through literally).
func expandArgs(c k8sContainer) ([]string, error) {
	samples := map[string]string{"metadata.name": "berth-berthd-0", "status.podIP": "10.1.2.3"}
	vars := make(map[string]string)
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil:
			v, ok := samples[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				return nil, fmt.Errorf("env %s: no sample for fieldRef %q", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			vars[e.Name] = v
		default:
			vars[e.Name] = e.Value
		}
	}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	out := make([]string, len(c.Args))
	var errs []error
	for i, a := range c.Args {
		out[i] = ref.ReplaceAllStringFunc(a, func(m string) string {
			name := m[2 : len(m)-1]
			v, ok := vars[name]
			if !ok {
				errs = append(errs, fmt.Errorf("arg %q: $(%s) is not in the container's env", a, name))
			}
			return v
		})
	}
	return out, errors.Join(errs...)
}

// checkFlags runs binary with args and --help last: the binary parses every
// flag (names and value types) before it sees --help, so an unknown flag
// or a bad value prints "<binary>: <error>" instead of only the usage.
func (h helmEnv) checkFlags(binary string, args []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(h.bin, binary), append(slices.Clone(args), "--help")...)
	cmd.Env = e2eEnv()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return fmt.Errorf("%s: %w", binary, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, binary+":") || strings.HasPrefix(line, "Error:") {
			return fmt.Errorf("%s rejects the chart's args %q: %s", binary, args, line)
		}
	}
	if !strings.Contains(string(out), "--log-level") {
		return fmt.Errorf("%s %q --help printed no usage:\n%s", binary, args, out)
	}
	return nil
}

// binaryOf names the binary a chart image runs (the Dockerfile's targets).
func binaryOf(t *testing.T, image string) string {
	t.Helper()
	repo, _, _ := strings.Cut(image, ":")
	for _, b := range []string{"berthd", "berth-proxy", "berth-agent"} {
		if strings.HasSuffix(repo, "/"+b) {
			return b
		}
	}
	t.Fatalf("image %q runs none of the binaries", image)
	return ""
}

// containerPort is the number of the named port of c.
func containerPort(t *testing.T, c k8sContainer, name string) int {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port %q", c.Name, name)
	return 0
}

// listenPort is the port of the address flag name passes.
func listenPort(t *testing.T, c k8sContainer, name string) int {
	t.Helper()
	v, ok := flagValue(c.Args, name)
	if !ok {
		t.Fatalf("container %s: no --%s", c.Name, name)
	}
	i := strings.LastIndex(v, ":")
	port, err := strconv.Atoi(v[i+1:])
	if i < 0 || err != nil {
		t.Fatalf("container %s: --%s=%s is not host:port", c.Name, name, v)
	}
	return port
}

// checkWorkload checks what every pod of the chart must get right: the
// selector selects the template, each container's flags parse in its
// binary, its named ports are the ports its listen flags give, and its
// probes hit a port it has.
func (h helmEnv) checkWorkload(t *testing.T, kind, name string, w k8sWorkload, listens map[string]string) {
	t.Helper()
	if len(w.Selector.MatchLabels) == 0 {
		t.Errorf("%s %s: empty selector", kind, name)
	}
	for k, v := range w.Selector.MatchLabels {
		if w.Template.Metadata.Labels[k] != v {
			t.Errorf("%s %s: selector %s=%s does not match the pod template's labels %v", kind, name, k, v, w.Template.Metadata.Labels)
		}
	}
	for _, c := range w.Template.Spec.Containers {
		args, err := expandArgs(c)
		if err != nil {
			t.Errorf("%s %s container %s: %v", kind, name, c.Name, err)
			continue
		}
		if err := h.checkFlags(binaryOf(t, c.Image), args); err != nil {
			t.Errorf("%s %s container %s: %v", kind, name, c.Name, err)
		}
		if len(c.Resources.Requests) == 0 {
			t.Errorf("%s %s container %s: no resource requests", kind, name, c.Name)
		}
		for _, p := range c.Ports {
			flag, ok := listens[p.Name]
			if !ok {
				t.Errorf("%s %s container %s: port %q has no listen flag to check", kind, name, c.Name, p.Name)
				continue
			}
			if got := listenPort(t, c, flag); got != p.ContainerPort {
				t.Errorf("%s %s container %s: port %s is %d but --%s listens on %d", kind, name, c.Name, p.Name, p.ContainerPort, flag, got)
			}
		}
		for _, pr := range []*k8sProbe{c.ReadinessProbe, c.LivenessProbe} {
			if pr != nil {
				containerPort(t, c, pr.HTTPGet.Port)
			}
		}
	}
}

// checkService checks that svc selects the pods of w and that each of its
// ports targets a named port a container of those pods has.
func checkService(t *testing.T, name string, svc k8sService, w k8sWorkload) {
	t.Helper()
	if len(svc.Selector) == 0 {
		t.Errorf("Service %s: empty selector", name)
	}
	for k, v := range svc.Selector {
		if w.Template.Metadata.Labels[k] != v {
			t.Errorf("Service %s: selector %s=%s does not match the pods' labels %v", name, k, v, w.Template.Metadata.Labels)
		}
	}
	for _, p := range svc.Ports {
		found := false
		for _, c := range w.Template.Spec.Containers {
			for _, cp := range c.Ports {
				found = found || cp.Name == p.TargetPort
			}
		}
		if !found {
			t.Errorf("Service %s: port %s targets %q, which no container has", name, p.Name, p.TargetPort)
		}
	}
}

// checkTLSMounts checks that each --tls-*/--agent-keys/--token-file path a
// container passes lies under a mount of a Secret volume, and returns the
// Secrets mounted.
func checkTLSMounts(t *testing.T, name string, w k8sWorkload) []string {
	t.Helper()
	secretOf := make(map[string]string)
	for _, v := range w.Template.Spec.Volumes {
		if v.Secret != nil {
			secretOf[v.Name] = v.Secret.SecretName
		}
	}
	var secrets []string
	for _, c := range w.Template.Spec.Containers {
		for _, a := range c.Args {
			flag, path, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !ok || !(strings.HasPrefix(flag, "tls-ca") || strings.HasPrefix(flag, "tls-cert") || strings.HasPrefix(flag, "tls-key") || flag == "agent-keys" || flag == "token-file" || flag == "admin-bootstrap-token-file") {
				continue
			}
			mounted := false
			for _, m := range c.VolumeMounts {
				if s, isSecret := secretOf[m.Name]; isSecret && (path == m.MountPath || strings.HasPrefix(path, m.MountPath+"/")) {
					mounted = true
					secrets = append(secrets, s)
				}
			}
			if !mounted {
				t.Errorf("%s container %s: --%s=%s is not under a mounted Secret", name, c.Name, flag, path)
			}
		}
	}
	slices.Sort(secrets)
	return slices.Compact(secrets)
}

func TestHelmChart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds helm and three binaries; skipped with -short")
	}
	h := newHelmEnv(t)

	t.Run("flag check fails on a bad flag", func(t *testing.T) {
		// The checks below are only as good as checkFlags: it must refuse
		// an unknown flag and a bad value in every binary.
		for _, c := range []struct {
			binary string
			args   []string
		}{
			{"berthd", []string{"--id=a", "--no-such-flag=1"}},
			{"berthd", []string{"--bootstrap-expect=three"}},
			{"berth-proxy", []string{"--id=a", "--no-such-flag"}},
			{"berth-agent", []string{"serve", "--no-such-flag"}},
		} {
			if err := h.checkFlags(c.binary, c.args); err == nil {
				t.Errorf("%s %q: accepted", c.binary, c.args)
			}
		}
		if err := h.checkFlags("berthd", []string{"--id=a", "--bootstrap-expect=3"}); err != nil {
			t.Errorf("good flags refused: %v", err)
		}
	})

	const (
		sts      = "berth-berthd"
		peers    = "berth-berthd-peers"
		domain   = peers + ".edge.svc.cluster.local"
		proxy    = "berth-proxy"
		tunnel   = "berth-proxy-tunnel"
		agentDep = "berth-agent"
	)
	berthdListens := map[string]string{"grpc": "grpc-addr", "raft": "raft-addr", "http": "http-addr"}
	proxyListens := map[string]string{"downstream": "downstream-addr", "tunnel": "tunnel-addr", "peer": "peer-addr", "http": "http-addr"}

	for _, tc := range []struct {
		name     string
		set      []string
		replicas int
		tls      bool
		agent    bool
	}{
		{name: "defaults", replicas: 3},
		{name: "tls, admin auth and the agent example", set: []string{"tls.enabled=true", "agent.enabled=true", "berthd.adminAuth.enabled=true", "berthd.adminAuth.bootstrapTokenSecret=boot"}, replicas: 3, tls: true, agent: true},
		{name: "five nodes, plaintext agent", set: []string{"berthd.replicas=5", "agent.enabled=true", "proxy.zone=eu-a"}, replicas: 5, agent: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.render(t, tc.set...)

			wantDeployments := []string{proxy}
			if tc.agent {
				wantDeployments = []string{agentDep, proxy}
			}
			if got := r.names("Deployment"); !slices.Equal(got, wantDeployments) {
				t.Errorf("Deployments %v, want %v", got, wantDeployments)
			}
			if got, want := r.names("Service"), []string{sts, peers, proxy, tunnel}; !slices.Equal(got, want) {
				t.Errorf("Services %v, want %v", got, want)
			}

			var cp k8sWorkload
			r.get(t, "StatefulSet", sts, &cp)
			if cp.Replicas != tc.replicas || cp.ServiceName != peers || cp.PodManagementPolicy != "Parallel" {
				t.Errorf("StatefulSet: replicas %d serviceName %q podManagementPolicy %q, want %d %q Parallel", cp.Replicas, cp.ServiceName, cp.PodManagementPolicy, tc.replicas, peers)
			}
			if len(cp.VolumeClaimTemplates) != 1 {
				t.Errorf("StatefulSet: %d volume claim templates, want one PVC per node", len(cp.VolumeClaimTemplates))
			}
			h.checkWorkload(t, "StatefulSet", sts, cp, berthdListens)
			c := cp.Template.Spec.Containers[0]
			if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || containerPort(t, c, c.ReadinessProbe.HTTPGet.Port) != listenPort(t, c, "http-addr") {
				t.Errorf("berthd readiness probe %+v: want /readyz on --http-addr", c.ReadinessProbe)
			}
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("berthd liveness probe %+v: want /healthz", c.LivenessProbe)
			}
			want := map[string]string{
				"bootstrap-expect":   strconv.Itoa(tc.replicas),
				"discovery":          "dns",
				"discovery-dns-srv":  "true",
				"discovery-dns-name": "_grpc._tcp." + domain,
				"id":                 "$(POD_NAME)",
				"grpc-advertise":     "$(POD_NAME)." + domain + ":7000",
				"raft-advertise":     "$(POD_NAME)." + domain + ":7001",
			}
			for flag, v := range want {
				if got, _ := flagValue(c.Args, flag); got != v {
					t.Errorf("berthd --%s=%q, want %q", flag, got, v)
				}
			}
			if _, insecure := flagValue(c.Args, "insecure"); insecure == tc.tls {
				t.Errorf("berthd --insecure passed: %v, with tls %v", insecure, tc.tls)
			}
			// SRV records of a headless Service are named after its
			// ports: _grpc._tcp.<service> needs a port named grpc.
			var hl k8sService
			r.get(t, "Service", peers, &hl)
			if hl.ClusterIP != "None" || !hl.PublishNotReadyAddresses {
				t.Errorf("Service %s: clusterIP %q publishNotReadyAddresses %v, want headless and publishing not-ready pods", peers, hl.ClusterIP, hl.PublishNotReadyAddresses)
			}
			if !slices.ContainsFunc(hl.Ports, func(p struct {
				Name       string `yaml:"name"`
				Port       int    `yaml:"port"`
				TargetPort string `yaml:"targetPort"`
			}) bool {
				return p.Name == "grpc" && p.Port == listenPort(t, c, "grpc-addr")
			}) {
				t.Errorf("Service %s: no port grpc on %d for the SRV records", peers, listenPort(t, c, "grpc-addr"))
			}
			checkService(t, peers, hl, cp)
			var client k8sService
			r.get(t, "Service", sts, &client)
			checkService(t, sts, client, cp)

			var pdb k8sPDB
			r.get(t, "PodDisruptionBudget", sts, &pdb)
			if pdb.MinAvailable != tc.replicas/2+1 {
				t.Errorf("PodDisruptionBudget minAvailable %d, want a quorum of %d: %d", pdb.MinAvailable, tc.replicas, tc.replicas/2+1)
			}
			for k, v := range pdb.Selector.MatchLabels {
				if cp.Template.Metadata.Labels[k] != v {
					t.Errorf("PodDisruptionBudget selector %s=%s does not select berthd pods", k, v)
				}
			}

			var px k8sWorkload
			r.get(t, "Deployment", proxy, &px)
			if px.Replicas != 2 {
				t.Errorf("proxy replicas %d, want 2", px.Replicas)
			}
			h.checkWorkload(t, "Deployment", proxy, px, proxyListens)
			pc := px.Template.Spec.Containers[0]
			if pc.ReadinessProbe == nil || pc.ReadinessProbe.HTTPGet.Path != "/readyz" || containerPort(t, pc, pc.ReadinessProbe.HTTPGet.Port) != listenPort(t, pc, "http-addr") {
				t.Errorf("proxy readiness probe %+v: want /readyz on --http-addr", pc.ReadinessProbe)
			}
			var cpAddrs []string
			for i := range tc.replicas {
				cpAddrs = append(cpAddrs, fmt.Sprintf("%s-%d.%s:7000", sts, i, domain))
			}
			if got, _ := flagValue(pc.Args, "addr"); got != strings.Join(cpAddrs, ",") {
				t.Errorf("proxy --addr=%s, want every berthd node: %s", got, strings.Join(cpAddrs, ","))
			}
			if _, insecure := flagValue(pc.Args, "insecure"); insecure == tc.tls {
				t.Errorf("proxy --insecure passed: %v, with tls %v", insecure, tc.tls)
			}
			for _, svc := range []string{proxy, tunnel} {
				var s k8sService
				r.get(t, "Service", svc, &s)
				checkService(t, svc, s, px)
			}

			var ag k8sWorkload
			if tc.agent {
				r.get(t, "Deployment", agentDep, &ag)
				h.checkWorkload(t, "Deployment", agentDep, ag, map[string]string{"http": "http-addr"})
				var upstream, serve k8sContainer
				for _, c := range ag.Template.Spec.Containers {
					switch {
					case len(c.Args) > 0 && c.Args[0] == "demo-upstream":
						upstream = c
					case len(c.Args) > 0 && c.Args[0] == "serve":
						serve = c
					}
				}
				listen, _ := flagValue(upstream.Args, "listen")
				if got, _ := flagValue(serve.Args, "endpoint"); got != "demo="+listen {
					t.Errorf("agent --endpoint=%s, want demo=<the demo upstream's --listen %s>", got, listen)
				}
				if got, _ := flagValue(serve.Args, "proxy"); got != fmt.Sprintf("%s.edge.svc.cluster.local:%d", tunnel, containerPort(t, pc, "tunnel")) {
					t.Errorf("agent --proxy=%s, want the tunnel Service on the proxies' tunnel port", got)
				}
			}

			if tc.tls {
				if got, want := checkTLSMounts(t, sts, cp), []string{"berth-berthd-tls", "boot"}; !slices.Equal(got, want) {
					t.Errorf("berthd mounts Secrets %v, want %v", got, want)
				}
				if got, want := checkTLSMounts(t, proxy, px), []string{"berth-agent-keys", "berth-proxy-tls"}; !slices.Equal(got, want) {
					t.Errorf("proxy mounts Secrets %v, want %v", got, want)
				}
				if got, want := checkTLSMounts(t, agentDep, ag), []string{"berth-agent-token"}; !slices.Equal(got, want) {
					t.Errorf("agent mounts Secrets %v, want %v", got, want)
				}
				for _, flag := range []string{"tls-ca", "tls-cert", "tls-key"} {
					if _, ok := flagValue(c.Args, flag); !ok {
						t.Errorf("berthd: no --%s with tls", flag)
					}
					if _, ok := flagValue(pc.Args, flag); !ok {
						t.Errorf("proxy: no --%s with tls", flag)
					}
				}
			}
		})
	}

	t.Run("bad values fail to render", func(t *testing.T) {
		chart := filepath.Join(h.root, "deploy", "helm", "berth")
		for _, set := range []string{"berthd.replicas=0", "berthd.adminAuth.enabled=true"} {
			if out, err := h.helm(t, "template", "berth", chart, "--set", set); err == nil {
				t.Errorf("--set %s rendered:\n%s", set, out)
			}
		}
	})
}
