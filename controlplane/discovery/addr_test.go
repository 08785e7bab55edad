package discovery

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestNormalizeAddr(t *testing.T) {
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "10.0.0.1:7000", want: "10.0.0.1:7000"},
		{in: "Node-1.Example.COM.:7000", want: "node-1.example.com:7000"},
		{in: "berth-0.berth.ns.svc.cluster.local:07000", want: "berth-0.berth.ns.svc.cluster.local:7000"},
		{in: "[::1]:7000", want: "[::1]:7000"},
		{in: "[0:0::1]:7000", want: "[::1]:7000"},
		{in: "[::ffff:10.0.0.1]:7000", want: "10.0.0.1:7000"},
		{in: "[fe80::1%eth0]:7000", want: "[fe80::1%eth0]:7000"},
		{in: "_grpc.example:1", want: "_grpc.example:1"},
		{in: "localhost:65535", want: "localhost:65535"},
		{in: "10.0.0.1", bad: true},
		{in: "10.0.0.1:", bad: true},
		{in: ":7000", bad: true},
		{in: "host:0", bad: true},
		{in: "host:65536", bad: true},
		{in: "host:-1", bad: true},
		{in: "host:+80", bad: true},
		{in: "host:http", bad: true},
		{in: "::1:7000", bad: true},
		{in: "a..b:1", bad: true},
		{in: "-a:1", bad: true},
		{in: "a b:1", bad: true},
		{in: "a/b:1", bad: true},
		{in: "", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := normalizeAddr(tt.in)
			if tt.bad {
				if !errors.Is(err, ErrInvalidAddress) {
					t.Fatalf("normalizeAddr(%q) = %q, %v; want ErrInvalidAddress", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("normalizeAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestSplitList(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{" ", nil},
		{"a:1", []string{"a:1"}},
		{"a:1,b:2", []string{"a:1", "b:2"}},
		{" a:1 , b:2 ,", []string{"a:1", "b:2"}},
		{",,a:1,,", []string{"a:1"}},
		{"[::1]:1,[::2]:2", []string{"[::1]:1", "[::2]:2"}},
	}
	for _, tt := range tests {
		if got := splitList(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("splitList(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFinish(t *testing.T) {
	got := finish([]string{"b:1", "a:1", "self:1", "b:1", "a:1"}, "self:1")
	if want := []string{"a:1", "b:1"}; !slices.Equal(got, want) {
		t.Fatalf("finish = %q, want %q", got, want)
	}
	if got := finish(nil, ""); got == nil || len(got) != 0 {
		t.Fatalf("finish(nil) = %#v, want empty non-nil", got)
	}
}

// FuzzNormalizeAddr checks that normalisation never panics, that its output
// is a fixed point, and that bad input is always ErrInvalidAddress.
func FuzzNormalizeAddr(f *testing.F) {
	for _, s := range []string{"10.0.0.1:7000", "[::1]:1", "Host.:080", "a..b:1", "[fe80::1%eth0]:7", "x:0", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := normalizeAddr(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidAddress) {
				t.Fatalf("normalizeAddr(%q): error %v is not ErrInvalidAddress", s, err)
			}
			return
		}
		again, err := normalizeAddr(n)
		if err != nil || again != n {
			t.Fatalf("normalizeAddr(%q) = %q, which normalises to %q, %v", s, n, again, err)
		}
	})
}

// FuzzListFlag checks that a comma-separated flag value survives
// String/Set round trips and that every entry is trimmed and non-empty.
func FuzzListFlag(f *testing.F) {
	for _, s := range []string{"", "a:1", " a:1 , b:2 ,", ",,,", "a:1,,b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var l listValue
		if err := l.Set(s); err != nil {
			t.Fatal(err)
		}
		for _, e := range l {
			if e == "" || e != strings.TrimSpace(e) || strings.Contains(e, ",") {
				t.Fatalf("Set(%q) produced entry %q", s, e)
			}
		}
		var l2 listValue
		if err := l2.Set(l.String()); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(l, l2) {
			t.Fatalf("Set(%q) = %q, but Set(String()) = %q", s, l, l2)
		}
	})
}

// FuzzDecodeMeta feeds arbitrary node meta, which comes from any gossip
// member, and checks that accepted addresses are normalised and round-trip.
func FuzzDecodeMeta(f *testing.F) {
	f.Add(encodeMeta("10.0.0.1:7000"))
	f.Add([]byte{})
	f.Add([]byte{metaVersion})
	f.Add([]byte{2, 'a', ':', '1'})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := decodeMeta(b)
		if !ok {
			return
		}
		if n, err := normalizeAddr(a); err != nil || n != a {
			t.Fatalf("decodeMeta(%q) = %q, not normalised (%q, %v)", b, a, n, err)
		}
		if back, ok := decodeMeta(encodeMeta(a)); !ok || back != a {
			t.Fatalf("round trip of %q gave %q, %v", a, back, ok)
		}
	})
}

func TestListValueFlag(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	var l []string
	fs.Var((*listValue)(&l), "l", "")
	if err := fs.Parse([]string{"--l", "a:1,b:2", "--l", "c:3"}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"c:3"}; !slices.Equal(l, want) {
		t.Fatalf("repeated flag = %q, want last value %q", l, want)
	}
}
