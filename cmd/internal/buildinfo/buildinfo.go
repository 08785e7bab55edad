// Package buildinfo says which build of Berth a binary is: the module
// version, the VCS revision and time the Go toolchain stamped into it, and
// the Go version. Release builds set Version (and Revision) at link time:
//
//	go build -ldflags "-X github.com/berthhq/berth/cmd/internal/buildinfo.Version=v1.2.0" ./cmd/...
//
// The same facts reach the binaries' metric registries as the
// berth_build_info gauge and berthctl version as a BuildInfo message.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Version and Revision override what the build info says when set with
// -ldflags -X. They are the package's only variables and only the linker
// writes them.
var (
	Version  string
	Revision string
)

// Info describes one build.
type Info struct {
	// Version is the module version ("v1.2.0"; "(devel)" for a build from
	// a checkout).
	Version string
	// Revision is the VCS commit, Time its commit time (RFC 3339), and
	// Modified says the tree had uncommitted changes; empty or false when
	// the toolchain stamped nothing (go run, -buildvcs=false).
	Revision string
	Time     string
	Modified bool
	// GoVersion is the toolchain that built the binary.
	GoVersion string
}

// Read returns this binary's build: the linker's Version and Revision if
// set, else what runtime/debug.ReadBuildInfo holds.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{GoVersion: runtime.Version()}
	}
	return fromBuildInfo(bi, Version, Revision)
}

func fromBuildInfo(bi *debug.BuildInfo, version, revision string) Info {
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	if version != "" {
		info.Version = version
	}
	if revision != "" {
		info.Revision = revision
	}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	if info.GoVersion == "" {
		info.GoVersion = runtime.Version()
	}
	return info
}

// String is the one line --version prints after the binary's name:
// "v1.2.0 (revision 0123abcd, 2026-12-07T14:00:00Z, modified) go1.26.8".
func (i Info) String() string {
	var parts []string
	if i.Revision != "" {
		parts = append(parts, "revision "+i.Revision)
	}
	if i.Time != "" {
		parts = append(parts, i.Time)
	}
	if i.Modified {
		parts = append(parts, "modified")
	}
	s := i.Version
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s + " " + i.GoVersion
}

// Proto is i as the control plane reports it.
func (i Info) Proto() *berthv1.BuildInfo {
	return &berthv1.BuildInfo{Version: i.Version, Revision: i.Revision, Time: i.Time, Modified: i.Modified, GoVersion: i.GoVersion}
}

// FromProto is the inverse of Proto; nil (a server too old to say) is the
// zero Info.
func FromProto(p *berthv1.BuildInfo) Info {
	return Info{Version: p.GetVersion(), Revision: p.GetRevision(), Time: p.GetTime(), Modified: p.GetModified(), GoVersion: p.GetGoVersion()}
}

// Collector is the berth_build_info gauge: always 1, the build in its
// labels, as Prometheus' own *_build_info metrics.
func (i Info) Collector() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "berth",
		Name:      "build_info",
		Help:      "1, labelled with the build of this binary.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(i.Version, i.Revision, i.GoVersion).Set(1)
	return g
}

// Register adds the berth_build_info gauge to reg (the agent's registry,
// or any program's).
func (i Info) Register(reg prometheus.Registerer) error {
	if err := reg.Register(i.Collector()); err != nil {
		return fmt.Errorf("build info metric: %w", err)
	}
	return nil
}
