package console

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// The event stream's messages (SSE "event:" names):
//
//	snapshot  id=index  the registry at index (replaces the page's)
//	events    id=index  registry events after the previous id, in order
//	reset               the node reset the watch; a snapshot or the gap follows
//	cluster             Raft status, every ClusterInterval
//	derived             targets, load and ring-hash states
//	error               the stream ends; the page reconnects from its last id

// parseLastEventID reads the index to resume after: Last-Event-ID (sent by
// the page, or by EventSource on its own reconnects), 0 when absent.
func parseLastEventID(r *http.Request) (uint64, error) {
	v := strings.TrimSpace(r.Header.Get("Last-Event-ID"))
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: want the index of the last registry event seen (a decimal number), got %q", ErrBadLastEventID, truncate(v, 40))
	}
	return n, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// sseWriter writes Server-Sent Events and flushes each.
type sseWriter struct {
	w  *bufio.Writer
	rc *http.ResponseController
}

func (s *sseWriter) send(event string, id uint64, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", event, err)
	}
	if id > 0 {
		fmt.Fprintf(s.w, "id: %d\n", id)
	}
	// encoding/json never writes a newline, so the data is one line.
	fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", event, b)
	return s.flush()
}

func (s *sseWriter) comment(text string) error {
	fmt.Fprintf(s.w, ": %s\n\n", text)
	return s.flush()
}

func (s *sseWriter) flush() error {
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("write event stream: %w", err)
	}
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("flush event stream: %w", err)
	}
	return nil
}

// serveEvents answers GET /ui/events with a live event stream.
func (c *Console) serveEvents(w http.ResponseWriter, r *http.Request) {
	last, err := parseLastEventID(r)
	if err != nil {
		c.fail(w, r, httpStatus(err), err)
		return
	}
	ctx, err := callContext(r.Context(), r)
	if err != nil {
		c.fail(w, r, httpStatus(err), err)
		return
	}
	// A Watch reports a refused token only on its first message, which may
	// be a long time coming when resuming; ClusterStatus answers at once,
	// so a bad token gets a proper status before the stream starts.
	cl, err := c.cluster(ctx)
	if err != nil {
		c.fail(w, r, httpStatus(err), err)
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.admin.Watch(ctx, &berthv1.WatchRequest{Topics: topics(), StartIndex: last})
	if err != nil {
		err = fmt.Errorf("watch: %w", err)
		c.fail(w, r, httpStatus(err), err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives any server write timeout
	out := &sseWriter{w: bufio.NewWriter(w), rc: rc}
	c.logger.Debug("event stream open", "from_index", last)

	err = c.pump(ctx, out, stream.Recv, last, cl)
	switch {
	case ctx.Err() != nil, errors.Is(err, errClientGone):
		c.logger.Debug("event stream closed", "err", err)
	default:
		c.logger.Info("event stream ended", "err", err)
		_ = out.send("error", 0, bodyOf(err))
	}
}

// pump relays the watch to out until either ends, interleaving Raft status,
// derived state and heartbeats. last is the index the page has seen.
func (c *Console) pump(ctx context.Context, out *sseWriter, recv func() (*berthv1.WatchResponse, error), last uint64, cl *clusterView) error {
	type received struct {
		resp *berthv1.WatchResponse
		err  error
	}
	watch := make(chan received)
	go func() {
		for {
			resp, err := recv()
			select {
			case watch <- received{resp, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	write := func(err error) error {
		if err != nil {
			return fmt.Errorf("%w: %w", errClientGone, err)
		}
		return nil
	}
	if err := write(out.send("cluster", 0, cl)); err != nil {
		return err
	}
	clusterTick := time.NewTicker(c.cfg.ClusterInterval)
	defer clusterTick.Stop()
	heartbeat := time.NewTicker(c.cfg.Heartbeat)
	defer heartbeat.Stop()
	// derivedAt fires when derived state is due: at once for the first
	// read, then after events (no sooner than DerivedMinInterval after the
	// last read) or DerivedInterval without any.
	derivedAt := time.NewTimer(0)
	defer derivedAt.Stop()
	var lastDerived time.Time
	soon := func() { derivedAt.Reset(max(0, c.cfg.DerivedMinInterval-time.Since(lastDerived))) }
	var chunks []*berthv1.Event
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-heartbeat.C:
			if err := write(out.comment("ping")); err != nil {
				return err
			}
		case <-clusterTick.C:
			cl, err := c.cluster(ctx)
			if err != nil {
				// Leaderless moments are worth showing, not ending the
				// stream for: the page marks the cluster stale.
				c.logger.Debug("cluster status for the console failed", "err", err)
				continue
			}
			if err := write(out.send("cluster", 0, cl)); err != nil {
				return err
			}
		case <-derivedAt.C:
			d, err := c.derived(ctx)
			lastDerived = time.Now()
			derivedAt.Reset(c.cfg.DerivedInterval)
			if err != nil {
				c.logger.Debug("derived state for the console failed", "err", err)
				continue
			}
			if err := write(out.send("derived", 0, d)); err != nil {
				return err
			}
		case got := <-watch:
			if got.err != nil {
				return fmt.Errorf("watch: %w", got.err)
			}
			switch k := got.resp.GetKind().(type) {
			case *berthv1.WatchResponse_Snapshot:
				chunks = append(chunks, k.Snapshot.GetEvents()...)
				if !k.Snapshot.GetDone() {
					continue
				}
				reg := newRegistry(k.Snapshot.GetIndex(), chunks, c.cfg.FinishedMoves)
				chunks = nil
				last = max(last, reg.Index)
				if err := write(out.send("snapshot", last, reg)); err != nil {
					return err
				}
				soon()
			case *berthv1.WatchResponse_Events:
				evs := make([]eventView, 0, len(k.Events.GetEvents()))
				high := last
				for _, ev := range k.Events.GetEvents() {
					if ev.GetIndex() <= last {
						continue // re-delivered after a resume
					}
					high = max(high, ev.GetIndex())
					if v, ok := newEventView(ev); ok {
						evs = append(evs, v)
					}
				}
				if high == last {
					continue
				}
				last = high
				if err := write(out.send("events", last, map[string]any{"events": evs})); err != nil {
					return err
				}
				// Targets shift with statuses and moved connections.
				soon()
			case *berthv1.WatchResponse_Reset_:
				chunks = nil
				if err := write(out.send("reset", 0, map[string]string{"reason": k.Reset_.GetReason()})); err != nil {
					return err
				}
			}
		}
	}
}
