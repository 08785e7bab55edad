package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/berthhq/berth/cmd/internal/buildinfo"
	"github.com/berthhq/berth/cmd/internal/conf"
	"github.com/berthhq/berth/cmd/internal/conftest"
)

func TestEveryFlagFromItsVariable(t *testing.T) {
	var env map[string]string
	d := conf.NewDaemon("berth-proxy", about, buildinfo.Info{}, io.Discard, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	})
	flags(d, func(string) string { return "" })
	// BERTH_CONFIG is read too: it must name a file.
	file := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(file, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conftest.CheckEveryFlagFromEnv(t, d.Help(), d.Flags(), map[string]string{"config": file}, func(e map[string]string) error {
		env = e
		return d.Parse(nil)
	})
}
