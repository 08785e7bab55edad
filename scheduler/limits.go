package scheduler

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/spf13/pflag"
)

// ErrInvalidLimits wraps every error Limits.Validate returns.
var ErrInvalidLimits = errors.New("invalid rebalance limits")

// Limits bound what one Plan may do. Plan does not validate them (call
// Validate once, at startup): a non-positive cap simply allows no moves.
type Limits struct {
	// Band is the hysteresis band, a fraction of each proxy's weighted
	// target (see the package doc for the exact rule).
	Band float64
	// MaxInFlight caps unfinished moves cluster-wide, View.InFlight
	// included.
	MaxInFlight int
	// MaxInFlightPerProxy caps unfinished moves leaving or reaching any one
	// proxy, View.InFlight included.
	MaxInFlightPerProxy int
	// MaxPerPlan caps the moves one Plan returns; the runner derives it
	// from its moves-per-second limit.
	MaxPerPlan int
	// CoolDown: a connection moved less than this ago is not moved again.
	CoolDown time.Duration
	// MinAge: a connection younger than this is not moved.
	MinAge time.Duration
	// CrossRegion balances all proxies as one pool; by default each region
	// is balanced on its own and no move crosses regions.
	CrossRegion bool
	// CPULimitMillicores and MemoryLimitBytes mark a proxy whose last
	// sample is over them as overloaded; 0 means no limit.
	CPULimitMillicores uint32
	MemoryLimitBytes   uint64
}

// DefaultLimits returns the defaults: a 10% band, 64 moves in flight, 8
// per proxy, 32 per plan, a 2 minute cool-down, a 10 second minimum age,
// regions apart, no load limits.
func DefaultLimits() Limits {
	return Limits{
		Band:                0.10,
		MaxInFlight:         64,
		MaxInFlightPerProxy: 8,
		MaxPerPlan:          32,
		CoolDown:            2 * time.Minute,
		MinAge:              10 * time.Second,
	}
}

// Validate reports the first problem with l.
func (l Limits) Validate() error {
	switch {
	case math.IsNaN(l.Band) || l.Band < 0 || l.Band >= 1:
		return fmt.Errorf("rebalance-band %v: must be in [0, 1): %w", l.Band, ErrInvalidLimits)
	case l.MaxInFlight < 1:
		return fmt.Errorf("max-moves-in-flight %d: must be positive: %w", l.MaxInFlight, ErrInvalidLimits)
	case l.MaxInFlightPerProxy < 1:
		return fmt.Errorf("max-moves-in-flight-per-proxy %d: must be positive: %w", l.MaxInFlightPerProxy, ErrInvalidLimits)
	case l.MaxPerPlan < 1:
		return fmt.Errorf("max-moves-per-plan %d: must be positive: %w", l.MaxPerPlan, ErrInvalidLimits)
	case l.CoolDown < 0:
		return fmt.Errorf("move-cool-down %v: negative: %w", l.CoolDown, ErrInvalidLimits)
	case l.MinAge < 0:
		return fmt.Errorf("move-min-age %v: negative: %w", l.MinAge, ErrInvalidLimits)
	}
	return nil
}

// RegisterFlags binds l's fields to fs; values already in l are the
// defaults.
func (l *Limits) RegisterFlags(fs *pflag.FlagSet) {
	fs.Float64Var(&l.Band, "rebalance-band", l.Band, "hysteresis band, a fraction of each proxy's weighted target connection count")
	fs.IntVar(&l.MaxInFlight, "max-moves-in-flight", l.MaxInFlight, "unfinished moves allowed cluster-wide")
	fs.IntVar(&l.MaxInFlightPerProxy, "max-moves-in-flight-per-proxy", l.MaxInFlightPerProxy, "unfinished moves allowed leaving or reaching one proxy")
	fs.IntVar(&l.MaxPerPlan, "max-moves-per-plan", l.MaxPerPlan, "moves one planning round may issue")
	fs.DurationVar(&l.CoolDown, "move-cool-down", l.CoolDown, "a connection moved less than this ago is not moved again")
	fs.DurationVar(&l.MinAge, "move-min-age", l.MinAge, "a connection younger than this is not moved")
	fs.BoolVar(&l.CrossRegion, "rebalance-cross-region", l.CrossRegion, "balance across regions instead of within each region")
	fs.Uint32Var(&l.CPULimitMillicores, "shed-cpu-millicores", l.CPULimitMillicores, "a proxy using more CPU than this sheds connections first (0: no limit)")
	fs.Uint64Var(&l.MemoryLimitBytes, "shed-memory-bytes", l.MemoryLimitBytes, "a proxy using more memory than this sheds connections first (0: no limit)")
}
