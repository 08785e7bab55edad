package discovery

import (
	"context"
	"fmt"
	"slices"
)

// Static discovers a fixed list of addresses.
type Static struct {
	addrs []string // normalised, sorted, de-duplicated, without self
}

func newStatic(cfg StaticConfig, self string) (*Static, error) {
	addrs, err := normalizeList(cfg.Addrs)
	if err != nil {
		return nil, fmt.Errorf("static: %w", err)
	}
	return &Static{addrs: finish(addrs, self)}, nil
}

// Discover returns the configured addresses other than self.
func (s *Static) Discover(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return slices.Clone(s.addrs), nil
}

// Close does nothing; it exists so every Discoverer from New can be closed.
func (s *Static) Close() error { return nil }
