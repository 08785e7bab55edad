package buildinfo

import (
	"runtime/debug"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestFromBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/berthhq/berth", Version: "v1.2.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123abcd"},
			{Key: "vcs.time", Value: "2026-12-07T14:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name              string
		bi                *debug.BuildInfo
		version, revision string // the linker's
		want              Info
		line              string
	}{
		{"stamped", stamped, "", "", Info{Version: "v1.2.0", Revision: "0123abcd", Time: "2026-12-07T14:00:00Z", Modified: true, GoVersion: "go1.26.8"},
			"v1.2.0 (revision 0123abcd, 2026-12-07T14:00:00Z, modified) go1.26.8"},
		{"linker wins", stamped, "v9.9.9", "feedface", Info{Version: "v9.9.9", Revision: "feedface", Time: "2026-12-07T14:00:00Z", Modified: true, GoVersion: "go1.26.8"},
			"v9.9.9 (revision feedface, 2026-12-07T14:00:00Z, modified) go1.26.8"},
		{"bare", &debug.BuildInfo{GoVersion: "go1.26.8"}, "", "", Info{Version: "(devel)", GoVersion: "go1.26.8"}, "(devel) go1.26.8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := fromBuildInfo(tt.bi, tt.version, tt.revision)
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if got.String() != tt.line {
				t.Errorf("String() = %q, want %q", got.String(), tt.line)
			}
			if back := FromProto(got.Proto()); back != got {
				t.Errorf("proto round trip: %+v, want %+v", back, got)
			}
		})
	}
}

func TestRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	info := Info{Version: "v1.2.0", Revision: "0123abcd", GoVersion: "go1.26.8"}
	if err := info.Register(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "berth_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v, want one berth_build_info series", mfs)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != "v1.2.0" || labels["revision"] != "0123abcd" || labels["goversion"] != "go1.26.8" || len(labels) != 3 {
		t.Errorf("labels %v", labels)
	}
	if m.GetGauge().GetValue() != 1 {
		t.Errorf("value %v, want 1", m.GetGauge().GetValue())
	}
	// A second registration is an error, not a panic.
	if err := info.Register(reg); err == nil {
		t.Fatal("registering twice succeeded")
	}
}
