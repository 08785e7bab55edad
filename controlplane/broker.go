package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/spf13/pflag"

	"github.com/berthhq/berth/fsm"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// Errors of the event broker.
var (
	// ErrInvalidSubscription is a WatchRequest the broker refuses: no
	// topics, an unspecified or unknown topic, or TOPIC_ASSIGNMENTS without
	// filter.proxy_id. It maps to InvalidArgument.
	ErrInvalidSubscription = errors.New("invalid subscription")
	// ErrSubscriptionReset is returned by Subscription.Next after it has
	// delivered a WatchReset: subscribe again with start index LastIndex.
	ErrSubscriptionReset = errors.New("subscription reset")
	// ErrSubscriptionClosed is returned by Subscription.Next once Close was
	// called.
	ErrSubscriptionClosed = errors.New("subscription closed")
)

// maxWatchBatch bounds the events in one WatchSnapshot or WatchEvents
// message, which keeps messages well under gRPC's size limit.
const maxWatchBatch = 1000

// maxBrokerBuffer bounds BufferEvents; beyond it a typo would pin gigabytes.
const maxBrokerBuffer = 1 << 24

// BrokerConfig sizes the event broker.
type BrokerConfig struct {
	// BufferEvents is how many recent events are kept so a subscriber can
	// resume with only the gap instead of a snapshot. Default 65536.
	BufferEvents int
	// SubscriberBuffer is how many events a subscriber may fall behind
	// before it is reset, counting every event published after it
	// subscribed, whatever its filter. The gap a resuming subscriber starts
	// with does not count, so it can always drain it. At most BufferEvents.
	// Default 4096.
	SubscriberBuffer int
}

// DefaultBrokerConfig returns the defaults.
func DefaultBrokerConfig() BrokerConfig {
	return BrokerConfig{BufferEvents: 65536, SubscriberBuffer: 4096}
}

// withDefaults fills zero fields from DefaultBrokerConfig.
func (c BrokerConfig) withDefaults() BrokerConfig {
	d := DefaultBrokerConfig()
	if c.BufferEvents == 0 {
		c.BufferEvents = d.BufferEvents
	}
	if c.SubscriberBuffer == 0 {
		c.SubscriberBuffer = min(d.SubscriberBuffer, c.BufferEvents)
	}
	return c
}

// Validate reports whether c is usable; zero fields mean the default.
func (c BrokerConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.BufferEvents < 0 || c.BufferEvents > maxBrokerBuffer:
		return fmt.Errorf("buffer-events %d: must be in [1, %d]", c.BufferEvents, maxBrokerBuffer)
	case c.SubscriberBuffer < 0:
		return fmt.Errorf("subscriber-buffer %d: must be positive", c.SubscriberBuffer)
	case c.SubscriberBuffer > c.BufferEvents:
		return fmt.Errorf("subscriber-buffer %d: must not exceed buffer-events %d", c.SubscriberBuffer, c.BufferEvents)
	}
	return nil
}

// RegisterFlags binds c's fields to fs; values already in c are the
// defaults.
func (c *BrokerConfig) RegisterFlags(fs *pflag.FlagSet) {
	fs.IntVar(&c.BufferEvents, "broker-buffer-events", c.BufferEvents, "events kept so watchers can resume with only the gap")
	fs.IntVar(&c.SubscriberBuffer, "broker-subscriber-buffer", c.SubscriberBuffer, "events a watcher may fall behind before it is reset")
}

