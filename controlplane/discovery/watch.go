package discovery

import (
	"context"
	"log/slog"
	"slices"
	"time"
)

// Watch polls d every interval, starting at once, and calls fn with the new
// set whenever it differs from the last one fn saw; the first successful
// answer is always reported, even if empty. A failed round is logged and
// retried on the next tick; it does not count as a change, so a flapping
// resolver does not make the caller believe peers vanished. fn runs on
// Watch's goroutine and owns its slice. Watch returns when ctx ends.
// interval <= 0 means 5s.
func Watch(ctx context.Context, d Discoverer, interval time.Duration, fn func([]string), logger *slog.Logger) {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	logger = orDiscard(logger).With("subsystem", "discovery")
	t := time.NewTicker(interval)
	defer t.Stop()
	var (
		last     []string
		reported bool
		failing  bool
	)
	for {
		addrs, err := d.Discover(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// Warn on the first failure of a streak, then quieter.
			lvl := slog.LevelDebug
			if !failing {
				lvl = slog.LevelWarn
			}
			failing = true
			logger.Log(ctx, lvl, "discovery failed; retrying next round", "err", err)
		default:
			if failing {
				logger.Info("discovery recovered")
				failing = false
			}
			if !reported || !slices.Equal(addrs, last) {
				reported = true
				last = slices.Clone(addrs)
				logger.Info("control-plane addresses changed", "addrs", addrs)
				fn(addrs)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
