package controlplanetest

import (
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/hashicorp/raft"
)

// FaultyLogStore is a Raft log store whose writes fail while Fail is on,
// as a full disk or a failing fsync would make them: appends and deletes
// return ENOSPC and store nothing; reads still work.
type FaultyLogStore struct {
	raft.LogStore
	failing atomic.Bool
	refused atomic.Int64
}

// Fail turns the fault on (true) or off.
func (s *FaultyLogStore) Fail(on bool) { s.failing.Store(on) }

// Refused is how many writes failed so far.
func (s *FaultyLogStore) Refused() int64 { return s.refused.Load() }

func (s *FaultyLogStore) fault(op string) error {
	if !s.failing.Load() {
		return nil
	}
	s.refused.Add(1)
	return fmt.Errorf("injected fault: %s: %w", op, syscall.ENOSPC)
}

// StoreLog fails while the fault is on.
func (s *FaultyLogStore) StoreLog(l *raft.Log) error {
	if err := s.fault("store log"); err != nil {
		return err
	}
	return s.LogStore.StoreLog(l)
}

// StoreLogs fails while the fault is on.
func (s *FaultyLogStore) StoreLogs(logs []*raft.Log) error {
	if err := s.fault("store logs"); err != nil {
		return err
	}
	return s.LogStore.StoreLogs(logs)
}

// DeleteRange fails while the fault is on.
func (s *FaultyLogStore) DeleteRange(lo, hi uint64) error {
	if err := s.fault("delete range"); err != nil {
		return err
	}
	return s.LogStore.DeleteRange(lo, hi)
}
