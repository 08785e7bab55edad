package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// normalizeAddr checks that s is host:port and returns its canonical form:
// IP literals in netip's textual form, host names lower-cased without a
// trailing dot, the port in decimal without leading zeros. Two spellings of
// the same address normalise to the same string, which is what lets a node
// recognise itself in a list.
func normalizeAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("address %q: %v: %w", s, stripAddrErr(err), ErrInvalidAddress)
	}
	p, err := parsePort(port)
	if err != nil || p == 0 {
		return "", fmt.Errorf("address %q: port must be 1-65535: %w", s, ErrInvalidAddress)
	}
	h, err := normalizeHost(host)
	if err != nil {
		return "", fmt.Errorf("address %q: %v: %w", s, err, ErrInvalidAddress)
	}
	return net.JoinHostPort(h, strconv.Itoa(int(p))), nil
}

// stripAddrErr drops the address that net.SplitHostPort repeats in its error,
// since normalizeAddr already quotes it.
func stripAddrErr(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("invalid port %q", s)
		}
	}
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return uint16(p), nil
}

// normalizeHost accepts an IP literal (zones allowed) or a DNS host name.
func normalizeHost(h string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("missing host")
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap().String(), nil
	}
	name := strings.ToLower(strings.TrimSuffix(h, "."))
	if name == "" || len(name) > 253 {
		return "", fmt.Errorf("invalid host %q", h)
	}
	for label := range strings.SplitSeq(name, ".") {
		if !validLabel(label) {
			return "", fmt.Errorf("invalid host %q", h)
		}
	}
	return name, nil
}

// validLabel accepts letters, digits, '-' and '_' (SRV-style labels), 1-63
// bytes, not starting or ending with '-'.
func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// splitList parses a comma-separated flag value. Blanks around entries and
// empty entries (a trailing comma) are dropped; entries are not validated
// here so that Validate can report them all in one place.
func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// normalizeList normalises every entry, reporting the first bad one with its
// position.
func normalizeList(addrs []string) ([]string, error) {
	out := make([]string, 0, len(addrs))
	for i, a := range addrs {
		n, err := normalizeAddr(a)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i+1, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// finish turns raw answers into the Discover contract: sorted, de-duplicated,
// without self. Entries are assumed normalised.
func finish(addrs []string, self string) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if a != self {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
