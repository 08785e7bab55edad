package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	berthv1 "github.com/berthhq/berth/proto/berth/v1"
)

// drainWait is what drain --wait was told.
type drainWait struct {
	enabled  bool
	timeout  time.Duration // the whole wait; 0: no limit
	interval time.Duration // between polls
}

// drainCount is one poll of a draining proxy.
type drainCount struct {
	connections int // still held by the proxy
	moves       int // unfinished moves leaving it
}

// waitEmpty polls until proxy id holds no connection, reporting progress
// on stderr. Each poll's calls are bounded by --timeout; the wait itself
// by w.timeout only.
func (a *app) waitEmpty(ctx context.Context, admin berthv1.AdminServiceClient, id string, w drainWait) error {
	if w.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.timeout)
		defer cancel()
	}
	if w.interval <= 0 {
		w.interval = time.Second
	}
	prog := newDrainProgress(a.stderr, isTerminal(a.stderr), id)
	last := drainCount{connections: -1}
	for {
		c, err := a.pollDrain(ctx, admin, id)
		if err != nil {
			prog.end()
			if ctx.Err() != nil && last.connections >= 0 {
				// The wait ran out during the poll, not before it.
				return fmt.Errorf("drain %s: %d connection(s) left: %w", id, last.connections, ctx.Err())
			}
			return err
		}
		last = c
		prog.show(c)
		if c.connections == 0 {
			prog.end()
			_, _ = fmt.Fprintf(a.stderr, "%s holds no connections\n", id)
			return nil
		}
		select {
		case <-ctx.Done():
			prog.end()
			return fmt.Errorf("drain %s: %d connection(s) left: %w", id, c.connections, ctx.Err())
		case <-time.After(w.interval):
		}
	}
}

// drainPageSize is how many connections one poll asks for per call.
const drainPageSize = 1000

// pollDrain counts the proxy's connections, every page of them, and the
// unfinished moves leaving it. Each call gets its own --timeout.
func (a *app) pollDrain(ctx context.Context, admin berthv1.AdminServiceClient, id string) (drainCount, error) {
	var c drainCount
	err := pages(func(token string) (string, error) {
		cctx, cancel := a.callContext(ctx)
		defer cancel()
		resp, err := admin.ListConnections(cctx, &berthv1.ListConnectionsRequest{ProxyId: id, PageSize: drainPageSize, PageToken: token})
		if err != nil {
			return "", callFailed("list connections of "+id, err)
		}
		c.connections += len(resp.GetConnections())
		return resp.GetNextPageToken(), nil
	})
	if err != nil {
		return c, err
	}
	err = pages(func(token string) (string, error) {
		cctx, cancel := a.callContext(ctx)
		defer cancel()
		resp, err := admin.ListMoves(cctx, &berthv1.ListMovesRequest{
			ProxyId: id, PageToken: token,
			States: []berthv1.MoveState{berthv1.MoveState_MOVE_STATE_PENDING, berthv1.MoveState_MOVE_STATE_ACCEPTED},
		})
		if err != nil {
			return "", callFailed("list moves of "+id, err)
		}
		for _, m := range resp.GetMoves() {
			if m.GetFromProxyId() == id {
				c.moves++
			}
		}
		return resp.GetNextPageToken(), nil
	})
	return c, err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// drainProgress shows a drain's progress: on a terminal one line redrawn
// in place with a bar; otherwise a plain line each time a count changes.
type drainProgress struct {
	w     io.Writer
	tty   bool
	id    string
	total int // connections at the first poll
	last  drainCount
	drawn bool
}

func newDrainProgress(w io.Writer, tty bool, id string) *drainProgress {
	return &drainProgress{w: w, tty: tty, id: id, total: -1, last: drainCount{connections: -1}}
}

const barWidth = 30

func (p *drainProgress) show(c drainCount) {
	if p.total < 0 || c.connections > p.total {
		p.total = c.connections
	}
	if !p.tty && c == p.last {
		return
	}
	p.last = c
	if c.connections == 0 && !p.drawn {
		return // nothing to show: empty at the first poll
	}
	moved := p.total - c.connections
	if !p.tty {
		_, _ = fmt.Fprintf(p.w, "%s: %d connection(s) left, %d move(s) in flight (%d of %d moved)\n",
			p.id, c.connections, c.moves, moved, p.total)
		p.drawn = true
		return
	}
	filled := barWidth
	if p.total > 0 {
		filled = moved * barWidth / p.total
	}
	_, _ = fmt.Fprintf(p.w, "\r%s [%s%s] %d/%d moved, %d left, %d in flight\033[K",
		p.id, strings.Repeat("#", filled), strings.Repeat(".", barWidth-filled), moved, p.total, c.connections, c.moves)
	p.drawn = true
}

// end finishes a redrawn line so what follows starts on its own.
func (p *drainProgress) end() {
	if p.tty && p.drawn {
		_, _ = fmt.Fprintln(p.w)
	}
	p.drawn = false
}
