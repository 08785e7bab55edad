package controlplanetest

import (
	"sync"
	"time"
)

// FakeClock is a controlplane.Clock that only moves when told to.
type FakeClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewFakeClock starts at start.
func NewFakeClock(start time.Time) *FakeClock { return &FakeClock{now: start} }

// Now is the clock's current time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Monotonic moves with Now: a FakeClock never steps.
func (c *FakeClock) Monotonic() time.Time { return c.Now() }

// Advance moves the clock forward by d.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// SteppedClock is the real clock with a wall-clock step that can be set at
// any time, as NTP or an operator would step it: Now jumps by the step,
// Monotonic does not.
type SteppedClock struct {
	mu   sync.Mutex
	step time.Duration
}

// Step sets the wall clock's offset from true time.
func (c *SteppedClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.step = d
}

// Now is the true time plus the step, with no monotonic reading (a stepped
// wall clock is all a stamp carries).
func (c *SteppedClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.step).Round(0)
}

// Monotonic is the true time: steps do not move it.
func (c *SteppedClock) Monotonic() time.Time { return time.Now() }
