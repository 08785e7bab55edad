package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berthhq/berth/controlplane/client"
	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

func (a *app) watchCmd() *cobra.Command {
	var (
		filter    berthv1.EventFilter
		fromIndex uint64
		count     int
	)
	cmd := &cobra.Command{
		Use:   "watch <topic>...",
		Short: "Stream registry events",
		Long: `Stream registry events: first a snapshot of the matching state, then every
change, one line per event (or one JSON object per line with -o json).

Topics: ` + strings.Join(topics.names, ", ") + `. The assignments topic needs --proxy.

If the stream breaks, berthctl reconnects (to another --addr if needed) and
resumes after the last index it saw. It runs until Ctrl-C, until --count
events, or until --timeout if that flag is given.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := parseEnums[berthv1.Topic](topics, args)
			if err != nil {
				return err
			}
			if slices.Contains(ts, berthv1.Topic_TOPIC_ASSIGNMENTS) && filter.GetProxyId() == "" {
				return errors.New("topic assignments needs --proxy")
			}
			if count < 0 {
				return fmt.Errorf("count: must not be negative, got %d", count)
			}
			c, err := client.New(a.cfg, a.logger)
			if err != nil {
				return err
			}
			defer func() { _ = c.Close() }()

			w := &watcher{
				admin:   c.Admin(),
				backoff: c.Backoff,
				logger:  a.logger,
				topics:  ts,
				filter:  &filter,
				last:    fromIndex,
				limit:   count,
				out:     &eventPrinter{p: a.printer},
			}
			parent := cmd.Context()
			ctx := parent
			if cmd.Flags().Changed("timeout") && a.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(parent, a.timeout)
				defer cancel()
			}
			err = w.run(ctx)
			switch {
			case w.limitReached():
				return nil
			case parent.Err() != nil:
				return nil // Ctrl-C is how a watch normally ends
			case ctx.Err() != nil:
				if w.limit > 0 {
					return fmt.Errorf("watch: timed out after %s with %d of %d events", a.timeout, w.printed, w.limit)
				}
				return nil
			default:
				return err
			}
		},
	}
	cmd.Flags().StringVar(&filter.ProxyId, "proxy", "", "only events about this proxy (required for assignments)")
	cmd.Flags().StringVar(&filter.Endpoint, "endpoint", "", "only events about this endpoint")
	cmd.Flags().StringVar(&filter.Region, "region", "", "only events about proxies in this region")
	cmd.Flags().Uint64Var(&fromIndex, "from-index", 0, "last index already seen: resume after it (0: start with a snapshot)")
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many events (0: no limit)")
	return cmd
}

// watcher runs one logical watch over as many streams as it takes.
type watcher struct {
	admin   berthv1.AdminServiceClient
	backoff func(attempt int) time.Duration
	logger  *slog.Logger
	topics  []berthv1.Topic
	filter  *berthv1.EventFilter
	out     *eventPrinter

	// last is the highest index fully seen: the start_index of the next
	// stream. It moves at the end of a snapshot and after each batch of
	// events, never in the middle of one.
	last    uint64
	limit   int
	printed int
}

func (w *watcher) limitReached() bool { return w.limit > 0 && w.printed >= w.limit }

// run streams until the limit, ctx's end, or an error that retrying will not
// fix. The first stream must open (the client already failed over while
// opening it); after that, broken streams are resumed with backoff.
func (w *watcher) run(ctx context.Context) error {
	everOpened := false
	failures := 0
	for {
		progressed, opened, err := w.stream(ctx)
		everOpened = everOpened || opened
		if w.limitReached() {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !everOpened || permanent(err) {
			return err
		}
		if progressed {
			failures = 0
		}
		failures++
		delay := w.backoff(failures)
		w.logger.Warn("watch stream ended; resuming", "from_index", w.last, "retry_in", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// stream opens one stream from w.last and prints what it delivers. It
// reports whether anything arrived and whether the stream opened at all.
func (w *watcher) stream(ctx context.Context) (progressed, opened bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := w.admin.Watch(ctx, &berthv1.WatchRequest{
		Topics:     w.topics,
		Filter:     w.filter,
		StartIndex: w.last,
	})
	if err != nil {
		return false, false, callFailed("watch", err)
	}
	w.logger.Debug("watch stream open", "start_index", w.last)
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progressed, true, errors.New("watch: server ended the stream")
		}
		if err != nil {
			return progressed, true, callFailed("watch", err)
		}
		progressed = true
		switch k := resp.GetKind().(type) {
		case *berthv1.WatchResponse_Snapshot:
			// Snapshot events are printed even when older than w.last: after
			// a reset they are the fresh picture.
			for _, ev := range k.Snapshot.GetEvents() {
				if err := w.emit(ev); err != nil || w.limitReached() {
					return progressed, true, err
				}
			}
			if k.Snapshot.GetDone() {
				w.last = max(w.last, k.Snapshot.GetIndex())
				w.logger.Debug("watch snapshot complete", "index", k.Snapshot.GetIndex())
			}
		case *berthv1.WatchResponse_Events:
			high := w.last
			for _, ev := range k.Events.GetEvents() {
				if ev.GetIndex() <= w.last {
					w.logger.Debug("watch skipped repeated event", "index", ev.GetIndex())
					continue
				}
				if err := w.emit(ev); err != nil || w.limitReached() {
					return progressed, true, err
				}
				high = max(high, ev.GetIndex())
			}
			w.last = high
		case *berthv1.WatchResponse_Reset_:
			w.logger.Warn("watch reset by server; a fresh snapshot follows", "reason", k.Reset_.GetReason(), "last_index", w.last)
		}
	}
}

func (w *watcher) emit(ev *berthv1.Event) error {
	if err := w.out.print(ev); err != nil {
		return fmt.Errorf("write event: %w", err)
	}
	w.printed++
	return nil
}

// permanent reports errors a new stream would meet again.
func permanent(err error) bool {
	var withStatus interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &withStatus) {
		return false
	}
	switch withStatus.GRPCStatus().Code() {
	case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.Unauthenticated,
		codes.Unimplemented, codes.FailedPrecondition, codes.OutOfRange:
		return true
	}
	return false
}

// eventPrinter prints events as they arrive: fixed-width lines in table
// mode (a stream cannot be aligned after the fact), else one JSON object
// per line or one YAML document per event.
type eventPrinter struct {
	p          printer
	headerDone bool
}

const eventLine = "%-10s %-7s %-11s %-24s %s\n"

func (e *eventPrinter) print(ev *berthv1.Event) error {
	if e.p.format != formatTable {
		return e.p.printLine(ev)
	}
	if !e.headerDone {
		e.headerDone = true
		if _, err := fmt.Fprintf(e.p.w, eventLine, "INDEX", "OP", "KIND", "ID", "SUMMARY"); err != nil {
			return err
		}
	}
	kind, id, summary := describeEvent(ev)
	_, err := fmt.Fprintf(e.p.w, eventLine, uint64s(ev.GetIndex()), cell(enumName(ev.GetOp())), kind, cell(id), summary)
	return err
}

// describeEvent names an event's object and sums it up on one line.
func describeEvent(ev *berthv1.Event) (kind, id, summary string) {
	var parts []string
	add := func(k, v string) {
		if v != "" && v != "-" {
			parts = append(parts, k+"="+cell(v))
		}
	}
	switch o := ev.GetObject().(type) {
	case *berthv1.Event_Proxy:
		p := o.Proxy
		kind, id = "proxy", p.GetId()
		add("status", enumName(p.GetStatus()))
		add("admin", enumName(p.GetAdminState()))
		add("health", enumName(p.GetHealth()))
		add("region", p.GetRegion())
		add("zone", p.GetZone())
		add("weight", fmt.Sprint(p.GetCapacityWeight()))
	case *berthv1.Event_Connection:
		c := o.Connection
		kind, id = "connection", c.GetId()
		add("proxy", c.GetProxyId())
		add("state", enumName(c.GetState()))
		add("endpoints", strings.Join(c.GetEndpoints(), ","))
		add("slot", c.GetSlot())
		add("agent", c.GetAgentId())
		add("move", c.GetMoveId())
	case *berthv1.Event_Move:
		m := o.Move
		kind, id = "move", m.GetId()
		add("connection", m.GetConnectionId())
		add("from", m.GetFromProxyId())
		add("to", m.GetToProxyId())
		add("state", enumName(m.GetState()))
		add("reason", m.GetReason())
		add("new_connection", m.GetNewConnectionId())
		add("abort_reason", m.GetAbortReason())
	case *berthv1.Event_Endpoint:
		e := o.Endpoint
		kind, id = "endpoint", e.GetName()
		add("connections", fmt.Sprint(e.GetConnectionCount()))
		add("proxies", strings.Join(e.GetProxyIds(), ","))
	case *berthv1.Event_Server:
		s := o.Server
		kind, id = "server", s.GetId()
		add("raft", s.GetRaftAddress())
		add("grpc", s.GetGrpcAddress())
	default:
		kind = "unknown"
	}
	if kind != "proxy" {
		add("region", ev.GetRegion())
	}
	return kind, id, strings.Join(parts, " ")
}