// Broker fans the FSM's events out to watchers. It keeps the most recent
// events in a ring; subscribers read that ring at their own pace, so
// publishing costs the same whatever the number of subscribers and never
// waits for one. A subscriber that falls more than SubscriberBuffer events
// behind is reset and starts again from the last index it consumed: with
// only the gap if that is still in the ring, else from a fresh snapshot.
//
// The FSM calls Publish and Reset with its write lock held and Subscribe
// with its read lock held; that lock is what makes a snapshot and a
// subscriber's starting position agree.
type Broker struct {
	cfg    BrokerConfig
	logger *slog.Logger

	// Event number seq lives in ring[seq%len(ring)] while tail <= seq < head.
	// Slots are atomic so subscribers read them without a lock; a reader
	// trusts what it read only if tail has not passed it afterwards (tail
	// moves before a slot is reused). Reset bumps gen before moving tail.
	ring []atomic.Pointer[berthv1.Event]
	head atomic.Uint64
	tail atomic.Uint64
	last atomic.Uint64 // last index published or reset to; stored after head
	gen  atomic.Uint64

	// notify is closed (and replaced) to wake every waiting subscriber.
	// Publish does not close it itself: that would cost one wake-up per
	// waiter. It drops a token in kick, and the one waiter that takes the
	// token wakes the others.
	notify atomic.Pointer[chan struct{}]
	kick   chan struct{}

	subscribers atomic.Int64
	resets      atomic.Uint64

	// mu serialises Publish, Reset and Subscribe's reads of the ring (the
	// FSM lock already does; this keeps the broker safe on its own).
	mu sync.Mutex
	// bufStart: every event with a greater index is still in the ring.
	bufStart uint64
}

// NewBroker returns a broker with an empty ring starting at index 0. Zero
// fields of cfg take their defaults; cfg must otherwise pass Validate, or
// NewBroker panics.
func NewBroker(cfg BrokerConfig, logger *slog.Logger) *Broker {
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("controlplane: NewBroker: %v", err))
	}
	cfg = cfg.withDefaults()
	b := &Broker{
		cfg:    cfg,
		logger: logger,
		ring:   make([]atomic.Pointer[berthv1.Event], cfg.BufferEvents),
		kick:   make(chan struct{}, 1),
	}
	ch := make(chan struct{})
	b.notify.Store(&ch)
	return b
}

