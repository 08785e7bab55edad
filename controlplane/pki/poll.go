package pki

import (
	"sync"
	"time"
)

// poller calls check every interval until Close: the file watch shared by
// Reloader and KeyPair.
type poller struct {
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func startPoller(interval time.Duration, check func()) *poller {
	p := &poller{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				check()
			}
		}
	}()
	return p
}

// Close stops the polling and waits for a check in progress.
func (p *poller) Close() {
	p.closeOnce.Do(func() {
		close(p.stop)
		<-p.done
	})
}
