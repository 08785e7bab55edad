package ring

import (
	"errors"
	"fmt"
	"github.com/spf13/pflag"
)

// Ring sizes, as in gRPC's ring_hash (gRFC A42).
const (
	DefaultMinRingSize = 1024
	DefaultMaxRingSize = 8192
	// MaxRingSizeLimit bounds both sizes, like grpc-go's cap, so a config
	// value cannot make a proxy allocate without bound.
	MaxRingSizeLimit = 8 * 1024 * 1024
)

// Config sizes the ring. New sizes a ring so that the lightest target gets
// about MinRingSize times its share of the weight in entries, but never more
// than MaxRingSize entries in all. More entries spread keys more evenly, and
// cost memory and a little time in New (Pick is a binary search).
type Config struct {
	MinRingSize int
	MaxRingSize int
}

// Default returns gRPC's defaults: 1024 and 8192.
func Default() Config {
	return Config{MinRingSize: DefaultMinRingSize, MaxRingSize: DefaultMaxRingSize}
}

// Validate checks that 1 <= MinRingSize <= MaxRingSize <= MaxRingSizeLimit.
func (c Config) Validate() error {
	if c.MinRingSize < 1 || c.MinRingSize > MaxRingSizeLimit {
		return fmt.Errorf("min ring size must be 1-%d, got %d", MaxRingSizeLimit, c.MinRingSize)
	}
	if c.MaxRingSize < 1 || c.MaxRingSize > MaxRingSizeLimit {
		return fmt.Errorf("max ring size must be 1-%d, got %d", MaxRingSizeLimit, c.MaxRingSize)
	}
	if c.MinRingSize > c.MaxRingSize {
		return errors.New("min ring size is larger than max ring size")
	}
	return nil
}

// RegisterFlags registers the ring flags on fs, with c's current values as
// defaults. Call it on Default() before fs.Parse.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.IntVar(&c.MinRingSize, "ring-min-size", c.MinRingSize, "minimum ring-hash entries per endpoint (scaled by the lightest connection's share)")
	fs.IntVar(&c.MaxRingSize, "ring-max-size", c.MaxRingSize, "maximum ring-hash entries per endpoint")
}

// bounds is the sizes New uses: zero or negative fields take the defaults,
// both are capped at MaxRingSizeLimit, and min is lowered to max if above
// it. New does not fail on a config Validate would refuse.
func (c Config) bounds() (lo, hi int) {
	lo, hi = c.MinRingSize, c.MaxRingSize
	if lo <= 0 {
		lo = DefaultMinRingSize
	}
	if hi <= 0 {
		hi = DefaultMaxRingSize
	}
	lo, hi = min(lo, MaxRingSizeLimit), min(hi, MaxRingSizeLimit)
	return min(lo, hi), hi
}