// Publish appends the events of the command applied at index. It must be
// called in index order, once per index with all of that index's events,
// each carrying Index == index; the broker keeps the pointers, so the events
// must not be modified afterwards. Publish never blocks and does no
// per-subscriber work.
func (b *Broker) Publish(index uint64, events []*berthv1.Event) {
	b.mu.Lock()
	head, tail := b.head.Load(), b.tail.Load()
	size := uint64(len(b.ring))
	for _, ev := range events {
		if ev == nil {
			continue
		}
		if ev.Index != index {
			b.logger.Error("event index differs from the published index; resume may skip it",
				"index", index, "event_index", ev.Index)
		}
		if head-tail == size {
			b.bufStart = b.ring[tail%size].Load().Index
			tail++
			b.tail.Store(tail)
		}
		b.ring[head%size].Store(ev)
		head++
	}
	b.head.Store(head)
	if index > b.last.Load() {
		b.last.Store(index)
	}
	b.mu.Unlock()
	if len(events) > 0 {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
}

// Reset empties the ring after the FSM restored a snapshot at index, and
// resets every subscriber. Later resumes need a start index of at least
// index.
func (b *Broker) Reset(index uint64) {
	b.mu.Lock()
	b.gen.Add(1)
	b.tail.Store(b.head.Load())
	for i := range b.ring {
		b.ring[i].Store(nil)
	}
	b.bufStart = index
	b.last.Store(index)
	b.mu.Unlock()
	b.broadcast()
	b.logger.Info("event buffer reset after restore", "index", index, "subscribers", b.subscribers.Load())
}

// broadcast wakes every subscriber waiting in Next.
func (b *Broker) broadcast() {
	ch := make(chan struct{})
	close(*b.notify.Swap(&ch))
}

// Subscribe registers a subscriber for the topics and filters of req.
//
// It MUST be called with the FSM's read lock held, so that no event is
// published between the snapshot and the subscriber's starting position:
// applied is the FSM's applied index under that lock, and snapshot returns
// the events (UPSERTs) of the state matching req under that lock: its
// topics and filter or any of its selectors, by fsm.Match. snapshot is called only when a snapshot is needed; nil
// means an empty state. With the fsm package that is:
//
//	f.View(func(st *fsm.State, applied uint64) {
//		sub, err = broker.Subscribe(req, applied, func() []*berthv1.Event { ... st.SnapshotEvents ... })
//	})
//
// The broker keeps req's topics and filters: do not modify them while
// subscribed.
// Where the subscriber starts depends on req.StartIndex:
//   - 0, or an index older than the ring holds: a snapshot at applied, then
//     every event after applied.
//   - from the oldest resumable index (Stats().BufStart) up to applied:
//     every event after it, and nothing else (possibly nothing until the
//     next event).
//   - beyond applied (the subscriber saw a more up-to-date node): no
//     snapshot; events are delivered once they pass StartIndex, so this node
//     catching up neither repeats nor skips anything. An index from another
//     cluster's history would wait for that index; such a client should
//     subscribe with 0.
func (b *Broker) Subscribe(req *berthv1.WatchRequest, applied uint64, snapshot func() []*berthv1.Event) (*Subscription, error) {
	sels, err := watchSelectors(req)
	if err != nil {
		return nil, err
	}
	start := req.GetStartIndex()
	s := &Subscription{b: b, sels: sels, done: make(chan struct{})}
	s.last.Store(start)

	b.mu.Lock()
	resume := start > 0 && start >= b.bufStart
	from := applied
	if resume {
		from = min(start, applied)
	}
	s.cursor = b.seqAfter(from)
	s.base = b.head.Load()
	s.gen = b.gen.Load()
	bufStart := b.bufStart
	b.mu.Unlock()

	if resume {
		s.floor = start
	} else {
		s.floor = applied
		s.snapIndex = applied
		s.snapPending = true
		if snapshot != nil {
			s.snap = snapshot()
		}
	}
	b.subscribers.Add(1)
	b.logger.Debug("subscribed", "start_index", start, "applied", applied, "buf_start", bufStart,
		"resume", resume, "snapshot_events", len(s.snap))
	return s, nil
}

// seqAfter returns the number of the first buffered event with an index
// greater than index (head if none). b.mu must be held.
func (b *Broker) seqAfter(index uint64) uint64 {
	lo, hi := b.tail.Load(), b.head.Load()
	size := uint64(len(b.ring))
	for lo < hi {
		mid := lo + (hi-lo)/2
		if b.ring[mid%size].Load().Index > index {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// BrokerStats is a point-in-time view of the broker, for metrics.
type BrokerStats struct {
	// Subscribers is the number of subscriptions not yet closed.
	Subscribers int
	// Resets counts subscriber resets delivered since start.
	Resets uint64
	// Buffered is the number of events in the ring.
	Buffered int
	// BufStart is the oldest index a subscriber can resume from.
	BufStart uint64
	// LastIndex is the last index published (or reset to).
	LastIndex uint64
}

// Stats returns the broker's current figures.
func (b *Broker) Stats() BrokerStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BrokerStats{
		Subscribers: int(b.subscribers.Load()),
		Resets:      b.resets.Load(),
		Buffered:    int(b.head.Load() - b.tail.Load()),
		BufStart:    b.bufStart,
		LastIndex:   b.last.Load(),
	}
}

// selector is one (topics, filter) pair of a WatchRequest.
type selector struct {
	topics []berthv1.Topic
	filter *berthv1.EventFilter
}

// watchSelectors validates req and returns its (topics, filter) pairs: the
// top-level one, if it names topics, then req.Selectors.
func watchSelectors(req *berthv1.WatchRequest) ([]selector, error) {
	if req == nil {
		return nil, fmt.Errorf("no request: %w", ErrInvalidSubscription)
	}
	var sels []selector
	if len(req.Topics) > 0 {
		if err := validateSelector(req.Topics, req.Filter); err != nil {
			return nil, err
		}
		sels = append(sels, selector{req.Topics, req.Filter})
	} else if req.Filter != nil && len(req.Selectors) > 0 {
		return nil, fmt.Errorf("filter without topics: %w", ErrInvalidSubscription)
	}
	for i, sel := range req.Selectors {
		if len(sel.GetTopics()) == 0 {
			return nil, fmt.Errorf("selector %d: no topics: %w", i, ErrInvalidSubscription)
		}
		if err := validateSelector(sel.Topics, sel.Filter); err != nil {
			return nil, fmt.Errorf("selector %d: %w", i, err)
		}
		sels = append(sels, selector{sel.Topics, sel.Filter})
	}
	if len(sels) == 0 {
		return nil, fmt.Errorf("no topics: %w", ErrInvalidSubscription)
	}
	return sels, nil
}

func validateSelector(topics []berthv1.Topic, filter *berthv1.EventFilter) error {
	for _, t := range topics {
		if _, known := berthv1.Topic_name[int32(t)]; !known || t == berthv1.Topic_TOPIC_UNSPECIFIED {
			return fmt.Errorf("topic %d: %w", t, ErrInvalidSubscription)
		}
		if t == berthv1.Topic_TOPIC_ASSIGNMENTS && filter.GetProxyId() == "" {
			return fmt.Errorf("%s needs filter.proxy_id: %w", t, ErrInvalidSubscription)
		}
	}
	return nil
}

// Subscription is one subscriber's position in the event stream. Next
// delivers its updates in order; it must not be called concurrently with
// itself. LastIndex and Close may be called from any goroutine.
//
// A Watch handler loops: Subscribe (under the FSM read lock), send what Next
// returns; on ErrSubscriptionReset, Close and Subscribe again with
// StartIndex = LastIndex() on the same stream.
type Subscription struct {
	b    *Broker
	sels []selector
	done chan struct{}

	closeOnce sync.Once
	last      atomic.Uint64

	// Owned by Next.
	cursor      uint64 // seq of the next event to read
	base        uint64 // head when subscribed: the lag limit counts from here
	floor       uint64 // events at or below this index are skipped
	gen         uint64
	snap        []*berthv1.Event
	snapIndex   uint64
	snapPending bool
	resetSent   bool
}

// Next returns the next update, blocking until there is one:
//
//   - first, if a snapshot was needed, WatchSnapshot messages at the
//     subscription's applied index, at most 1000 events each, Done on the
//     last (an empty state gives one empty message with Done);
//   - then WatchEvents, each with every matching event queued so far, up to
//     1000, in index order;
//   - if the subscriber fell behind or the node restored a snapshot, one
//     WatchReset, after which Next returns ErrSubscriptionReset.
//
// It returns ErrSubscriptionClosed after Close, and ctx's error (wrapped)
// when ctx is done.
func (s *Subscription) Next(ctx context.Context) (*berthv1.WatchResponse, error) {
	b := s.b
	for {
		select {
		case <-s.done:
			return nil, ErrSubscriptionClosed
		default:
		}
		if s.resetSent {
			return nil, ErrSubscriptionReset
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		// Taken before looking, so a publish after the look wakes us.
		wake := *b.notify.Load()
		if resp := s.checkReset(); resp != nil {
			return resp, nil
		}
		if s.snapPending {
			return s.snapshotChunk(), nil
		}
		if resp := s.scan(); resp != nil {
			return resp, nil
		}
		select {
		case <-ctx.Done():
		case <-s.done:
		case <-wake:
		case <-b.kick:
			b.broadcast()
		}
	}
}

// checkReset returns the WatchReset to deliver if the subscriber must start
// again, else nil.
func (s *Subscription) checkReset() *berthv1.WatchResponse {
	b := s.b
	if b.gen.Load() != s.gen {
		// Reset logged this once for everyone.
		return s.reset(slog.LevelDebug, fmt.Sprintf("node restored a snapshot at index %d", b.last.Load()))
	}
	if lag := b.head.Load() - max(s.cursor, s.base); lag > uint64(b.cfg.SubscriberBuffer) {
		return s.reset(slog.LevelInfo, fmt.Sprintf("subscriber fell behind: %d events queued, limit %d", lag, b.cfg.SubscriberBuffer))
	}
	if b.tail.Load() > s.cursor {
		return s.reset(slog.LevelInfo, "subscriber fell behind the event buffer")
	}
	return nil
}

func (s *Subscription) reset(level slog.Level, reason string) *berthv1.WatchResponse {
	s.resetSent = true
	s.b.resets.Add(1)
	s.b.logger.Log(context.Background(), level, "subscriber reset", "reason", reason, "last_index", s.last.Load())
	return &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Reset_{
		Reset_: &berthv1.WatchReset{Reason: reason},
	}}
}

func (s *Subscription) snapshotChunk() *berthv1.WatchResponse {
	n := min(len(s.snap), maxWatchBatch)
	chunk := s.snap[:n:n]
	s.snap = s.snap[n:]
	done := len(s.snap) == 0
	if done {
		s.snap, s.snapPending = nil, false
		if s.snapIndex > s.last.Load() {
			s.last.Store(s.snapIndex)
		}
	}
	return &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Snapshot{
		Snapshot: &berthv1.WatchSnapshot{Index: s.snapIndex, Events: chunk, Done: done},
	}}
}

// scan reads the ring from the cursor and returns the matching events as
// WatchEvents, or nil if none match (or a reset if the ring moved under it).
// It advances LastIndex to the highest index whose events have all been
// read, delivered or not.
func (s *Subscription) scan() *berthv1.WatchResponse {
	b := s.b
	last := b.last.Load() // before head: every event of last is below head
	head := b.head.Load()
	size := uint64(len(b.ring))
	var batch []*berthv1.Event
	seq, prev := s.cursor, uint64(0)
	for seq < head && len(batch) < maxWatchBatch {
		ev := b.ring[seq%size].Load()
		if ev == nil {
			break // cleared by Reset; caught below
		}
		seq++
		prev = ev.Index
		if ev.Index > s.floor && s.match(ev) {
			batch = append(batch, ev)
		}
	}
	through := max(last, prev)
	if seq < head {
		// Stopped early: the next event's index may be only partly read.
		through = 0
		if next := b.ring[seq%size].Load(); next != nil && next.Index > 0 {
			through = next.Index - 1
		}
	}
	// What was read is valid only if no slot from the cursor on was reused.
	if b.gen.Load() != s.gen || b.tail.Load() > s.cursor {
		return s.checkReset()
	}
	s.cursor = seq
	if through > s.last.Load() {
		s.last.Store(through)
	}
	if len(batch) == 0 {
		return nil
	}
	return &berthv1.WatchResponse{Kind: &berthv1.WatchResponse_Events{
		Events: &berthv1.WatchEvents{Events: batch},
	}}
}

func (s *Subscription) match(ev *berthv1.Event) bool { return matchSelectors(s.sels, ev) }

// matchSelectors reports whether ev matches any of sels, by fsm.Match.
func matchSelectors(sels []selector, ev *berthv1.Event) bool {
	for _, sel := range sels {
		if fsm.Match(sel.topics, sel.filter, ev) {
			return true
		}
	}
	return false
}

// LastIndex is the index up to which the subscriber has received every
// matching event (or the snapshot): the start index to resubscribe with
// after a reset. Before anything is delivered it is the request's start
// index. It may trail the last delivered event's index by one when a batch
// ends in the middle of an index's events; re-delivery is harmless.
func (s *Subscription) LastIndex() uint64 { return s.last.Load() }

// Close ends the subscription and unblocks Next. It is idempotent.
func (s *Subscription) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.b.subscribers.Add(-1)
	})
}
