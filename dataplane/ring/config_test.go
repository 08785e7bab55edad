package ring

import (
	"github.com/spf13/pflag"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", Default(), true},
		{"one entry", Config{MinRingSize: 1, MaxRingSize: 1}, true},
		{"limit", Config{MinRingSize: MaxRingSizeLimit, MaxRingSize: MaxRingSizeLimit}, true},
		{"zero", Config{}, false},
		{"zero min", Config{MaxRingSize: 10}, false},
		{"negative max", Config{MinRingSize: 1, MaxRingSize: -1}, false},
		{"min above max", Config{MinRingSize: 20, MaxRingSize: 10}, false},
		{"max above limit", Config{MinRingSize: 1, MaxRingSize: MaxRingSizeLimit + 1}, false},
		{"min above limit", Config{MinRingSize: MaxRingSizeLimit + 1, MaxRingSize: MaxRingSizeLimit + 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestConfigDefault(t *testing.T) {
	if got := Default(); got.MinRingSize != 1024 || got.MaxRingSize != 8192 {
		t.Errorf("Default() = %+v, want gRPC's 1024 / 8192", got)
	}
}

func TestConfigFlags(t *testing.T) {
	cfg := Default()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"--ring-min-size=64", "--ring-max-size=512"}); err != nil {
		t.Fatal(err)
	}
	if cfg.MinRingSize != 64 || cfg.MaxRingSize != 512 {
		t.Errorf("after flags: %+v", cfg)
	}
}
