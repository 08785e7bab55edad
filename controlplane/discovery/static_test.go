package discovery

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"
)

func TestStatic(t *testing.T) {
	tests := []struct {
		name  string
		addrs []string
		self  string
		want  []string
	}{
		{name: "empty", want: []string{}},
		{name: "sorted and deduplicated", addrs: []string{"c:3", "a:1", "b:2", "a:1", "A.:01"}, want: []string{"a:1", "b:2", "c:3"}},
		{name: "self removed", addrs: []string{"a:1", "b:2", "c:3"}, self: "b:2", want: []string{"a:1", "c:3"}},
		{name: "self spelled differently", addrs: []string{"[0::1]:7000", "10.0.0.2:7000"}, self: "[::1]:07000", want: []string{"10.0.0.2:7000"}},
		{name: "only self", addrs: []string{"a:1"}, self: "a:1", want: []string{}},
		{name: "no self", addrs: []string{"a:1"}, want: []string{"a:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Default()
			cfg.Static.Addrs = tt.addrs
			d, err := New(cfg, tt.self, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Discover(context.Background())
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("Discover() = %q, %v; want %q", got, err, tt.want)
			}
			// Callers own the slice.
			if len(got) > 0 {
				got[0] = "x:1"
				if again, _ := d.Discover(context.Background()); again[0] == "x:1" {
					t.Fatal("Discover returned shared state")
				}
			}
			if err := d.(io.Closer).Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	cfg := Default()
	cfg.Static.Addrs = []string{"a"}
	if _, err := New(cfg, "", nil); !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("bad entry: %v, want ErrInvalidAddress", err)
	}
	if _, err := New(Default(), "nope", nil); !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("bad self: %v, want ErrInvalidAddress", err)
	}
}

func TestStaticCanceled(t *testing.T) {
	d, err := New(Default(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Discover(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Discover(canceled) = %v", err)
	}
}
